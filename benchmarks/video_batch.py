"""faces/s of a video run with inswapper_128: faces of several frames per model call vs one at a time.

    python benchmarks/video_batch.py [--model inswapper_128.onnx] [--backend torch|onnx]
                                     [--frames 16] [--batch-frames 16] [--threads 2]

Both runs go through the whole video job (decode, track, swap, encode) on the same synthetic clip
(a photo drifting a pixel a frame, one face per frame), in this process, with the chosen swapper
backend; the baseline is the same job with --batch-frames 1, measured in the same run. Without
--model the random-weight replica of inswapper_128 (same architecture and cost) is built in a
temporary folder and removed afterwards; the recogniser is a tiny ArcFace-shaped model, since only
the swapper's cost is of interest. On a CUDA GPU the torch backend runs fp16 with CUDA graphs, where
batching pays; on a CPU it runs fp32 and the ratio shows what batching alone is worth there.
Figures only; nothing passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
MEDIA = Path(os.environ.get("FACEFUSE_MEDIA") or REPO.parent / "shared" / "media")


def make_clip(path: Path, frames: int) -> Path:
    import av
    from PIL import Image

    with Image.open(MEDIA / "images" / "obama-480p.jpg") as im:
        base = np.asarray(im.convert("RGB").resize((640, 360)))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for i in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")))
        out.mux(stream.encode(None))
    return path


def run_job(pipe, clip: Path, out: Path, batch_frames: int) -> dict:
    from facefuse.analysis.select import Mode, Selection
    from facefuse.media import video as media
    from facefuse.stream import FrameSwapper
    from facefuse.video import VideoJob, VideoOptions

    source = pipe.source(MEDIA / "images" / "biden.jpg")
    info = media.probe(clip)
    job = VideoJob(
        info,
        out,
        VideoOptions(workers=1, segment_frames=len(info.pts)),
        lambda: FrameSwapper(pipe, source, Selection(mode=Mode.MANY), batch_frames=batch_frames),
    )
    t0 = time.perf_counter()
    summary = job.run()
    wall = time.perf_counter() - t0
    return {
        "faces": summary.faces_swapped,
        "wall_s": round(wall, 2),
        "swap_s": round(summary.stages_ms.get("swap", 0.0) / 1000, 2),
        "faces_per_s": round(summary.faces_swapped / wall, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="an inswapper_128 ONNX file (default: build the replica)")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    p.add_argument("--frames", type=int, default=16, help="frames in the clip (default 16)")
    p.add_argument("--batch-frames", type=int, default=16, help="look-ahead of the batched run (default 16)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = p.parse_args(argv)

    import torch
    import zoo_onnx

    from facefuse.models import ModelStore, SessionPool, default_registry
    from facefuse.pipeline import Pipeline
    from facefuse.zoo import ModelChoice

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="facefuse-video-batch-"))
    os.environ.setdefault("FACEFUSE_CONFIG_DIR", str(work / "config"))
    try:
        model = args.model
        if model is None:
            model = work / "inswapper_128_replica.onnx"
            script = REPO / "scripts" / "build_inswapper_random.py"
            subprocess.run([sys.executable, str(script), str(model)], check=True, stdout=subprocess.DEVNULL)
        arcface = zoo_onnx.arcface(np.random.default_rng(3).normal(size=(3, 512)))
        paths = {"inswapper_128": model, "arcface_w600k_r50": zoo_onnx.save(arcface, work / "arcface.onnx")}
        store = ModelStore(default_registry(), work, overrides=paths, verify=False)
        said: list[str] = []
        pipe = Pipeline(
            models=ModelChoice(swapper="inswapper_128", swapper_backend=args.backend),
            pool=SessionPool(store, threads=args.threads, warn=said.append),
        )
        device = getattr(getattr(pipe.swapper.net, "device", None), "type", "cpu")
        clip = make_clip(work / "clip.mp4", args.frames)
        run_job(pipe, clip, work / "warm.mp4", 1)  # first calls pay for allocation (and CUDA graphs)
        one = run_job(pipe, clip, work / "one.mp4", 1)
        batched = run_job(pipe, clip, work / "batched.mp4", args.batch_frames)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = batched["faces_per_s"] / one["faces_per_s"]
    print(f"inswapper_128 video, {args.frames} frames, backend {args.backend} on {device}")
    for name, r in (("1", one), (str(args.batch_frames), batched)):
        print(
            f"  batch-frames {name:<3} : {r['faces_per_s']:.3f} faces/s  "
            f"(swap {r['swap_s']} s, wall {r['wall_s']} s)"
        )
    print(f"  ratio batched / one at a time: {ratio:.2f}x")
    if args.json:
        figures = {"backend": args.backend, "device": device, "one": one, "batched": batched}
        print(json.dumps({**figures, "ratio": round(ratio, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
