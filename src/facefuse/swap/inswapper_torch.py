"""inswapper_128 as a native PyTorch module that loads its weights from the ONNX file.

`TorchInswapper` is a drop-in for an onnxruntime session of inswapper_128 (or its fp16 variant, or the
random-weight replica): `run(target, latent)` per the model-zoo interface. On CUDA it runs in fp16,
takes any number of faces at once (faces from several frames batch together), pads each batch to a
fixed bucket size and replays a CUDA graph captured per bucket, optionally over a torch.compile'd
network. On CPU it runs eagerly in fp32 with no padding. torch is an optional dependency (the `gpu`
extra); importing this module without it raises ImportError.

Weights are matched to layers by the graph's structure (the order of its Conv and Gemm nodes and
their shapes), not by initializer names, so any export of the same architecture loads.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from facefuse.errors import ModelCorrupt, ModelMissing, ModelUnsupported

SIZE = 128
LATENT = 512
CHANNELS = 1024
STYLE_LAYERS = 12  # 6 residual blocks x 2 conv+AdaIN layers
DEFAULT_EPS = 1e-8
DEFAULT_BUCKETS = (1, 4, 16, 64)

# Conv weight shapes in graph order: 4 encoder convs, 12 style convs, 3 decoder convs, the output conv.
_ENCODER_SHAPES = [(128, 3, 7, 7), (256, 128, 3, 3), (512, 256, 3, 3), (1024, 512, 3, 3)]
_DECODER_SHAPES = [(512, 1024, 3, 3), (256, 512, 3, 3), (128, 256, 3, 3)]
_OUT_SHAPE = (3, 128, 7, 7)
_CONV_SHAPES = _ENCODER_SHAPES + [(CHANNELS, CHANNELS, 3, 3)] * STYLE_LAYERS + _DECODER_SHAPES + [_OUT_SHAPE]


class _StyleLayer(nn.Module):
    """ReflectPad 1 -> Conv3x3 -> instance norm (no affine) -> AdaIN from the latent.

    forward returns the layer's output as (conv output h, per-channel scale, per-channel shift) with
    output = h * scale + shift, so the caller can fuse that with the ReLU or the residual add.
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, CHANNELS, 3)
        self.style = nn.Linear(LATENT, 2 * CHANNELS)
        self.eps = eps

    def forward(
        self, x: torch.Tensor, latent: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.conv(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        # The graph's ReduceMean/Sub/Pow/Sqrt/Div chain is a biased-variance instance norm, and AdaIN
        # is gamma * norm + beta: folded into one per-channel scale and shift, the (N,1024,32,32)
        # activation is read once for its statistics and once for the output, in any memory layout.
        # Statistics accumulate in fp32 inside var_mean; the tiny scale/shift maths runs in fp32.
        var, mean = torch.var_mean(h, dim=(2, 3), keepdim=True, correction=0)
        gamma, beta = self.style(latent).float()[:, :, None, None].chunk(2, dim=1)
        scale = gamma * torch.rsqrt(var.float() + self.eps)
        shift = beta - scale * mean.float()
        return h, scale.to(h.dtype), shift.to(h.dtype)


class InswapperNet(nn.Module):
    """The inswapper_128 network: target (N,3,128,128) RGB [0,1], latent (N,512) -> (N,3,128,128) [0,1]."""

    def __init__(self, eps: float = DEFAULT_EPS) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(
            [
                nn.Conv2d(3, 128, 7),
                nn.Conv2d(128, 256, 3, padding=1),
                nn.Conv2d(256, 512, 3, stride=2, padding=1),
                nn.Conv2d(512, 1024, 3, stride=2, padding=1),
            ]
        )
        self.style = nn.ModuleList([_StyleLayer(eps) for _ in range(STYLE_LAYERS)])
        self.decoder = nn.ModuleList(
            [
                nn.Conv2d(1024, 512, 3, padding=1),
                nn.Conv2d(512, 256, 3, padding=1),
                nn.Conv2d(256, 128, 3, padding=1),
            ]
        )
        self.out = nn.Conv2d(128, 3, 7)

    def forward(self, target: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        x = F.pad(target, (3, 3, 3, 3), mode="reflect")
        for conv in self.encoder:
            x = F.leaky_relu(conv(x), 0.2)
        for i in range(0, STYLE_LAYERS, 2):
            h, scale, shift = self.style[i](x, latent)
            h = torch.relu_(torch.addcmul(shift, h, scale))
            h, scale, shift = self.style[i + 1](h, latent)
            x = torch.addcmul(shift, h, scale).add_(x)
        for i, conv in enumerate(self.decoder):
            if i < 2:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = F.leaky_relu(conv(x), 0.2)
        x = self.out(F.pad(x, (3, 3, 3, 3), mode="reflect"))
        return (torch.tanh(x) + 1) / 2


@dataclass
class OnnxWeights:
    """What the ONNX file holds for this architecture, as float32 numpy arrays in layer order."""

    convs: list[tuple[np.ndarray, np.ndarray]]  # 20 (weight, bias)
    gemms: list[tuple[np.ndarray, np.ndarray]]  # 12 (weight (2048,512), bias (2048,))
    eps: float
    emap: np.ndarray  # (512, 512) float32: the last initializer (latent = normalised embedding @ emap)


def read_onnx_weights(model: onnx.ModelProto | str | Path) -> OnnxWeights:
    """Pull the learned weights out of an inswapper_128-shaped ONNX graph.

    Raises ModelMissing (no file), ModelCorrupt (not a readable ONNX file, as onnxruntime's path
    says) or ModelUnsupported (a readable graph of another architecture).
    """
    path = None
    if not isinstance(model, onnx.ModelProto):
        path = Path(model)
        if not path.is_file():
            raise ModelMissing(f"{path}: no such model file")
        try:
            model = onnx.load(str(path))
        except Exception as e:  # protobuf raises its own DecodeError; any failure means the same
            raise ModelCorrupt(f"{path}: not a readable ONNX model ({type(e).__name__})") from e
    where = str(path) if path else model.graph.name or "model"
    g = model.graph
    tensors = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}

    def resolve(name: str) -> np.ndarray:
        # fp16 conversions and some exporters put Cast/Identity nodes or Constants in front of weights.
        while name not in tensors:
            n = producers.get(name)
            if n is None:
                raise ModelUnsupported(f"{where}: weight {name!r} is neither an initializer nor a constant")
            if n.op_type == "Constant":
                return numpy_helper.to_array(n.attribute[0].t).astype(np.float32)
            if n.op_type not in ("Cast", "Identity"):
                raise ModelUnsupported(f"{where}: weight {name!r} is computed by a {n.op_type} node")
            name = n.input[0]
        return numpy_helper.to_array(tensors[name]).astype(np.float32)

    convs, gemms = [], []
    eps = None
    for n in g.node:
        if n.op_type == "Conv":
            if len(n.input) < 3:
                raise ModelUnsupported(f"{where}: conv {n.name} has no bias; not an inswapper_128 graph")
            convs.append((resolve(n.input[1]), resolve(n.input[2])))
        elif n.op_type == "Gemm":
            w = resolve(n.input[1])
            if not any(a.name == "transB" and a.i for a in n.attribute):
                w = w.T
            gemms.append((np.ascontiguousarray(w), resolve(n.input[2])))
        elif n.op_type == "Add" and eps is None and _feeds(g, n, "Sqrt"):
            eps = _scalar_input(n, tensors, producers)
    shapes = [tuple(w.shape) for w, _ in convs]
    if shapes != _CONV_SHAPES or [w.shape for w, _ in gemms] != [(2 * CHANNELS, LATENT)] * STYLE_LAYERS:
        raise ModelUnsupported(
            f"{where}: not the inswapper_128 architecture ({len(convs)} convs, {len(gemms)} gemms; "
            f"expected {len(_CONV_SHAPES)} and {STYLE_LAYERS})"
        )
    if not g.initializer or tuple(g.initializer[-1].dims) != (LATENT, LATENT):
        raise ModelUnsupported(f"{where}: the last initializer is not the 512x512 emap")
    emap = numpy_helper.to_array(g.initializer[-1]).astype(np.float32)
    return OnnxWeights(convs, gemms, float(eps) if eps is not None else DEFAULT_EPS, emap)


def _feeds(g: onnx.GraphProto, node: onnx.NodeProto, op_type: str) -> bool:
    return any(n.op_type == op_type and node.output[0] in n.input for n in g.node)


def _scalar_input(node: onnx.NodeProto, tensors: dict, producers: dict) -> float | None:
    for name in node.input:
        t = tensors.get(name)
        if t is None and name in producers and producers[name].op_type == "Constant":
            t = producers[name].attribute[0].t
        if t is not None and int(np.prod(t.dims, dtype=np.int64)) == 1:
            return float(numpy_helper.to_array(t).reshape(-1)[0])
    return None


def net_from_weights(w: OnnxWeights) -> InswapperNet:
    net = InswapperNet(eps=w.eps)
    convs = [*net.encoder, *(layer.conv for layer in net.style), *net.decoder, net.out]
    with torch.no_grad():
        for conv, (weight, bias) in zip(convs, w.convs, strict=True):
            conv.weight.copy_(torch.from_numpy(weight))
            conv.bias.copy_(torch.from_numpy(bias))
        for layer, (weight, bias) in zip(net.style, w.gemms, strict=True):
            layer.style.weight.copy_(torch.from_numpy(weight))
            layer.style.bias.copy_(torch.from_numpy(bias))
    return net.eval().requires_grad_(False)


def pick_device(device: str = "auto", warn: Callable[[str], None] | None = None) -> torch.device:
    """ "auto" picks CUDA when present; an unavailable CUDA falls back to the CPU with one warning."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        (warn or _warn)(f"device {device!r} asked for, but this torch build sees no CUDA GPU; using the CPU")
        return torch.device("cpu")
    return dev


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


_CUDNN_FLAG = threading.Lock()


@contextlib.contextmanager
def cudnn_autotune() -> Iterator[None]:
    """cuDNN's per-shape algorithm search on inside the block only, and the process's own setting
    back after it: a library must not change global state for everything else the process runs.
    A lock keeps two blocks in two threads from restoring each other's value."""
    with _CUDNN_FLAG:
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = previous


class _CudaGraphRunner:
    """One captured CUDA graph for one batch size: static input/output buffers, replayed per call."""

    def __init__(
        self, fn, batch: int, device: torch.device, dtype: torch.dtype, memory_format: torch.memory_format
    ) -> None:
        self.target = torch.zeros((batch, 3, SIZE, SIZE), device=device, dtype=dtype)
        self.target = self.target.contiguous(memory_format=memory_format)
        self.latent = torch.zeros((batch, LATENT), device=device, dtype=dtype)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        # The bucket's shape is fixed and the graph keeps the algorithms chosen at capture, so
        # cuDNN's per-shape search pays for itself here (and only here: replays do not consult it).
        with cudnn_autotune():
            # Warm-up off the capture stream: autotuning and lazy initialisation must not be captured.
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(3):
                    fn(self.target, self.latent)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.inference_mode():
                self.out = fn(self.target, self.latent)

    def __call__(self, target: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        n = target.shape[0]
        # Rows past n keep stale data: every row is computed independently, so they cannot leak.
        self.target[:n].copy_(target)
        self.latent[:n].copy_(latent)
        self.graph.replay()
        return self.out[:n]


class TorchInswapper:
    """inswapper_128 on PyTorch: `run(target, latent)` like the onnxruntime session wrapper.

    device: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N".
    dtype: default fp16 on CUDA, fp32 on CPU.
    cuda_graphs: capture one CUDA graph per batch bucket (CUDA only; ignored on CPU).
    compile: False, True (torch.compile default mode) or a torch.compile mode string.
    buckets: fixed batch sizes that batches are padded to when graphs or compilation are on, so
        each shape is captured/compiled once; larger batches are split into chunks of the largest.
    warn: called with a one-line message when an asked-for device is unavailable (default: warnings.warn).
    channels_last: NHWC activations; by default on for CUDA in half precision (faster tensor-core
        convolutions), off otherwise.
    pad_to_buckets: force bucketing on (or off); by default it is on exactly when graphs or
        compilation are, since eager kernels take any batch size and padding only costs there.
    """

    def __init__(
        self,
        model: onnx.ModelProto | str | Path | OnnxWeights,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        cuda_graphs: bool = True,
        compile: bool | str = False,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        channels_last: bool | None = None,
        pad_to_buckets: bool | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        weights = model if isinstance(model, OnnxWeights) else read_onnx_weights(model)
        self.emap = weights.emap
        self.device = pick_device(device, warn)
        cuda = self.device.type == "cuda"
        self.dtype = dtype or (torch.float16 if cuda else torch.float32)
        # cuDNN's fp16 tensor-core convolutions work in NHWC: with NCHW activations each conv pays for
        # layout transposes (graphs 0.95x -> 0.69x the bare NCHW network's time at batch 64, H100).
        half = self.dtype in (torch.float16, torch.bfloat16)
        channels_last = (cuda and half) if channels_last is None else channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net_from_weights(weights).to(self.device, self.dtype, memory_format=self.memory_format)
        self._fn = self.net
        self.compiled = bool(compile)
        if compile:
            mode = compile if isinstance(compile, str) else None
            self._fn = torch.compile(self.net, mode=mode, dynamic=False, fullgraph=True)
        self.cuda_graphs = cuda_graphs and cuda
        self.fixed_shapes = (self.cuda_graphs or bool(compile)) if pad_to_buckets is None else pad_to_buckets
        if self.cuda_graphs and not self.fixed_shapes:
            raise ValueError("CUDA graphs need fixed batch sizes: pad_to_buckets cannot be False with them")
        self.buckets = tuple(sorted({int(b) for b in buckets}))
        if not self.buckets or self.buckets[0] < 1:
            raise ValueError("buckets must be positive batch sizes")
        self._graphs: dict[int, _CudaGraphRunner] = {}

    def _forward(self, target: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        n = target.shape[0]
        if not self.fixed_shapes:
            return self._fn(target, latent)
        bucket = next(b for b in self.buckets if b >= n)
        if self.cuda_graphs:
            runner = self._graphs.get(bucket)
            if runner is None:
                runner = _CudaGraphRunner(self._fn, bucket, self.device, self.dtype, self.memory_format)
                self._graphs[bucket] = runner
            return runner(target, latent)
        if bucket > n:
            target = torch.cat([target, target.new_zeros((bucket - n, *target.shape[1:]))])
            latent = torch.cat([latent, latent.new_zeros((bucket - n, LATENT))])
        return self._fn(target, latent)[:n]

    def warmup(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Capture/compile every bucket now rather than on first use (first calls are slow)."""
        for b in batch_sizes or self.buckets:
            self.run(np.zeros((b, 3, SIZE, SIZE), np.float32), np.zeros((b, LATENT), np.float32))

    def run_tensors(self, target: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Device tensors in, device tensors out (fp32 (N,3,128,128)); no host copies."""
        out = []
        step = self.buckets[-1] if self.fixed_shapes else max(int(target.shape[0]), 1)
        with torch.inference_mode():
            for s in range(0, target.shape[0], step):
                t = target[s : s + step].to(self.device, self.dtype, memory_format=self.memory_format)
                lat = latent[s : s + step].to(self.device, self.dtype)
                o = self._forward(t, lat)
                # A CUDA graph's output buffer is overwritten by the next replay: always copy it out.
                # and torch.compile's "reduce-overhead" mode replays graphs of its own: copy out.
                reused = self.cuda_graphs or self.compiled
                if o.dtype != torch.float32 or not o.is_contiguous():
                    # One kernel converts to fp32 NCHW and, being a copy, leaves the reused buffer.
                    o = o.to(torch.float32, memory_format=torch.contiguous_format)
                elif reused:
                    o = o.clone()
                out.append(o)
        return torch.cat(out) if len(out) != 1 else out[0]

    def run(self, target: np.ndarray, latent: np.ndarray) -> np.ndarray:
        """target float32 (N,3,128,128) RGB [0,1], latent float32 (N,512) -> float32 (N,3,128,128) [0,1]."""
        target = np.asarray(target, np.float32)
        latent = np.asarray(latent, np.float32)
        if target.ndim != 4 or target.shape[1:] != (3, SIZE, SIZE):
            raise ValueError(f"target must be (N,3,{SIZE},{SIZE}), got {target.shape}")
        if latent.shape != (target.shape[0], LATENT):
            raise ValueError(f"latent must be ({target.shape[0]},{LATENT}), got {latent.shape}")
        if target.shape[0] == 0:
            return np.zeros((0, 3, SIZE, SIZE), np.float32)
        out = self.run_tensors(torch.from_numpy(target), torch.from_numpy(latent))
        return out.cpu().numpy()
