#!/usr/bin/env python3
"""Write a random-weight ONNX replica of inswapper_128 (same graph, names, shapes; random weights).

    python scripts/build_inswapper_random.py OUT.onnx [--seed N] [--fp16]

Prints the parameter count and the MACs per face, both counted from the written graph. --fp16 lays
the file out like inswapper_128_fp16: fp16 weights and emap, float32 inputs and output. Needs only
numpy and onnx; the file is ~554 MB (fp32) or ~277 MB (fp16).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "facefuse" / "swap" / "inswapper_replica.py"


def _replica_module():
    # Loaded by path so this runs from a bare checkout with only numpy and onnx installed.
    spec = importlib.util.spec_from_file_location("facefuse_inswapper_replica", SRC)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the .onnx file to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--fp16", action="store_true", help="fp16 weights, float32 I/O (like inswapper_128_fp16)")
    args = p.parse_args(argv)
    if not args.out.parent.is_dir():
        print(f"error: output folder {args.out.parent} does not exist", file=sys.stderr)
        return 9  # ExitCode.OUTPUT_DIR_MISSING
    r = _replica_module()
    t0 = time.perf_counter()
    model = r.build_inswapper_model(seed=args.seed, fp16=args.fp16)
    r.save_model(model, args.out)
    cost = r.graph_cost(model)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    stored = cost.initializer_elements / 1e6
    print(f"parameters: {cost.parameters / 1e6:.2f}M (+ emap and constants: {stored:.2f}M)")
    macs = cost.macs / cost.batch / 1e9
    print(f"MACs per face: {macs:.2f} G ({2 * macs:.1f} GFLOP)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
