"""Speed figures for facefuse on real photos: model load, per-image swap, stage breakdown, CLI cold start.

    .venv/bin/python benchmarks/speed.py [--repeat N] [--json] [--media DIR]

Prints figures only (no pass/fail). Every figure that depends on the machine also comes with a
baseline measured in the same run, so ratios can be compared across machines:

- the cost of just decoding and re-encoding the same image (read_image + cv2.imencode JPEG q95,
  no labelling or signing): what any tool that touches the image must pay;
- dlib's HOG detector run once at full resolution without upsampling (the naive approach) against
  facefuse's coarse-to-fine detector.

Photos come from ../shared/media (next to the repository) unless --media or $FACEFUSE_MEDIA says
otherwise. Runs in well under two minutes on two cores with the default --repeat 30.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

T_SCRIPT = time.perf_counter()

import numpy as np  # noqa: E402 - imported after the clock starts on purpose

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MEDIA = Path(os.environ.get("FACEFUSE_MEDIA", REPO.parent / "shared" / "media"))
SOURCE = "images/biden.jpg"
TARGET_720 = "images/obama-720p.jpg"
TARGET_1080 = "images/obama-1080p.jpg"


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def stats(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples, np.float64)
    return {
        "median": round(float(np.median(a)), 2),
        "p90": round(float(np.percentile(a, 90)), 2),
        "min": round(float(a.min()), 2),
        "n": len(samples),
    }


def time_ms(fn: Callable[[], object], repeat: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t0))
    return out


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# In-process figures
# ---------------------------------------------------------------------------------------------


def bench_case(pipe, source, target: np.ndarray, selection, repeat: int, warmup: int) -> dict:
    """pipe.run N times on one frame: total and per-stage medians, plus the analyse stage taken apart."""
    from facefuse.analysis.face import head_pose
    from facefuse.analysis.landmarks import sharpness

    for _ in range(warmup):
        pipe.run(source, target, selection)
    totals: list[float] = []
    stages: dict[str, list[float]] = {}
    faces_found = faces_swapped = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = pipe.run(source, target, selection)
        totals.append(1000 * (time.perf_counter() - t0))
        for name, ms in result.timings.ms.items():
            stages.setdefault(name, []).append(ms)
        faces_found, faces_swapped = result.faces_found, result.faces_swapped

    # The analyser's pieces, called directly the way FaceAnalyser.analyse calls them.
    analyser = pipe.analyser
    image = np.ascontiguousarray(target)
    largest_only = not selection.needs_all_faces
    dets = analyser.detector.detect(image, largest_only=largest_only)
    boxes = [d.box for d in dets]
    points = [analyser.landmarks(image, b) for b in boxes]

    def landmarks() -> None:
        for b in boxes:
            analyser.landmarks(image, b)

    def pose() -> None:
        for p in points:
            head_pose(p, image.shape)

    def sharp() -> None:
        for p in points:
            sharpness(image, p)

    parts = {
        "detect": time_ms(lambda: analyser.detector.detect(image, largest_only=largest_only), repeat, 1),
        "landmarks": time_ms(landmarks, repeat, 1),
        "head_pose": time_ms(pose, repeat, 1),
        "sharpness": time_ms(sharp, repeat, 1),
    }
    scales = analyser.detector.scales(image.shape)
    return {
        "image": f"{target.shape[1]}x{target.shape[0]}",
        "mode": selection.mode.value,
        "faces_found": faces_found,
        "faces_swapped": faces_swapped,
        "detector_scales": [round(s, 3) for s in (scales if largest_only else scales[-1:])],
        "total_ms": stats(totals),
        "stages_ms": {k: stats(v)["median"] for k, v in stages.items()},
        "analyse_parts_ms": {k: stats(v)["median"] for k, v in parts.items()},
    }


def bench_baselines(pipe, path: Path, target: np.ndarray, repeat: int, warmup: int) -> dict:
    import cv2
    import dlib

    from facefuse.media import read_image

    def codec() -> None:
        rgb = read_image(path)
        ok, _ = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise RuntimeError("cv2.imencode failed")

    image = np.ascontiguousarray(target)
    naive_detector = dlib.get_frontal_face_detector()
    ours = pipe.analyser.detector
    naive_ms = time_ms(lambda: naive_detector(image, 0), max(5, repeat // 3), 1)
    naive_faces = len(naive_detector(image, 0))
    return {
        "codec_ms": stats(time_ms(codec, repeat, warmup)),
        "read_image_ms": stats(time_ms(lambda: read_image(path), repeat, warmup))["median"],
        "naive_hog_full_res_ms": stats(naive_ms),
        "naive_hog_faces": naive_faces,
        "ours_largest_only_ms": stats(time_ms(lambda: ours.detect(image, largest_only=True), repeat, 1)),
        "ours_all_faces_ms": stats(time_ms(lambda: ours.detect(image, largest_only=False), repeat, 1)),
    }


def bench_load(media: Path) -> tuple[dict, object, object]:
    """Import, Pipeline() (model load) and source preparation, each timed once."""
    t0 = time.perf_counter()
    from facefuse.pipeline import Pipeline

    import_ms = 1000 * (time.perf_counter() - t0)

    t0 = time.perf_counter()
    # The per-frame path: a video's frames after a track's first, which reuse its identity check.
    pipe = Pipeline(identity_check=False)
    load_ms = 1000 * (time.perf_counter() - t0)

    t0 = time.perf_counter()
    source = pipe.source(media / SOURCE)
    source_ms = 1000 * (time.perf_counter() - t0)

    figures = {
        "import_pipeline_ms": round(import_ms, 1),
        "model_load_ms": round(load_ms, 1),
        "source_prepare_ms": round(source_ms, 1),
    }
    return figures, pipe, source


# ---------------------------------------------------------------------------------------------
# Subprocess figures
# ---------------------------------------------------------------------------------------------


def python_startup(code: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        out.append(1000 * (time.perf_counter() - t0))
    return out


# Run in a fresh interpreter: each step is timed cold, in the order `facefuse swap` meets it. It prints
# one JSON line and the wall clock at its very end; the parent measures the time from there to exit
# (interpreter teardown, which the CLI also pays after its output exists).
COLD_STEPS = r"""
import json, sys, time
marks = [("start", time.perf_counter())]
def mark(name):
    marks.append((name, time.perf_counter()))
