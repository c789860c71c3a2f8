"""SessionPool: lazy reused sessions, provider fallback, threads, corrupt files as one-line errors."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime
import pytest
from model_helpers import build_onnx, sha256

from facefuse.errors import ExitCode, ModelCorrupt, ModelMissing
from facefuse.models.registry import ModelSpec, Registry
from facefuse.models.sessions import (
    CPU,
    ProviderFallbackWarning,
    SessionPool,
    resolve_providers,
)
from facefuse.models.store import ModelStore


def make_store(tmp_path, verify=True, pinned=True) -> ModelStore:
    models = tmp_path / "models"
    models.mkdir(parents=True)
    specs = []
    for name, scale in (("double", 2.0), ("triple", 3.0)):
        data = build_onnx(models / f"{name}.onnx", scale=scale)
        specs.append(
            ModelSpec(
                name,
                "enhancer",
                "gfpgan",
                f"{name}.onnx",
                f"http://unused/{name}.onnx",
                sha256(data) if pinned else None,
                len(data) if pinned else None,
                "test",
            )
        )
    return ModelStore(Registry(specs), models, verify=verify)


def run(session, scale_check: float) -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_allclose(y, x * scale_check)


def test_session_created_lazily_once_and_reused(tmp_path):
    pool = SessionPool(make_store(tmp_path))
    assert pool.created == 0
    first = pool.get("double")
    assert pool.get("double") is first
    assert pool.created == 1
    run(first, 2.0)
    other = pool.get("triple")
    assert other is not first and pool.created == 2
    run(other, 3.0)


def test_open_file_outside_registry_reuses_session(tmp_path):
    path = tmp_path / "loose.onnx"
    build_onnx(path, scale=7.0)
    pool = SessionPool(make_store(tmp_path))
    session = pool.open(path)
    assert pool.open(path) is session
    run(session, 7.0)
    with pytest.raises(ModelMissing):
        pool.open(tmp_path / "absent.onnx")


def test_thread_count_is_applied(tmp_path):
    pool = SessionPool(make_store(tmp_path), threads=2)
    options = pool.get("double").get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    with pytest.raises(ValueError):
        SessionPool(make_store(tmp_path / "b"), threads=0)


@pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime.get_available_providers(),
    reason="this onnxruntime has CUDA, so there is nothing to fall back from",
)
def test_unavailable_provider_warns_once_and_runs_on_cpu(tmp_path):
    with pytest.warns(ProviderFallbackWarning, match="cuda") as record:
        pool = SessionPool(make_store(tmp_path), providers=("cuda",))
    assert len(record) == 1
    assert pool.providers == [CPU]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning per session
        session = pool.get("double")
        pool.get("triple")
    assert session.get_providers() == [CPU]
    run(session, 2.0)


def test_fallback_warning_goes_to_the_given_callback(tmp_path):
    messages: list[str] = []
    available = onnxruntime.get_available_providers()
    wanted = ["coreml", "directml", "openvino"]
    pool = SessionPool(make_store(tmp_path), providers=wanted, warn=messages.append)
    missing = [
        n
        for n, o in (
            ("coreml", "CoreMLExecutionProvider"),
            ("directml", "DmlExecutionProvider"),
            ("openvino", "OpenVINOExecutionProvider"),
        )
        if o not in available
    ]
    if missing:
        assert len(messages) == 1 and all(n in messages[0] for n in missing)
        assert "CPU" in messages[0]
    run(pool.get("double"), 2.0)


def test_resolve_providers_orders_and_always_ends_with_cpu():
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    assert resolve_providers(["tensorrt"], avail) == (
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU],
        [],
    )
    assert resolve_providers(["coreml", "cuda"], avail) == (["CUDAExecutionProvider", CPU], ["coreml"])
    assert resolve_providers(["cpu"], [CPU]) == ([CPU], [])
    with pytest.raises(ValueError):
        resolve_providers(["tpu"], avail)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_onnx_is_a_one_line_model_corrupt(tmp_path, damage):
    store = make_store(tmp_path, verify=False)  # no size/hash check: onnxruntime itself must be caught
    path = store.models_dir / "double.onnx"
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "garbage": b"\x8a\x13not onnx" * 40, "empty": b""}
    path.write_bytes(damaged[damage])
    pool = SessionPool(store)
    with pytest.raises(ModelCorrupt) as err:
        pool.get("double")
    msg = str(err.value)
    assert err.value.exit_code == ExitCode.MODEL_CORRUPT
    assert "\n" not in msg and str(path) in msg and "not a valid ONNX model" in msg
    assert "Traceback" not in msg
    assert pool.created == 0


def test_corrupt_file_opened_directly_is_model_corrupt(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x00\x01\x02garbage")
    with pytest.raises(ModelCorrupt, match=r"bad\.onnx"):
        SessionPool(make_store(tmp_path)).open(path)


def test_pool_checks_the_hash_before_loading(tmp_path):
    store = make_store(tmp_path)
    path = store.models_dir / "double.onnx"
    data = path.read_bytes()
    path.write_bytes(data[:-3])  # truncated: caught by the size check before onnxruntime sees it
    with pytest.raises(ModelCorrupt, match="truncated"):
        SessionPool(store).get("double")
