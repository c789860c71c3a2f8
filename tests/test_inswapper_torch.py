"""The inswapper_128 replica (scripts/build_inswapper_random.py) and the PyTorch backend that loads it.

The full-size replica (~554 MB, 138.3M parameters) is built once per test session (conftest's
`inswapper_replica`) in a temporary folder that is removed afterwards; numerics run on as few faces
as cover batch 1, batch 3 and bucketing.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from facefuse.errors import ExitCode, ModelCorrupt, ModelMissing, ModelUnsupported
from facefuse.swap import inswapper_replica as replica
from facefuse.swap.inswapper_torch import OnnxWeights, TorchInswapper, cudnn_autotune, read_onnx_weights

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_inswapper_random.py"


def _script():
    spec = importlib.util.spec_from_file_location("build_inswapper_random", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3  # the unused emap initializer draws a warning, as with the real file
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_faces(sess: ort.InferenceSession, target: np.ndarray, latent: np.ndarray) -> np.ndarray:
    # inswapper_128's graph has batch 1 fixed: one run per face.
    runs = [
        sess.run(None, {"target": target[i : i + 1], "source": latent[i : i + 1]})[0]
        for i in range(len(target))
    ]
    return np.concatenate(runs)


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="facefuse-inswapper-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def replica_path(inswapper_replica: tuple[Path, str]) -> Path:
    out, printed = inswapper_replica  # built once per session (conftest), shared with the CLI tests
    # The script's own figures, counted from the graph it wrote.
    assert "parameters: 138.29M" in printed
    assert "MACs per face: 174.58 G" in printed
    return out


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    target = rng.random((3, 3, 128, 128), dtype=np.float32)
    latent = rng.standard_normal((3, 512)).astype(np.float32)
    latent /= np.linalg.norm(latent, axis=1, keepdims=True)
    return target, latent


@pytest.fixture(scope="module")
def ort_out(replica_path: Path, faces) -> np.ndarray:
    return _ort_faces(_session(replica_path), *faces)


@pytest.fixture(scope="module")
def model(replica_path: Path) -> onnx.ModelProto:
    return onnx.load(str(replica_path))


@pytest.fixture(scope="module")
def weights(model: onnx.ModelProto) -> OnnxWeights:
    return read_onnx_weights(model)


@pytest.fixture(scope="module")
def torch_cpu(replica_path: Path) -> TorchInswapper:
    torch.set_num_threads(2)
    return TorchInswapper(replica_path, device="cpu")  # from the file: the path a user takes


def test_script_refuses_a_missing_output_folder(tmp_path: Path) -> None:
    assert _script().main([str(tmp_path / "missing" / "x.onnx")]) == int(ExitCode.OUTPUT_DIR_MISSING)
    assert not (tmp_path / "missing").exists()


def test_replica_has_inswapper_128_structure(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model)
    cost = replica.graph_cost(model)
    assert abs(cost.parameters - 138.3e6) <= 0.05e6, cost
    assert abs(cost.macs / cost.batch - 174.6e9) <= 0.5e9, cost
    # +0.26M for the emap: the 554 MB of the real file.
    assert abs(cost.initializer_elements - 138.56e6) <= 0.05e6, cost

    g = model.graph
    assert [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in g.input] == [
        ("target", [1, 3, 128, 128]),
        ("source", [1, 512]),
    ]
    assert all(i.type.tensor_type.elem_type == TensorProto.FLOAT for i in [*g.input, *g.output])
    assert [d.dim_value for d in g.output[0].type.tensor_type.shape.dim] == [1, 3, 128, 128]
    inits = {i.name: tuple(i.dims) for i in g.initializer}
    assert inits["styles.5.conv2.1.weight"] == (1024, 1024, 3, 3)
    assert inits["styles.0.style1.linear.weight"] == (2048, 512)
    assert inits["up0.1.weight"] == (3, 128, 7, 7)
    assert inits["onnx::Conv_833"] == (128, 3, 7, 7)
    assert inits["onnx::Conv_851"] == (128, 256, 3, 3)
    emap = numpy_helper.to_array(g.initializer[-1])  # how InsightFace and FaceFusion read it
    assert emap.shape == (512, 512) and emap.dtype == np.float32
    ops = [n.op_type for n in g.node]
    assert ops.count("Conv") == 20 and ops.count("Gemm") == 12 and ops[-1] == "Div"


def test_onnxruntime_runs_replica_to_the_contract(replica_path: Path, faces, ort_out: np.ndarray) -> None:
    sess = _session(replica_path)
    assert [(i.name, i.shape) for i in sess.get_inputs()] == [
        ("target", [1, 3, 128, 128]),
        ("source", [1, 512]),
    ]
    assert ort_out.shape == (3, 3, 128, 128) and ort_out.dtype == np.float32
    assert ort_out.min() >= 0.0 and ort_out.max() <= 1.0
    # Random weights still give a live network: not saturated, and the identity input matters.
    assert ort_out.std() > 0.05
    target, latent = faces
    other = sess.run(None, {"target": target[:1], "source": latent[1:2]})[0]
    assert np.abs(other - ort_out[:1]).max() > 0.05


def test_torch_matches_onnxruntime_batch_1(torch_cpu: TorchInswapper, faces, ort_out: np.ndarray) -> None:
    target, latent = faces
    out = torch_cpu.run(target[:1], latent[:1])
    assert out.shape == (1, 3, 128, 128) and out.dtype == np.float32
    np.testing.assert_allclose(out, ort_out[:1], atol=1e-4)


def test_torch_matches_onnxruntime_batch_3(torch_cpu: TorchInswapper, faces, ort_out: np.ndarray) -> None:
    out = torch_cpu.run(*faces)
    assert out.shape == (3, 3, 128, 128)
    np.testing.assert_allclose(out, ort_out, atol=1e-4)


def test_buckets_split_and_pad_batches(weights: OnnxWeights) -> None:
    swapper = TorchInswapper(weights, device="cpu", buckets=(2, 4), pad_to_buckets=True)
    seen: list[int] = []

    def fake_net(target: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        # Cheap stand-in for the network (whose numerics the tests above cover): records the batch
        # sizes it is given and keeps each face's output tied to its own inputs.
        seen.append(target.shape[0])
        return target * latent[:, :1, None, None]

    swapper._fn = fake_net
    rng = np.random.default_rng(5)
    target = rng.random((5, 3, 128, 128), dtype=np.float32)
    latent = rng.random((5, 512), dtype=np.float32)
    out = swapper.run(target, latent)
    assert seen == [4, 2]  # 5 faces: a full bucket of 4, then 1 face padded to the bucket of 2
    np.testing.assert_allclose(out, target * latent[:, :1, None, None], rtol=1e-6)


def test_compiled_outputs_are_copied_before_the_next_chunk_reuses_them(weights: OnnxWeights) -> None:
    # torch.compile is lazy: nothing compiles until the first call, which the fake below replaces.
    swapper = TorchInswapper(weights, device="cpu", compile="reduce-overhead", buckets=(2,))
    assert not swapper.cuda_graphs and swapper.fixed_shapes
    static = torch.zeros((2, 3, 128, 128))

    def graph_like(target: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        # What "reduce-overhead" hands back: the same output buffer, rewritten by each replay.
        static.copy_(target * latent[:, :1, None, None])
        return static

    swapper._fn = graph_like
    rng = np.random.default_rng(6)
    target = rng.random((5, 3, 128, 128), dtype=np.float32)
    latent = rng.random((5, 512), dtype=np.float32)
    out = swapper.run(target, latent)  # three chunks of the 2-face bucket
    np.testing.assert_allclose(out, target * latent[:, :1, None, None], rtol=1e-6)


def test_torch_reads_weights_epsilon_and_emap_from_the_graph(
    model: onnx.ModelProto, weights: OnnxWeights
) -> None:
    assert weights.eps == pytest.approx(1e-8)
    np.testing.assert_array_equal(weights.emap, numpy_helper.to_array(model.graph.initializer[-1]))
    by_name = {i.name: i for i in model.graph.initializer}
    np.testing.assert_array_equal(weights.convs[0][0], numpy_helper.to_array(by_name["onnx::Conv_833"]))
    np.testing.assert_array_equal(
        weights.convs[5][0], numpy_helper.to_array(by_name["styles.0.conv2.1.weight"])
    )
    np.testing.assert_array_equal(
        weights.gemms[11][1], numpy_helper.to_array(by_name["styles.5.style2.linear.bias"])
    )


def test_run_checks_shapes(torch_cpu: TorchInswapper) -> None:
    with pytest.raises(ValueError, match="target"):
        torch_cpu.run(np.zeros((1, 3, 112, 112), np.float32), np.zeros((1, 512), np.float32))
    with pytest.raises(ValueError, match="latent"):
        torch_cpu.run(np.zeros((2, 3, 128, 128), np.float32), np.zeros((1, 512), np.float32))
    assert torch_cpu.run(np.zeros((0, 3, 128, 128), np.float32), np.zeros((0, 512), np.float32)).shape == (
        0,
        3,
        128,
        128,
    )


def test_fp16_replica_loads_through_the_same_path(workdir: Path, faces, ort_out: np.ndarray) -> None:
    path = workdir / "inswapper_128_fp16_replica.onnx"
    assert _script().main([str(path), "--seed", "7", "--fp16"]) == 0
    model = onnx.load(str(path))
    g = model.graph
    assert all(i.type.tensor_type.elem_type == TensorProto.FLOAT for i in [*g.input, *g.output])
    assert {i.data_type for i in g.initializer if i.name.startswith("styles.")} == {TensorProto.FLOAT16}
    assert g.initializer[-1].data_type == TensorProto.FLOAT16 and tuple(g.initializer[-1].dims) == (512, 512)
    assert abs(replica.graph_cost(model).parameters - 138.3e6) <= 0.05e6
    del model
    target, latent = faces
    swapper = TorchInswapper(path, device="cpu")
    assert swapper.emap.dtype == np.float32
    assert swapper.net.style[0].eps == pytest.approx(1e-7, rel=0.2)  # the clamped fp16 epsilon
    # Same seed, so these are the fp32 replica's weights rounded to fp16: the outputs stay close.
    out = swapper.run(target[:1], latent[:1])
    np.testing.assert_allclose(out, ort_out[:1], atol=5e-3)
    assert np.abs(out - ort_out[:1]).max() > 0  # and it really did load the other file
    path.unlink()


def _tiny_conv_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializer=[w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def test_other_architectures_and_junk_are_refused(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.onnx"
    onnx.save(_tiny_conv_model(), str(tiny))
    with pytest.raises(ModelUnsupported, match="not the inswapper_128 architecture") as e:
        TorchInswapper(tiny, device="cpu")
    assert e.value.exit_code == ExitCode.MODEL_UNSUPPORTED == 25
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model" * 100)
    with pytest.raises(ModelCorrupt, match=r"junk\.onnx") as e:
        read_onnx_weights(junk)
    assert e.value.exit_code == ExitCode.MODEL_CORRUPT == 22


def test_missing_and_truncated_files_get_the_onnxruntime_paths_exit_codes(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing, match="no such model file") as e:
        TorchInswapper(tmp_path / "absent.onnx", device="cpu")
    assert e.value.exit_code == ExitCode.MODEL_MISSING == 20
    whole = _tiny_conv_model().SerializeToString()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(whole[: len(whole) // 2])  # a download stopped half-way
    with pytest.raises(ModelCorrupt, match=r"cut\.onnx: not a readable ONNX model") as e:
        TorchInswapper(cut, device="cpu")
    assert e.value.exit_code == ExitCode.MODEL_CORRUPT == 22


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)
def test_cuda_fp16_graphs_match_onnxruntime(weights: OnnxWeights, faces, ort_out: np.ndarray) -> None:
    eager = TorchInswapper(weights, device="cuda", cuda_graphs=False, channels_last=False)
    graphed = TorchInswapper(weights, device="cuda", cuda_graphs=True, buckets=(1, 2, 4))
    # The default on CUDA: fp16, NHWC activations (faster tensor-core convolutions).
    assert graphed.dtype == torch.float16 and graphed.memory_format == torch.channels_last
    target, latent = faces
    for n in (1, 3):
        e = eager.run(target[:n], latent[:n])
        g = graphed.run(target[:n], latent[:n])
        assert g.flags.c_contiguous and g.shape == (n, 3, 128, 128)  # NCHW out, whatever ran inside
        np.testing.assert_allclose(e, ort_out[:n], atol=2e-2)
        np.testing.assert_allclose(g, e, atol=8e-3)  # NHWC vs NCHW kernels: fp16 rounding
    # A second replay must not hand back the first call's buffer.
    first = graphed.run(target[:1], latent[:1])
    second = graphed.run(target[1:2], latent[1:2])
    assert np.abs(first - second).max() > 0.05


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)
def test_cuda_compiled_graphs_match_onnxruntime(weights: OnnxWeights, faces, ort_out: np.ndarray) -> None:
    # What `--swapper-backend torch-compile` builds: torch.compile under CUDA graphs, NHWC.
    compiled = TorchInswapper(weights, device="cuda", compile=True, buckets=(2,))
    target, latent = faces
    first = compiled.run(target[:1], latent[:1])
    both = compiled.run(target[:2], latent[:2])
    np.testing.assert_allclose(both, ort_out[:2], atol=2e-2)
    np.testing.assert_allclose(first, both[:1], atol=4e-3)  # a padded bucket row changes nothing
    assert np.abs(both[0] - both[1]).max() > 0.05


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)
def test_cuda_run_tensors_results_outlive_the_next_replay(weights: OnnxWeights, faces) -> None:
    # run() always copies to the host; run_tensors hands back device tensors, which must not be the
    # graph's output buffer that the next replay overwrites.
    graphed = TorchInswapper(weights, device="cuda", buckets=(1,))
    target, latent = (torch.from_numpy(a) for a in faces)
    first = graphed.run_tensors(target[:1], latent[:1])
    kept = first.clone()
    graphed.run_tensors(target[1:2], latent[1:2])
    assert first.dtype == torch.float32 and first.is_contiguous()
    assert torch.equal(first, kept)


def test_cudnn_autotune_is_scoped_and_restores_the_process_setting() -> None:
    before = torch.backends.cudnn.benchmark
    try:
        for setting in (False, True):
            torch.backends.cudnn.benchmark = setting
            with pytest.raises(RuntimeError), cudnn_autotune():
                assert torch.backends.cudnn.benchmark is True
                raise RuntimeError("a failed capture still restores it")
            assert torch.backends.cudnn.benchmark is setting
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)
def test_cuda_swapper_leaves_the_global_cudnn_setting_alone(weights: OnnxWeights, faces) -> None:
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        graphed = TorchInswapper(weights, device="cuda", cuda_graphs=True, buckets=(1,))
        eager = TorchInswapper(weights, device="cuda", cuda_graphs=False)
        assert torch.backends.cudnn.benchmark is False
        target, latent = faces
        graphed.run(target[:1], latent[:1])
        eager.run(target[:1], latent[:1])
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_cuda_request_without_gpu_falls_back_to_cpu_with_one_warning(weights: OnnxWeights) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the fallback cannot happen here")
    said: list[str] = []
    swapper = TorchInswapper(weights, device="cuda", warn=said.append)
    assert swapper.device.type == "cpu" and swapper.dtype == torch.float32 and not swapper.cuda_graphs
    assert len(said) == 1 and "no CUDA GPU" in said[0]
