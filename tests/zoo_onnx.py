"""Tiny ONNX models with the real input/output names, shapes and dtypes of each zoo family, and a known
behaviour (identity, constant planted faces, fixed projections), built with onnx's helper API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
F32 = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), name="tiny") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _t(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _zero_of(x: str, out: str, prefix: str) -> list:
    """Nodes computing a (1, 1) zero that depends on input `x`, so a constant model still reads its input."""
    return [
        helper.make_node("ReduceMean", [x], [f"{prefix}_m"], keepdims=0),
        helper.make_node("Mul", [f"{prefix}_m", f"{prefix}_zero"], [out]),
    ]


def _zero_init(prefix: str, dtype=np.float32) -> onnx.TensorProto:
    return _t(f"{prefix}_zero", np.zeros((), dtype))


# -- swappers ---------------------------------------------------------------------------------------------


def inswapper(
    emap: np.ndarray, *, fp16: bool = False, probe: bool = False, invert: bool = False
) -> onnx.ModelProto:
    """'target' [1,3,128,128] + 'source' [1,512] -> [1,3,128,128]: the target crop unchanged (or, with
    `probe`, a crop whose channel c is source[0, c]; with `invert`, 1 - target: a visible change that
    follows the target pixel for pixel). The emap is the last initializer, as in the real file;
    the fp16 variant computes in float16 between float32 I/O and stores its emap as float16."""
    target = helper.make_tensor_value_info("target", F32, [1, 3, 128, 128])
    source = helper.make_tensor_value_info("source", F32, [1, 512])
    output = helper.make_tensor_value_info("output", F32, [1, 3, 128, 128])
    inits = [
        _zero_init("s"),
        _t("starts", np.array([0])),
        _t("ends", np.array([3])),
        _t("axes", np.array([1])),
    ]
    inits.append(_t("shape3", np.array([1, 3, 1, 1])))
    nodes = _zero_of("source", "szero", "s")
    if probe:
        nodes += [
            helper.make_node("Slice", ["source", "starts", "ends", "axes"], ["first3"]),
            helper.make_node("Reshape", ["first3", "shape3"], ["tint"]),
            helper.make_node("Mul", ["target", "s_zero"], ["tzero"]),
            helper.make_node("Add", ["tzero", "tint"], ["output"]),
        ]
    elif invert:
        inits.append(_t("one", np.ones((), np.float32)))
        nodes += [
            helper.make_node("Sub", ["one", "target"], ["inv"]),
            helper.make_node("Add", ["inv", "szero"], ["output"]),
        ]
    elif fp16:
        nodes += [
            helper.make_node("Cast", ["target"], ["t16"], to=TensorProto.FLOAT16),
            helper.make_node("Relu", ["t16"], ["r16"]),
            helper.make_node("Cast", ["r16"], ["r32"], to=F32),
            helper.make_node("Add", ["r32", "szero"], ["output"]),
        ]
    else:
        nodes.append(helper.make_node("Add", ["target", "szero"], ["output"]))
    inits.append(_t("emap", emap.astype(np.float16 if fp16 else np.float32)))
    return _model(nodes, [target, source], [output], inits, "inswapper")


def simswap(size: int = 256) -> onnx.ModelProto:
    """'target' [1,3,S,S] ImageNet-normalised + 'source' [1,512] -> the target back in [0,1] RGB."""
    target = helper.make_tensor_value_info("target", F32, [1, 3, size, size])
    source = helper.make_tensor_value_info("source", F32, [1, 512])
    output = helper.make_tensor_value_info("output", F32, [1, 3, size, size])
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    nodes = _zero_of("source", "szero", "s") + [
        helper.make_node("Mul", ["target", "std"], ["a"]),
        helper.make_node("Add", ["a", "mean"], ["b"]),
        helper.make_node("Add", ["b", "szero"], ["output"]),
    ]
    return _model(nodes, [target, source], [output], [_zero_init("s"), _t("mean", mean), _t("std", std)])


def converter(matrix: np.ndarray | None = None) -> onnx.ModelProto:
    """'input' (N,512) -> (N,512): a fixed linear map (identity by default)."""
    x = helper.make_tensor_value_info("input", F32, ["N", 512])
    y = helper.make_tensor_value_info("output", F32, ["N", 512])
    m = np.eye(512, dtype=np.float32) if matrix is None else matrix.astype(np.float32)
    return _model([helper.make_node("MatMul", ["input", "W"], ["output"])], [x], [y], [_t("W", m)])


# -- recogniser, landmarker -------------------------------------------------------------------------------


def arcface(weights: np.ndarray) -> onnx.ModelProto:
    """'input' [N,3,112,112] -> [N,512] = (channel means of the input) @ weights (3 x 512)."""
    x = helper.make_tensor_value_info("input.1", F32, ["N", 3, 112, 112])
    y = helper.make_tensor_value_info("683", F32, ["N", 512])
    nodes = [
        helper.make_node("GlobalAveragePool", ["input.1"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["683"]),
    ]
    return _model(nodes, [x], [y], [_t("W", weights.astype(np.float32))])


def fan68(points64: np.ndarray, peak: float = 0.9) -> onnx.ModelProto:
    """'input' [1,3,256,256] -> (1,68,3) the given points; heatmaps peak at `peak`."""
    x = helper.make_tensor_value_info("input", F32, [1, 3, 256, 256])
    y0 = helper.make_tensor_value_info("landmarks", F32, [1, 68, 3])
    y1 = helper.make_tensor_value_info("heatmaps", F32, [1, 68, 64, 64])
    pts = np.concatenate([points64, np.ones((68, 1))], axis=1).astype(np.float32)[None]
    heat = np.zeros((1, 68, 64, 64), np.float32)
    heat[0, :, 10, 10] = peak
    nodes = _zero_of("input", "z", "i") + [
        helper.make_node("Add", ["pts", "z"], ["landmarks"]),
        helper.make_node("Add", ["heat", "z"], ["heatmaps"]),
    ]
    return _model(nodes, [x], [y0, y1], [_zero_init("i"), _t("pts", pts), _t("heat", heat)])


# -- detectors --------------------------------------------------------------------------------------------


def _const_outputs(x_name: str, arrays: dict[str, np.ndarray]) -> tuple[list, list, list]:
    nodes = _zero_of(x_name, "z", "i")
    outs, inits = [], [_zero_init("i")]
    for name, arr in arrays.items():
        inits.append(_t(f"c_{name}", arr.astype(np.float32)))
        nodes.append(helper.make_node("Add", [f"c_{name}", "z"], [name]))
        outs.append(helper.make_tensor_value_info(name, F32, list(arr.shape)))
    return nodes, outs, inits


def scrfd(faces: list[dict], size: int = 640, input_name: str = "input.1") -> onnx.ModelProto:
    """An SCRFD-10g-shaped detector (9 outputs, strides 8/16/32, 2 anchors a cell) whose outputs encode
    `faces`: each a dict with stride, row, col, anchor, score, box (x1,y1,x2,y2) and kps (5,2) in input px."""
    arrays: dict[str, np.ndarray] = {}
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for s in (8, 16, 32):
            arrays[f"{kind}_{s}"] = np.zeros(((size // s) ** 2 * 2, width), np.float32)
    for f in faces:
        s = f["stride"]
        idx = (f["row"] * (size // s) + f["col"]) * 2 + f.get("anchor", 0)
        cx, cy = f["col"] * s, f["row"] * s
        x1, y1, x2, y2 = f["box"]
        arrays[f"score_{s}"][idx] = f["score"]
        arrays[f"bbox_{s}"][idx] = [(cx - x1) / s, (cy - y1) / s, (x2 - cx) / s, (y2 - cy) / s]
        arrays[f"kps_{s}"][idx] = ((np.asarray(f["kps"], np.float32) - [cx, cy]) / s).ravel()
    x = helper.make_tensor_value_info(input_name, F32, [1, 3, size, size])
    nodes, outs, inits = _const_outputs(input_name, arrays)
    return _model(nodes, [x], outs, inits, "scrfd")


def yunet(faces: list[dict], size: int = 640) -> onnx.ModelProto:
    """A YuNet-shaped detector (cls/obj/bbox/kps per stride 8/16/32, named as OpenCV's) encoding `faces`:
    dicts with stride, row, col, cls, obj, box (x1,y1,x2,y2) and kps (5,2) in input px."""
    arrays: dict[str, np.ndarray] = {}
    for kind, width in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10)):
        for s in (8, 16, 32):
            arrays[f"{kind}_{s}"] = np.zeros((1, (size // s) ** 2, width), np.float32)
    for f in faces:
        s, r, c = f["stride"], f["row"], f["col"]
        idx = r * (size // s) + c
        x1, y1, x2, y2 = f["box"]
        arrays[f"cls_{s}"][0, idx] = f["cls"]
        arrays[f"obj_{s}"][0, idx] = f["obj"]
        w, h = x2 - x1, y2 - y1
        arrays[f"bbox_{s}"][0, idx] = [
            (x1 + w / 2) / s - c,
            (y1 + h / 2) / s - r,
            np.log(w / s),
            np.log(h / s),
        ]
        arrays[f"kps_{s}"][0, idx] = (np.asarray(f["kps"], np.float32) / s - [c, r]).ravel()
    x = helper.make_tensor_value_info("input", F32, [1, 3, size, size])
    nodes, outs, inits = _const_outputs("input", arrays)
    return _model(nodes, [x], outs, inits, "yunet")


# -- enhancers, masks -------------------------------------------------------------------------------------


def restorer(size: int = 512, *, codeformer: bool = False, names: tuple[str, str] = ("input", "weight")):
    """'input' [1,3,S,S] in [-1,1] -> the same (identity). CodeFormer's second input 'weight' (1,) float64
    scales the face towards black: out = x - (1 - w)(x + 1), so w = 1 is the identity and w = 0 black."""
    x = helper.make_tensor_value_info(names[0], F32, [1, 3, size, size])
    y = helper.make_tensor_value_info("output", F32, [1, 3, size, size])
    if not codeformer:
        return _model([helper.make_node("Identity", [names[0]], ["output"])], [x], [y])
    w = helper.make_tensor_value_info(names[1], TensorProto.DOUBLE, [1])
    nodes = [
        helper.make_node("Cast", [names[1]], ["w32"], to=F32),
        helper.make_node("Sub", ["one", "w32"], ["omw"]),
        helper.make_node("Add", [names[0], "one"], ["xp1"]),
        helper.make_node("Mul", ["xp1", "omw"], ["dark"]),
        helper.make_node("Sub", [names[0], "dark"], ["output"]),
    ]
    return _model(nodes, [x, w], [y], [_t("one", np.ones((1,), np.float32))])


def xseg(channel: int = 0) -> onnx.ModelProto:
    """NHWC 'input' [1,256,256,3] -> (1,256,256,1): the input's channel `channel` (0 = blue in BGR)."""
    x = helper.make_tensor_value_info("input", F32, [1, 256, 256, 3])
    y = helper.make_tensor_value_info("output", F32, [1, 256, 256, 1])
    nodes = [helper.make_node("Slice", ["input", "st", "en", "ax"], ["output"])]
    inits = [_t("st", np.array([channel])), _t("en", np.array([channel + 1])), _t("ax", np.array([3]))]
    return _model(nodes, [x], [y], inits)


def bisenet(class_of_channel: dict[int, int]) -> onnx.ModelProto:
    """'input' [1,3,512,512] -> (1,19,512,512) logits: class k's logit is input channel c (R, G, B after
    ImageNet normalisation) for {c: k}; every other class sits at 0, background at 1."""
    x = helper.make_tensor_value_info("input", F32, [1, 3, 512, 512])
    y = helper.make_tensor_value_info("output", F32, [1, 19, 512, 512])
    w = np.zeros((19, 3, 1, 1), np.float32)
    b = np.zeros(19, np.float32)
    b[0] = 1.0
    for c, k in class_of_channel.items():
        w[k, c] = 1.0
    return _model(
        [helper.make_node("Conv", ["input", "W", "B"], ["output"])], [x], [y], [_t("W", w), _t("B", b)]
    )
