"""`facefuse swap` options that pick learned models (detector, landmarker, recogniser, swapper,
enhancer, masks, pixel boost), mixed freely with the built-in dlib stack and mesh swapper."""

from __future__ import annotations

import argparse
from typing import Any

from facefuse.cli_models import add_model_arguments, store_and_pool_from_args
from facefuse.errors import ExitCode, FacefuseError
from facefuse.masks.bisenet import DEFAULT_REGIONS, REGIONS
from facefuse.masks.combine import MASK_TYPES
from facefuse.zoo import (
    DETECTORS,
    ENHANCERS,
    LANDMARKERS,
    PIXEL_BOOSTS,
    RECOGNISERS,
    SWAPPER_BACKENDS,
    SWAPPERS,
    ModelChoice,
)

DEFAULT_BATCH_FRAMES = 16


class ZooUsageError(FacefuseError):
    exit_code = ExitCode.USAGE


def add_zoo_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "models (learned models run with onnxruntime; `facefuse models download NAME` fetches them)"
    )
    group.add_argument(
        "--detector", choices=list(DETECTORS), default="hog", help="face detector (default hog)"
    )
    group.add_argument(
        "--landmarker", choices=LANDMARKERS, default="dlib", help="68-point landmarks (default dlib)"
    )
    group.add_argument(
        "--recogniser", choices=RECOGNISERS, default="dlib", help="identity descriptors (default dlib)"
    )
    group.add_argument("--swapper", choices=SWAPPERS, default="mesh", help="face swapper (default mesh)")
    group.add_argument(
        "--no-identity-check",
        dest="identity_check",
        action="store_false",
        help="mesh swapper: make one swap a face. By default the recogniser reads each new face, and one "
        "that still looks like the target's person is redone with more of the source's shading, brows "
        "and eyes (one that looks like the source with room to spare, with less: the target's "
        "expression then reads truer). A video chooses once per tracked face",
    )
    group.add_argument(
        "--swapper-backend",
        choices=SWAPPER_BACKENDS,
        default="onnx",
        help="what runs inswapper_128(_fp16): onnx (onnxruntime, the execution providers below), torch "
        "(PyTorch: CUDA fp16 with CUDA graphs on a GPU, else CPU fp32; needs the `gpu` extra) or "
        "torch-compile (the same under torch.compile: 10-25 s to compile each batch size the first time "
        "it is met, then about twice as fast on batched video faces) (default onnx)",
    )
    group.add_argument("--enhancer", choices=list(ENHANCERS), help="restore each swapped face afterwards")
    group.add_argument(
        "--enhancer-blend",
        type=int,
        default=80,
        metavar="0-100",
        help="how much of the restored face replaces the swapped one (default 80)",
    )
    group.add_argument(
        "--codeformer-fidelity",
        type=float,
        default=0.5,
        metavar="0-1",
        help="CodeFormer: 0 its own face (most restored), 1 most faithful to the input (default 0.5)",
    )
    group.add_argument(
        "--mask",
        default="box",
        metavar="TYPES",
        help=f"paste-back masks of learned swappers, comma-separated and combined: {', '.join(MASK_TYPES)} "
        "(default box)",
    )
    group.add_argument(
        "--mask-regions",
        default=",".join(DEFAULT_REGIONS),
        metavar="REGIONS",
        help=f"face regions the `region` mask keeps, comma-separated: {', '.join(REGIONS)} (default: all)",
    )
    group.add_argument(
        "--pixel-boost",
        type=int,
        choices=PIXEL_BOOSTS,
        metavar="PX",
        help="run the swapper on a PXxPX crop split into interleaved model-size tiles "
        f"({', '.join(map(str, PIXEL_BOOSTS))}; default: the model's own size)",
    )
    group.add_argument(
        "--no-keep-detail",
        action="store_true",
        help="paste a learned swapper's output as is (as FaceFusion does) instead of its change, "
        "dropping the target's detail finer than the model's crop",
    )
    group.add_argument(
        "--batch-frames",
        type=int,
        default=DEFAULT_BATCH_FRAMES,
        metavar="N",
        help="video with a learned swapper: look ahead N frames and run all their faces through one "
        f"model call (the GPU backend is fast at 16-64); 1 turns it off (default {DEFAULT_BATCH_FRAMES})",
    )
    add_model_arguments(parser)


def _split(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def choice_from_args(args: argparse.Namespace) -> ModelChoice:
    if args.batch_frames < 1:
        raise ZooUsageError("--batch-frames must be at least 1")
    if not 0 <= args.enhancer_blend <= 100:
        raise ZooUsageError("--enhancer-blend must lie in 0..100")
    try:
        return ModelChoice(
            detector=args.detector,
            landmarker=args.landmarker,
            recogniser=args.recogniser,
            swapper=args.swapper,
            swapper_backend=args.swapper_backend,
            enhancer=args.enhancer,
            enhancer_blend=args.enhancer_blend / 100.0,
            codeformer_fidelity=args.codeformer_fidelity,
            masks=_split(args.mask),
            mask_regions=_split(args.mask_regions),
            pixel_boost=args.pixel_boost,
            keep_detail=not args.no_keep_detail,
        )
    except ValueError as exc:
        raise ZooUsageError(str(exc)) from exc


def pipeline_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for Pipeline: the model choice and, when a learned model is used, its pool."""
    choice = choice_from_args(args)
    pool = store_and_pool_from_args(args)[1] if choice.learned else None
    return {"models": choice, "pool": pool, "identity_check": args.identity_check}