import numpy, cv2, dlib; mark("import numpy+cv2+dlib")
import facefuse.media; mark("import facefuse.media (PIL, c2pa, cryptography)")
import facefuse.pipeline; mark("import facefuse.pipeline (rest)")
from facefuse.models.builtin import builtin_paths
paths = builtin_paths(); mark("builtin_paths (face_recognition_models)")
from facefuse.analysis.detect import frontal_detector
frontal_detector(); mark("frontal_detector() (dlib HOG, saved copy)")
dlib.shape_predictor(str(paths.landmarks_68)); mark("dlib.shape_predictor(68-point model)")
from facefuse.swap import MeshSwapper
MeshSwapper(); mark("MeshSwapper() (template Delaunay, OpenCV)")
from facefuse.media import read_image
read_image(sys.argv[1]); mark("read_image, first call")
read_image(sys.argv[1]); mark("read_image, second call")
steps = {b[0]: round(1000 * (b[1] - a[1]), 1) for a, b in zip(marks, marks[1:])}
print(json.dumps(steps))
print(time.time(), flush=True)
"""


def bench_cold_steps(media: Path, runs: int) -> dict:
    samples: list[dict[str, float]] = []
    for _ in range(runs):
        proc = subprocess.Popen(
            [sys.executable, "-c", COLD_STEPS, str(media / TARGET_720)], stdout=subprocess.PIPE, text=True
        )
        steps = json.loads(proc.stdout.readline())
        t_end = float(proc.stdout.readline())
        proc.wait()
        steps["interpreter teardown (after last line)"] = round(1000 * (time.time() - t_end), 1)
        samples.append(steps)
    return {k: round(statistics.median(s[k] for s in samples), 1) for k in samples[0]}


def bench_cli(media: Path, runs: int) -> dict:
    exe = Path(sys.executable).parent / "facefuse"
    cmd_base = [str(exe)] if exe.exists() else [sys.executable, "-m", "facefuse"]
    per_run = []
    with tempfile.TemporaryDirectory(prefix="facefuse-bench-") as tmp:
        env = dict(os.environ, FACEFUSE_CONFIG_DIR=str(Path(tmp) / "config"))
        out = Path(tmp) / "out.jpg"
        cmd = [*cmd_base, "swap", "-s", str(media / SOURCE), "-t", str(media / TARGET_720)]
        cmd += ["-o", str(out), "--json"]
        for _ in range(runs):
            out.unlink(missing_ok=True)
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            t_out = None
            while proc.poll() is None:
                if t_out is None and out.exists():
                    t_out = time.perf_counter()
                time.sleep(0.001)
            t_exit = time.perf_counter()
            stdout, stderr = proc.communicate()
            if t_out is None and out.exists():
                t_out = t_exit
            if proc.returncode != 0:
                raise SystemExit(f"CLI failed ({proc.returncode}): {stderr.strip()}")
            summary = json.loads(stdout)
            per_run.append(
                {
                    "output_ms": round(1000 * (t_out - t0), 1),
                    "exit_ms": round(1000 * (t_exit - t0), 1),
                    "wall_ms_reported": summary["wall_ms"],
                    "stages_ms": summary["stages_ms"],
                }
            )
    startup = 5
    bare = python_startup("pass", startup)
    cli_import = python_startup("import facefuse.cli", startup)
    heavy_import = python_startup("import facefuse.pipeline, facefuse.media", startup)
    stage_names = list(per_run[0]["stages_ms"])
    return {
        "runs": per_run,
        "output_ms_median": round(statistics.median(r["output_ms"] for r in per_run), 1),
        "exit_ms_median": round(statistics.median(r["exit_ms"] for r in per_run), 1),
        "stages_ms_median": {
            k: round(statistics.median(r["stages_ms"].get(k, 0.0) for r in per_run), 1) for k in stage_names
        },
        "python_pass_ms": round(statistics.median(bare), 1),
        "import_cli_ms": round(statistics.median(cli_import), 1),
        "import_pipeline_media_ms": round(statistics.median(heavy_import), 1),
        "cold_steps_ms": bench_cold_steps(media, runs),
    }


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def print_report(r: dict) -> None:
    env, load, base, cli = r["environment"], r["load"], r["baselines"], r["cli"]
    print(
        f"facefuse speed  (python {env['python']}, {env['cpus']} CPUs, OpenCV {env['opencv']} "
        f"threads={env['opencv_threads']}, dlib {env['dlib']}, repeat={env['repeat']})"
    )
    print("\nModels (once per process)")
    print(f"  import facefuse.pipeline          {load['import_pipeline_ms']:8.1f} ms")
    print(f"  model load ms (Pipeline())        {load['model_load_ms']:8.1f} ms")
    print(f"  source identity (biden.jpg)       {load['source_prepare_ms']:8.1f} ms")

    print("\nImage swap, models loaded: pipe.run(source, target)  [ms]")
    head = (
        f"  {'case':<16}{'faces':>7}{'median':>9}{'p90':>8}{'analyse':>9}{'select':>8}{'swap':>7}"
        f"{'':3}{'detect':>8}{'lmarks':>8}{'pose':>7}{'sharp':>7}  scales"
    )
    print(head)
    for c in r["cases"]:
        st, ap = c["stages_ms"], c["analyse_parts_ms"]
        name = f"{c['image']} {c['mode']}"
        faces = f"{c['faces_swapped']}/{c['faces_found']}"
        print(
            f"  {name:<16}{faces:>7}{c['total_ms']['median']:>9.1f}{c['total_ms']['p90']:>8.1f}"
            f"{st.get('analyse', 0):>9.1f}{st.get('select', 0):>8.2f}{st.get('swap', 0):>7.1f}{'':3}"
            f"{ap['detect']:>8.1f}{ap['landmarks']:>8.2f}{ap['head_pose']:>7.2f}{ap['sharpness']:>7.2f}"
            f"  {c['detector_scales']}"
        )

    print("  (scales: detector scales tried, coarse first; `one` stops at the first that finds a face)")
    print("\nBaselines (same run)")
    codec = base["codec_ms"]["median"]
    print(
        f"  decode+encode 1280x720 (read_image + imencode q95)  {codec:8.1f} ms  "
        f"(read_image alone {base['read_image_ms']:.1f} ms)"
    )
    for c in r["cases"]:
        if c["image"] == "1280x720":
            rat = r["ratios"][c["mode"] + "_vs_codec"]
            print(f"    {c['mode']:>4} swap median / decode+encode        {rat:8.2f} x")
    naive, ours = base["naive_hog_full_res_ms"]["median"], base["ours_largest_only_ms"]["median"]
    print(
        f"  naive dlib HOG, full res, upsample 0                {naive:8.1f} ms  "
        f"({base['naive_hog_faces']} face(s))"
    )
    print(f"  ours, coarse-to-fine largest_only                   {ours:8.1f} ms")
    print(
        f"  ours, all faces (min_face 40)                       {base['ours_all_faces_ms']['median']:8.1f} ms"
    )
    print(f"    naive / ours largest_only                         {r['ratios']['naive_hog_vs_ours']:8.2f} x")

    print("\nCLI cold start: facefuse swap -s biden.jpg -t obama-720p.jpg -o tmp.jpg --json")
    for i, run in enumerate(cli["runs"], 1):
        note = "  (creates the signing identity)" if i == 1 else ""
        stages = ", ".join(f"{k} {v:.1f}" for k, v in run["stages_ms"].items())
        print(f"  run {i}: output after {run['output_ms']:7.1f} ms, exit {run['exit_ms']:7.1f} ms{note}")
        print(f"         stages_ms: {stages}")
    print(f"  median start -> output exists     {cli['output_ms_median']:8.1f} ms")
    print(f"  median start -> exit              {cli['exit_ms_median']:8.1f} ms")
    stages = ", ".join(f"{k} {v:.1f}" for k, v in cli["stages_ms_median"].items())
    print(f"  median stages_ms: {stages}")
    print(f"  python -c pass                    {cli['python_pass_ms']:8.1f} ms")
    print(
        f"  python -c 'import facefuse.cli'   {cli['import_cli_ms']:8.1f} ms  "
        f"(+{cli['import_cli_ms'] - cli['python_pass_ms']:.1f} ms over bare python)"
    )
    print(
        f"  python -c 'import facefuse.pipeline, facefuse.media'  {cli['import_pipeline_media_ms']:.1f} ms  "
        f"(+{cli['import_pipeline_media_ms'] - cli['python_pass_ms']:.1f} ms: imported by `swap` itself)"
    )
    print("  cold steps in a fresh interpreter (median):")
    for name, ms in cli["cold_steps_ms"].items():
        print(f"    {name:<48}{ms:8.1f} ms")
    print(f"\nbenchmark took {r['benchmark_s']:.1f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=30, help="timed runs per figure (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    ap.add_argument("--cli-runs", type=int, default=3, help="CLI subprocess runs (default 3)")
    ap.add_argument("--media", type=Path, default=DEFAULT_MEDIA, help="folder holding images/")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    media: Path = args.media
    for rel in (SOURCE, TARGET_720, TARGET_1080):
        if not (media / rel).is_file():
            ap.error(f"{media / rel} not found (give --media DIR)")
    repeat, warmup = max(1, args.repeat), max(0, args.warmup)

    load, pipe, source = bench_load(media)

    import cv2
    import dlib

    from facefuse.analysis.select import Mode, Selection
    from facefuse.media import read_image

    one, many = Selection(), Selection(mode=Mode.MANY)
    t720 = read_image(media / TARGET_720)
    t1080 = read_image(media / TARGET_1080)
    cases = [
        bench_case(pipe, source, t720, one, repeat, warmup),
        bench_case(pipe, source, t720, many, repeat, warmup),
        bench_case(pipe, source, t1080, one, repeat, warmup),
        bench_case(pipe, source, t1080, many, max(5, repeat // 3), 1),
    ]
    # A still image, or a track's first frame: the identity check's extra swaps and descriptors.
    from facefuse.pipeline import Pipeline

    checked = Pipeline()
    cases.append(bench_case(checked, checked.source(media / SOURCE), t720, one, max(5, repeat // 3), 1))
    cases[-1]["mode"] = "checked"
    baselines = bench_baselines(pipe, media / TARGET_720, t720, repeat, warmup)
    cli = bench_cli(media, max(1, args.cli_runs))

    codec = baselines["codec_ms"]["median"]
    report = {
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "opencv": cv2.__version__,
            "opencv_threads": cv2.getNumThreads(),
            "dlib": dlib.__version__,
            "repeat": repeat,
            "warmup": warmup,
        },
        "load": load,
        "cases": cases,
        "baselines": baselines,
        "ratios": {
            "one_vs_codec": ratio(cases[0]["total_ms"]["median"], codec),
            "many_vs_codec": ratio(cases[1]["total_ms"]["median"], codec),
            "checked_vs_codec": ratio(cases[4]["total_ms"]["median"], codec),
            "checked_vs_one": ratio(cases[4]["total_ms"]["median"], cases[0]["total_ms"]["median"]),
            "naive_hog_vs_ours": ratio(
                baselines["naive_hog_full_res_ms"]["median"], baselines["ours_largest_only_ms"]["median"]
            ),
            "naive_hog_vs_ours_all_faces": ratio(
                baselines["naive_hog_full_res_ms"]["median"], baselines["ours_all_faces_ms"]["median"]
            ),
            "cli_output_vs_inprocess_one": ratio(cli["output_ms_median"], cases[0]["total_ms"]["median"]),
        },
        "cli": cli,
        "benchmark_s": round(time.perf_counter() - T_SCRIPT, 1),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
