"""A random-weight ONNX replica of inswapper_128, and graph-based parameter/MAC counting.

The real inswapper_128.onnx is non-commercial and ~554 MB, so tests and benchmarks build this
replica instead: the same layers, the same initializer names, shapes, dtypes and order (the emap is
the last initializer), the same input/output names and shapes, random weights. The layer list and
the names come from the public weight listing of the model (ReSwapper's weight_transfer notebook)
and its onnx2torch reconstruction (see docs/model_contracts.md section 7 in the shared folder):

    ReflectPad 3 -> Conv7x7 3->128 -> LReLU(0.2) -> Conv3x3 128->256 -> LReLU
    -> Conv3x3/2 256->512 -> LReLU -> Conv3x3/2 512->1024 -> LReLU                  (encoder)
    6 x  x + [ReflectPad 1 -> Conv3x3 -> InstanceNorm(eps 1e-8) -> AdaIN(Gemm 512->2048) -> ReLU
              -> ReflectPad 1 -> Conv3x3 -> InstanceNorm -> AdaIN]                    (style blocks)
    Resize x2 -> Conv3x3 1024->512 -> LReLU -> Resize x2 -> Conv3x3 512->256 -> LReLU
    -> Conv3x3 256->128 -> LReLU -> ReflectPad 3 -> Conv7x7 128->3 -> Tanh -> (x+1)/2  (decoder)

Needs only numpy and onnx (no torch), so the GPU benchmark can build it on a bare machine.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 11
INSTANCE_NORM_EPS = 1e-8
# onnxconverter-common's float16 conversion clamps tiny constants to this (its min_positive_val),
# which is what a converted inswapper_128_fp16 would hold for the 1e-8 epsilon.
FP16_MIN_POSITIVE = 1e-7

# (name of weight, name of bias, out, in, kernel, stride, zero padding); the reflect-padded 7x7 convs
# have padding 0 here because the graph pads them with an explicit Pad node.
ENCODER = [
    ("onnx::Conv_833", "onnx::Conv_834", 128, 3, 7, 1, 0),
    ("onnx::Conv_836", "onnx::Conv_837", 256, 128, 3, 1, 1),
    ("onnx::Conv_839", "onnx::Conv_840", 512, 256, 3, 2, 1),
    ("onnx::Conv_842", "onnx::Conv_843", 1024, 512, 3, 2, 1),
]
DECODER = [  # (weight, bias, out, in, kernel, stride, padding, upsample x2 first)
    ("onnx::Conv_845", "onnx::Conv_846", 512, 1024, 3, 1, 1, True),
    ("onnx::Conv_848", "onnx::Conv_849", 256, 512, 3, 1, 1, True),
    ("onnx::Conv_851", "onnx::Conv_852", 128, 256, 3, 1, 1, False),
]
OUT_CONV = ("up0.1.weight", "up0.1.bias", 3, 128, 7)
STYLE_BLOCKS = 6
CHANNELS = 1024
LATENT = 512
EMAP_NAME = "initializer"  # the name the public listing shows for the last initializer
INPUT_TARGET = "target"
INPUT_SOURCE = "source"
OUTPUT = "output"
SIZE = 128


@dataclass(frozen=True)
class GraphCost:
    parameters: int  # learned weights and biases (Conv and Gemm inputs); the emap is not one
    initializer_elements: int  # everything stored, emap and small constants included
    macs: int  # multiply-accumulates of Conv and Gemm nodes for one run of the graph (one face)
    batch: int  # the graph's batch size (1 for inswapper_128)


def _style_names(block: int, layer: int) -> tuple[str, str, str, str]:
    p = f"styles.{block}"
    return (
        f"{p}.conv{layer}.1.weight",
        f"{p}.conv{layer}.1.bias",
        f"{p}.style{layer}.linear.weight",
        f"{p}.style{layer}.linear.bias",
    )


def _random_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """He-style random weights, scaled so activations stay O(1) and the output is not saturated."""

    def conv(o: int, i: int, k: int, gain: float = np.sqrt(2.0)) -> tuple[np.ndarray, np.ndarray]:
        w = rng.standard_normal((o, i, k, k), dtype=np.float32) * np.float32(gain / np.sqrt(i * k * k))
        return w, rng.standard_normal(o, dtype=np.float32) * np.float32(0.01)

    out: dict[str, np.ndarray] = {}
    # The public listing stores the style blocks first, then the output conv, then the (BatchNorm-
    # fused, hence auto-named) encoder/decoder convs, then small constants, then the emap.
    for b in range(STYLE_BLOCKS):
        for layer in (1, 2):
            wn, bn, gn, gbn = _style_names(b, layer)
            out[wn], out[bn] = conv(CHANNELS, CHANNELS, 3)
            out[gn] = rng.standard_normal((2 * CHANNELS, LATENT), dtype=np.float32) * np.float32(0.1)
            gamma = 1.0 + 0.1 * rng.standard_normal(CHANNELS, dtype=np.float32)
            beta = 0.1 * rng.standard_normal(CHANNELS, dtype=np.float32)
            out[gbn] = np.concatenate([gamma, beta]).astype(np.float32)
    wn, bn, o, i, k = OUT_CONV
    out[wn], out[bn] = conv(o, i, k, gain=0.5)
    for wn, bn, o, i, k, _s, _p in ENCODER:
        out[wn], out[bn] = conv(o, i, k)
    for wn, bn, o, i, k, _s, _p, _up in DECODER:
        out[wn], out[bn] = conv(o, i, k)
    return out


def build_inswapper_model(seed: int = 0, fp16: bool = False) -> onnx.ModelProto:
    """The replica as an in-memory ModelProto (float32 I/O either way, like inswapper_128_fp16)."""
    rng = np.random.default_rng(seed)
    np_ft = np.float16 if fp16 else np.float32
    weights = _random_weights(rng)
    emap = rng.standard_normal((LATENT, LATENT), dtype=np.float32) / np.float32(np.sqrt(LATENT))

    inits: list[TensorProto] = [numpy_helper.from_array(v.astype(np_ft), k) for k, v in weights.items()]
    eps = max(INSTANCE_NORM_EPS, FP16_MIN_POSITIVE) if fp16 else INSTANCE_NORM_EPS
    consts = {
        "onnx::Resize_918": np.array([1, 1, 2, 2], np.float32),  # Resize scales are float32 always
        "onnx::Pad_122": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        "onnx::Pad_157": np.array([0, 0, 3, 3, 0, 0, 3, 3], np.int64),
        "onnx::Add_164": np.array(eps, np_ft),
        "onnx::Div_167": np.array(1.0, np_ft),
        "onnx::Pow_2": np.array(2.0, np_ft),
        "onnx::Slice_axes": np.array([1], np.int64),
        "onnx::Slice_0": np.array([0], np.int64),
        "onnx::Slice_176": np.array([CHANNELS], np.int64),
        "onnx::Slice_182": np.array([2 * CHANNELS], np.int64),
        "onnx::Resize_787": np.array([], np.float32),
        "onnx::Add_1": np.array(1.0, np_ft),
        "onnx::Div_830": np.array(2.0, np_ft),
    }
    inits += [numpy_helper.from_array(v, k) for k, v in consts.items()]
    inits.append(numpy_helper.from_array(emap.astype(np_ft), EMAP_NAME))

    nodes: list[onnx.NodeProto] = []
    counter = iter(range(10**6))

    def node(op: str, inputs: list[str], **attrs) -> str:
        i = next(counter)
        name = f"{op}_{i}"
        nodes.append(helper.make_node(op, inputs, [f"{name}_out"], name=name, **attrs))
        return f"{name}_out"

    x, latent = INPUT_TARGET, INPUT_SOURCE
    if fp16:
        x = node("Cast", [x], to=TensorProto.FLOAT16)
        latent = node("Cast", [latent], to=TensorProto.FLOAT16)

    def conv(x: str, w: str, b: str, k: int, s: int, p: int) -> str:
        return node("Conv", [x, w, b], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, dilations=[1, 1])

    x = node("Pad", [x, "onnx::Pad_157"], mode="reflect")
    for wn, bn, _o, _i, k, s, p in ENCODER:
        x = node("LeakyRelu", [conv(x, wn, bn, k, s, p)], alpha=0.2)

    for b in range(STYLE_BLOCKS):
        h = x
        for layer in (1, 2):
            wn, bn, gn, gbn = _style_names(b, layer)
            c = conv(node("Pad", [h, "onnx::Pad_122"], mode="reflect"), wn, bn, 3, 1, 0)
            centred = node("Sub", [c, node("ReduceMean", [c], axes=[2, 3], keepdims=1)])
            var = node("ReduceMean", [node("Pow", [centred, "onnx::Pow_2"])], axes=[2, 3], keepdims=1)
            inv_std = node("Div", ["onnx::Div_167", node("Sqrt", [node("Add", [var, "onnx::Add_164"])])])
            normed = node("Mul", [centred, inv_std])
            style = node("Unsqueeze", [node("Gemm", [latent, gn, gbn], transB=1)], axes=[2, 3])
            gamma = node("Slice", [style, "onnx::Slice_0", "onnx::Slice_176", "onnx::Slice_axes"])
            beta = node("Slice", [style, "onnx::Slice_176", "onnx::Slice_182", "onnx::Slice_axes"])
            h = node("Add", [node("Mul", [gamma, normed]), beta])
            if layer == 1:
                h = node("Relu", [h])
        x = node("Add", [x, h])

    for wn, bn, _o, _i, k, s, p, up in DECODER:
        if up:
            x = node(
                "Resize",
                [x, "onnx::Resize_787", "onnx::Resize_918"],
                mode="linear",
                coordinate_transformation_mode="half_pixel",
            )
        x = node("LeakyRelu", [conv(x, wn, bn, k, s, p)], alpha=0.2)
    wn, bn, _o, _i, k = OUT_CONV
    x = conv(node("Pad", [x, "onnx::Pad_157"], mode="reflect"), wn, bn, k, 1, 0)
    x = node("Div", [node("Add", [node("Tanh", [x]), "onnx::Add_1"]), "onnx::Div_830"])
    if fp16:
        x = node("Cast", [x], to=TensorProto.FLOAT)
    nodes[-1].output[0] = OUTPUT

    graph = helper.make_graph(
        nodes,
        "inswapper_128_replica",
        [
            helper.make_tensor_value_info(INPUT_TARGET, TensorProto.FLOAT, [1, 3, SIZE, SIZE]),
            helper.make_tensor_value_info(INPUT_SOURCE, TensorProto.FLOAT, [1, LATENT]),
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="facefuse-replica",
        doc_string=f"random-weight replica of inswapper_128 (seed {seed}, {'fp16' if fp16 else 'fp32'})",
    )
    model.ir_version = 7  # what opset 11 exporters wrote; every onnxruntime since 1.3 reads it
    return model


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _shape_only_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose big initializers are typed graph inputs (no data), so shape inference is cheap."""
    light = _without_initializers(model)
    # Files of IR version < 4 also list their initializers as graph inputs.
    declared = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if np.prod(init.dims, dtype=np.int64) <= 64:
            light.graph.initializer.append(init)
        elif init.name not in declared:
            light.graph.input.append(
                helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    return light


def _without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.graph.name = model.graph.name
    m.graph.node.extend(model.graph.node)
    m.graph.input.extend(model.graph.input)
    m.graph.output.extend(model.graph.output)
    return m


def graph_cost(model: onnx.ModelProto) -> GraphCost:
    """Count learned parameters and Conv/Gemm MACs by walking the graph with inferred shapes."""
    inferred = onnx.shape_inference.infer_shapes(_shape_only_model(model), strict_mode=True)
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    init_sizes = {i.name: int(np.prod(i.dims, dtype=np.int64)) for i in model.graph.initializer}
    for i in model.graph.initializer:
        shapes.setdefault(i.name, list(i.dims))

    learned: set[str] = set()
    macs = 0
    for n in model.graph.node:
        if n.op_type == "Conv":
            out = shapes[n.output[0]]
            w = shapes[n.input[1]]  # (out, in/groups, kh, kw)
            if min(out) < 0:
                raise ValueError(f"cannot infer the output shape of {n.name}")
            macs += int(np.prod(out, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
        elif n.op_type in ("Gemm", "MatMul"):
            a, b = shapes[n.input[0]], shapes[n.input[1]]
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            trans_b = any(at.name == "transB" and at.i for at in n.attribute)
            m, k = (a[-1], a[-2]) if trans_a else (a[-2], a[-1])
            ncols = b[-2] if trans_b else b[-1]
            batch_dims = int(np.prod(a[:-2], dtype=np.int64)) if len(a) > 2 else 1
            macs += batch_dims * m * k * ncols
        else:
            continue
        learned.update(i for i in n.input[1:] if i in init_sizes)
    first_input = shapes[model.graph.input[0].name]
    return GraphCost(
        parameters=sum(init_sizes[name] for name in learned),
        initializer_elements=sum(init_sizes.values()),
        macs=macs,
        batch=first_input[0] if first_input and first_input[0] > 0 else 1,
    )
