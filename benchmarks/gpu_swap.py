"""ms per face for inswapper_128 on PyTorch: facefuse's backend beside a bare PyTorch network.

    python benchmarks/gpu_swap.py [--model inswapper_128.onnx] [--batches 1,16,64] [--repeat N]
    python benchmarks/gpu_swap.py --device cpu          # 2-core CPU figure (batch 1, fp32) + onnxruntime

Without --model it builds the random-weight replica (same architecture as inswapper_128: 138.3M
parameters, 174.6 GMAC per face) in a temporary folder and deletes it afterwards. Needs only numpy,
onnx and torch (and onnxruntime for the CPU comparison); facefuse's modules are loaded straight from
this checkout if facefuse is not installed. Without a CUDA GPU the GPU run prints one line and exits 0.

GPU (fp16): for each batch size, the baseline is a bare eager fp16 network written with plain
torch.nn layers, inputs already on the GPU, no host copies. facefuse's rows go through
`TorchInswapper.run(numpy) -> numpy`, the path the swapper uses, host<->device copies included:
  eager       no CUDA graphs, no compilation, NCHW like the bare network
  graphs      one CUDA graph per batch bucket, NCHW
  graphs-cl   the same with channels-last (NHWC) activations: what `--swapper-backend torch` runs
  compile     torch.compile (--compile-mode) under the CUDA graphs, NCHW
  compile-cl  the same, channels-last: what `--swapper-backend torch-compile` runs
Ratios are facefuse / bare: below 1.00 is faster than the bare network. cuDNN autotuning
(cudnn.benchmark) is on for every row alike. Figures only; nothing passes or fails.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _facefuse_module(name: str):
    """facefuse.swap.<name>, imported normally or, on a bare machine, straight from src/."""
    try:
        return importlib.import_module(f"facefuse.swap.{name}")
    except ImportError:
        # facefuse.swap's package __init__ pulls in dlib/OpenCV; these two modules need neither.
        # Loaded once: a second copy would have its own OnnxWeights class, failing isinstance.
        if (loaded := sys.modules.get(f"facefuse_{name}")) is not None:
            return loaded
        sys.path.insert(0, str(REPO / "src"))
        spec = importlib.util.spec_from_file_location(
            f"facefuse_{name}", REPO / "src/facefuse/swap" / f"{name}.py"
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod


def bare_network(torch, weights):
    """The same network in plain torch.nn, as anyone would write it; weights copied from the ONNX."""
    nn = torch.nn

    class AdaIN(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.InstanceNorm2d(1024, affine=False, eps=weights.eps)
            self.style = nn.Linear(512, 2048)

        def forward(self, x, s):
            gamma, beta = self.style(s).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
            return gamma * self.norm(x) + beta

    class StyleLayer(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.conv = nn.Conv2d(1024, 1024, 3, padding=1, padding_mode="reflect")
            self.adain = AdaIN()
            self.act = act

        def forward(self, x, s):
            return self.act(self.adain(self.conv(x), s))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = StyleLayer(nn.ReLU())
            self.b = StyleLayer(nn.Identity())

        def forward(self, x, s):
            return x + self.b(self.a(x, s), s)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            lrelu = nn.LeakyReLU(0.2)
            self.down = nn.Sequential(
                nn.Conv2d(3, 128, 7, padding=3, padding_mode="reflect"),
                lrelu,
                nn.Conv2d(128, 256, 3, padding=1),
                lrelu,
                nn.Conv2d(256, 512, 3, stride=2, padding=1),
                lrelu,
                nn.Conv2d(512, 1024, 3, stride=2, padding=1),
                lrelu,
            )
            self.blocks = nn.ModuleList([Block() for _ in range(6)])
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(1024, 512, 3, padding=1),
                lrelu,
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(512, 256, 3, padding=1),
                lrelu,
                nn.Conv2d(256, 128, 3, padding=1),
                lrelu,
                nn.Conv2d(128, 3, 7, padding=3, padding_mode="reflect"),
                nn.Tanh(),
            )

        def forward(self, target, source):
            x = self.down(target)
            for block in self.blocks:
                x = block(x, source)
            return (self.up(x) + 1) / 2

    net = Net()
    convs = [m for m in [*net.down, *net.up] if isinstance(m, nn.Conv2d)]
    style_convs = [layer.conv for b in net.blocks for layer in (b.a, b.b)]
    linears = [layer.adain.style for b in net.blocks for layer in (b.a, b.b)]
    ordered = convs[:4] + style_convs + convs[4:]
    with torch.no_grad():
        for conv, (w, b) in zip(ordered, weights.convs, strict=True):
            conv.weight.copy_(torch.from_numpy(w))
            conv.bias.copy_(torch.from_numpy(b))
        for lin, (w, b) in zip(linears, weights.gemms, strict=True):
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
    return net.eval().requires_grad_(False)


def inputs(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.random((batch, 3, 128, 128), dtype=np.float32)
    latent = rng.standard_normal((batch, 512)).astype(np.float32)
    return target, latent / np.linalg.norm(latent, axis=1, keepdims=True)


def time_per_face(fn, batch: int, repeat: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t0) * 1000 / (repeat * batch)


def run_gpu(args, torch, weights, out: dict) -> None:
    it = _facefuse_module("inswapper_torch")
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize
    cudnn = torch.backends.cudnn.version()
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, cuDNN {cudnn}")
    variants = [v for v in args.variants.split(",") if v]
    rows = {b: {} for b in args.batches}
    outputs = {b: {} for b in args.batches}

    bare = bare_network(torch, weights).to(dev, torch.float16)
    for b in args.batches:
        t_np, l_np = inputs(b)
        t = torch.from_numpy(t_np).to(dev, torch.float16)
        lat = torch.from_numpy(l_np).to(dev, torch.float16)
        with torch.inference_mode():
            rows[b]["bare"] = time_per_face(lambda t=t, lat=lat: bare(t, lat), b, args.repeat, 3, sync)
            outputs[b]["bare"] = bare(t, lat).float().cpu().numpy()
    bare = None
    torch.cuda.empty_cache()

    for v in variants:
        kwargs = {
            "eager": {"cuda_graphs": False, "channels_last": False},
            "graphs": {"cuda_graphs": True, "channels_last": False},
            "graphs-cl": {"cuda_graphs": True, "channels_last": True},
            "compile": {"cuda_graphs": True, "channels_last": False, "compile": args.compile_mode or True},
            "compile-cl": {"cuda_graphs": True, "channels_last": True, "compile": args.compile_mode or True},
        }.get(v)
        if kwargs is None:
            print(f"unknown variant {v!r}; skipped")
            continue
        try:
            t0 = time.perf_counter()
            swapper = it.TorchInswapper(weights, device="cuda", buckets=sorted(args.batches), **kwargs)
            swapper.warmup(args.batches)
            print(f"{v}: ready in {time.perf_counter() - t0:.1f} s (capture/compile for {args.batches})")
            for b in args.batches:
                t_np, l_np = inputs(b)
                rows[b][v] = time_per_face(
                    lambda s=swapper, a=t_np, c=l_np: s.run(a, c), b, args.repeat, 2, sync
                )
                outputs[b][v] = swapper.run(t_np, l_np)
        except Exception as e:  # one variant failing (e.g. no Triton for compile) must not hide the rest
            print(f"{v}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        finally:
            swapper = None
            torch.cuda.empty_cache()

    header = f"{'batch':>5}  {'bare eager':>10}" + "".join(f"  {v:>18}" for v in variants)
    print("\nms per face, fp16 (facefuse / bare in brackets; lower is faster)")
    print(header)
    for b in args.batches:
        r = rows[b]
        cells = "".join(
            f"  {r[v]:>8.3f} ({r[v] / r['bare']:.2f}x)" if v in r else f"  {'-':>18}" for v in variants
        )
        print(f"{b:>5}  {r['bare']:>10.3f}{cells}")
    diffs = {
        b: {v: float(np.abs(outputs[b][v] - outputs[b]["bare"]).max()) for v in outputs[b] if v != "bare"}
        for b in args.batches
    }
    print("\nmax |facefuse - bare| per batch (fp16 rounding only):", json.dumps(diffs))
    out.update({"device": torch.cuda.get_device_name(0), "ms_per_face": rows, "max_abs_diff": diffs})


def run_cpu(args, torch, weights, model_path: Path, out: dict) -> None:
    it = _facefuse_module("inswapper_torch")
    torch.set_num_threads(args.threads)
    t_np, l_np = inputs(1)
    bare = bare_network(torch, weights)
    t, lat = torch.from_numpy(t_np), torch.from_numpy(l_np)
    rows = {}
    with torch.inference_mode():
        rows["bare torch eager"] = time_per_face(lambda: bare(t, lat), 1, args.repeat, 1, lambda: None)
    swapper = it.TorchInswapper(weights, device="cpu")
    rows["facefuse torch"] = time_per_face(lambda: swapper.run(t_np, l_np), 1, args.repeat, 1, lambda: None)
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        feed = {"target": t_np, "source": l_np}
        rows["onnxruntime"] = time_per_face(lambda: sess.run(None, feed), 1, args.repeat, 1, lambda: None)
    except ImportError:
        print("onnxruntime not installed: its row is left out")
    base = rows["bare torch eager"]
    print(f"\nCPU, {args.threads} threads, batch 1, fp32: ms per face (ratio to bare torch eager)")
    for name, ms in rows.items():
        print(f"  {name:<18} {ms:>9.1f}  ({ms / base:.2f}x)")
    out.update({"device": "cpu", "threads": args.threads, "ms_per_face": rows})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="an inswapper_128 ONNX file (default: build the replica)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--batches", default="1,16,64", help="comma-separated batch sizes (GPU; default 1,16,64)")
    p.add_argument("--repeat", type=int, default=None, help="timed calls per figure (default 20 GPU, 3 CPU)")
    variants = "eager,graphs,graphs-cl,compile,compile-cl"
    p.add_argument("--variants", default=variants, help="facefuse rows (GPU)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: its default mode)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.repeat = args.repeat or (20 if args.device == "cuda" else 3)

    try:
        import torch
    except ImportError:
        print("skipped: torch is not installed (pip install 'facefuse[gpu]')")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA GPU (torch.cuda.is_available() is False); --device cpu gives the CPU figure")
        return 0

    it = _facefuse_module("inswapper_torch")
    tmp = None
    try:
        model_path = args.model
        if model_path is None:
            replica = _facefuse_module("inswapper_replica")
            tmp = Path(tempfile.mkdtemp(prefix="facefuse-bench-"))
            model_path = tmp / "inswapper_128_replica.onnx"
            t0 = time.perf_counter()
            model = replica.build_inswapper_model(seed=0)
            replica.save_model(model, model_path)
            cost = replica.graph_cost(model)
            del model
            took = time.perf_counter() - t0
            print(
                f"replica built in {took:.1f} s: {cost.parameters / 1e6:.2f}M parameters, "
                f"{cost.macs / cost.batch / 1e9:.2f} GMAC per face"
            )
        weights = it.read_onnx_weights(model_path)
        out: dict = {"model": str(args.model or "replica")}
        if args.device == "cuda":
            run_gpu(args, torch, weights, out)
        else:
            run_cpu(args, torch, weights, model_path, out)
        if args.json:
            print(json.dumps(out))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
