"""Score the mesh swapper in-process with the judge's own code (../shared/tools/face_quality.py).

Same pairs and figures as the judge's CLI run, without a process start per pair, so settings can be
compared quickly: python benchmarks/quality_tune.py [--sheet s.png] [key=value ...] (MeshSettings fields).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from facefuse.analysis import FaceAnalyser
from facefuse.swap.mesh import MeshSettings, MeshSwapper

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def load_judge():
    spec = importlib.util.spec_from_file_location("face_quality", SHARED / "tools" / "face_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--sheet")
    ap.add_argument("--rows", action="store_true")
    ap.add_argument("settings", nargs="*")
    a = ap.parse_args()
    kinds = {f.name: f.type for f in fields(MeshSettings)}
    kw = {k: float(v) for k, v in (s.split("=") for s in a.settings) if k in kinds}
    fq = load_judge()
    analyser = FaceAnalyser()
    swapper = MeshSwapper(MeshSettings(**kw))
    identity = fq.read_set(str(SHARED / "media" / "identities.csv"))
    faces = {f: face for f in identity if (face := fq.analyse(fq.load(f))) is not None}
    by_id: dict[str, list[str]] = {}
    for f in identity:
        if f in faces:
            by_id.setdefault(identity[f], []).append(f)
    centroids = {k: np.mean([faces[f].descriptor for f in fs], 0) for k, fs in by_id.items()}
    rows = []
    tmp = Path("/tmp/quality_tune")
    tmp.mkdir(exist_ok=True)
    from PIL import Image

    for i, (src, tgt) in enumerate(fq.make_pairs(by_id, a.pairs)):
        s_img, t_img = fq.load(src), fq.load(tgt)
        sf = analyser.analyse(s_img, largest_only=True)[0]
        tf = analyser.analyse(t_img, largest_only=True)[0]
        t0 = time.perf_counter()
        out = swapper.swap(t_img, tf, swapper.prepare(s_img, sf))
        dt = time.perf_counter() - t0
        path = tmp / f"out{i}.png"
        Image.fromarray(out).save(path)
        row = {"src": src, "tgt": tgt, "out": str(path), "rc": 0, "sec": round(dt, 3)}
        row["box"] = faces[tgt].box.tolist()
        row.update(fq.score(out, t_img, faces[tgt], identity[src], identity[tgt], centroids))
        rows.append(row)
        if a.rows:
            shown = {k: v for k, v in row.items() if k not in ("out", "box", "src", "tgt", "rc")}
            print(os.path.basename(src), os.path.basename(tgt), json.dumps(shown))
    s = fq.summarise(rows)
    if a.sheet:
        fq.contact_sheet(rows, a.sheet)
    print(json.dumps({k: v for k, v in s.items() if k != "sec"}), "swap_ms", s["sec"] * 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
