"""The `facefuse` command line: swap, inspect, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from facefuse import __version__
from facefuse.analysis.select import Mode, Order, Selection
from facefuse.errors import EXIT_CODE_HELP, ExitCode, FacefuseError, InputMissing

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}

DESCRIPTION = """\
facefuse swaps faces in images and videos, offline. It finds every face, carries the identity of a source
face onto the chosen target faces while each keeps its pose, expression, lighting and mouth, blends
without seams, and labels the output as AI-generated (metadata label + signed C2PA manifest).
Nothing is uploaded: all processing stays on this machine."""

EXAMPLES = """\
examples:
  facefuse demo                                    swap the bundled demo faces
  facefuse swap -s me.jpg -t photo.jpg -o out.png  replace the largest face
  facefuse swap -s me.jpg -t group.jpg -o out.jpg --mode many
  facefuse swap -s me.jpg -t group.jpg -o out.jpg --mode reference --reference-face bob.jpg
  facefuse swap -t group.jpg -o out.jpg --map alice.jpg=bob.jpg --map carol.jpg=dave.jpg
  facefuse swap -s me.jpg -t clip.mp4 -o out.mp4  swap through a video (audio kept)
  facefuse swap -s me.jpg -t clip.mp4 -o out.mp4 --trim-start 5 --trim-end 300f --crf 20
  facefuse swap -s me.jpg -t clip.mp4 -o still.png --frame 120   preview one frame
  facefuse swap -s me.jpg -t clip.mp4 -o out.mp4 --resume         continue an interrupted run
  facefuse live -s me.jpg --camera 0               swap on a camera stream in real time
  facefuse inspect out.jpg                         show the AI label and verify the manifest
"""


def exit_codes_text() -> str:
    lines = ["exit codes:"]
    lines += [f"  {int(code):<4} {text}" for code, text in EXIT_CODE_HELP.items()]
    return "\n".join(lines)


class CliError(FacefuseError):
    exit_code = ExitCode.USAGE


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="facefuse",
        description=DESCRIPTION,
        epilog=EXAMPLES + "\n" + exit_codes_text(),
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"facefuse {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    swap = sub.add_parser(
        "swap",
        help="swap faces in an image or a video",
        description="Carry the source identity onto faces in the target image or video.",
        epilog=EXAMPLES + "\n" + exit_codes_text(),
        formatter_class=fmt,
    )
    io = swap.add_argument_group("inputs and output")
    io.add_argument(
        "-s",
        "--source",
        action="append",
        default=[],
        metavar="IMAGE",
        help="photo of the person to swap in; repeat for several photos of them (the sharpest, most "
        "frontal face is used, descriptors are averaged)",
    )
    io.add_argument(
        "-t", "--target", required=True, metavar="FILE", help="image or video whose faces are replaced"
    )
    io.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="PATH",
        help="output image (.jpg .png .webp) or video (.mp4 .m4v .mov)",
    )
    io.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="SRC=REF",
        help="give the person shown in photo REF the face from photo SRC; repeat for several people",
    )
    sel = swap.add_argument_group("which faces")
    sel.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        default=Mode.ONE.value,
        help="one face (default), every face, or faces that match --reference-face",
    )
    sel.add_argument(
        "--order",
        choices=[o.value for o in Order],
        default=Order.LARGE_SMALL.value,
        help="how faces are ordered for --mode one and --index (default: large-small)",
    )
    sel.add_argument(
        "--index", type=int, metavar="N", help="replace only the N-th face after ordering (0 first)"
    )
    sel.add_argument(
        "--reference-face",
        action="append",
        default=[],
        metavar="IMAGE",
        help="photo of the target person to replace (--mode reference); repeatable",
    )
    sel.add_argument(
        "--reference-distance",
        type=float,
        default=None,
        metavar="D",
        help="descriptor distance under which a face counts as the reference person (default: the "
        "recogniser's own, 0.6 for dlib, 1.10 for arcface_w600k_r50)",
    )
    sel.add_argument(
        "--min-face",
        type=int,
        default=40,
        metavar="PX",
        help="smallest face to look for when every face is wanted (default 40)",
    )
    out = swap.add_argument_group("output and limits")
    out.add_argument(
        "--jpeg-quality", type=int, default=95, metavar="Q", help="JPEG/WebP quality (default 95)"
    )
    out.add_argument(
        "--max-pixels",
        type=int,
        default=100_000_000,
        metavar="N",
        help="refuse inputs with more pixels than this, before decoding them (default 100000000)",
    )
    out.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_video_arguments(swap)
    from facefuse.cli_zoo import add_zoo_arguments

    add_zoo_arguments(swap)
    swap.set_defaults(func=cmd_swap)

    inspect = sub.add_parser(
        "inspect",
        help="report an image's AI-generated label and C2PA manifest",
        description="Report the AI-generated label and whether the C2PA manifest validates.",
        epilog=exit_codes_text(),
        formatter_class=fmt,
    )
    inspect.add_argument("file", metavar="FILE")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(func=cmd_inspect)

    demo = sub.add_parser(
        "demo",
        help="swap the two public-domain demo faces (Grace Hopper onto the astronaut)",
        description="Swap matplotlib's grace_hopper.jpg onto scikit-image's astronaut.png.",
        formatter_class=fmt,
    )
    demo.add_argument("-o", "--output", default="facefuse-demo.png", metavar="PATH")
    demo.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    demo.set_defaults(func=cmd_demo)

    from facefuse import cli_live, cli_models, cli_service, cli_worker

    cli_models.add_parser(sub)
    cli_service.add_parser(sub)
    cli_worker.add_parser(sub)
    cli_live.add_parser(sub, exit_codes_text())
    return parser


def parse_maps(items: Sequence[str]) -> list[tuple[str, str]]:
    maps = []
    for item in items:
        src, sep, ref = item.partition("=")
        if not sep or not src or not ref:
            raise CliError(f"--map {item!r}: expected SRC=REF (source photo = reference photo of the target)")
        maps.append((src, ref))
    return maps


def add_video_arguments(swap: argparse.ArgumentParser) -> None:
    from facefuse.media.video import ENCODERS

    video = swap.add_argument_group("video targets")
    video.add_argument(
        "--encoder",
        choices=list(ENCODERS),
        default="h264",
        help="video encoder (default h264; which ones work depends on the FFmpeg build)",
    )
    video.add_argument(
        "--crf", type=int, metavar="N", help="constant quality; lower is better (h264 default 18)"
    )
    video.add_argument("--preset", metavar="NAME", help="encoder speed preset (h264/h265 default veryfast)")
    video.add_argument(
        "--fps", metavar="RATE", help="output frame rate, e.g. 25 or 30000/1001 (default: keep)"
    )
    video.add_argument(
        "--resolution", metavar="WxH", help="output size as shown, e.g. 1280x720 or 1280x-1 (default: keep)"
    )
    video.add_argument(
        "--trim-start", metavar="T", help="start at T seconds (12.5) or frame (300f) of the input"
    )
    video.add_argument("--trim-end", metavar="T", help="stop before T seconds (12.5) or frame (300f)")
    video.add_argument(
        "--frame",
        type=int,
        metavar="N",
        help="preview: swap only frame N of the video into an image --output",
    )
    video.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from its last finished segment (same input and options)",
    )
    video.add_argument(
        "--segment-frames",
        type=int,
        default=0,
        metavar="N",
        help="frames per segment, the unit that --resume keeps (default: an even number of equal "
        "segments of at most 300 frames)",
    )
    video.add_argument(
        "--workers", type=int, default=0, metavar="N", help="worker processes (default: one per core)"
    )


def check_target_kind(path: str) -> bool:
    """True for a video target: by extension, else by content (FFmpeg finds a video stream)."""
    target = Path(path)
    if not target.exists():
        raise InputMissing(f"{path}: no such file")
    if target.is_dir():
        return False  # the image reader reports it
    if target.suffix.lower() in VIDEO_SUFFIXES:
        return True
    if target.suffix.lower() in IMAGE_SUFFIXES:
        return False
    from facefuse.media.video import is_video

    return is_video(target)


def cmd_swap(args: argparse.Namespace) -> int:
    from facefuse.analysis import DetectorSettings
    from facefuse.media import check_output_path, write_image
    from facefuse.pipeline import Pipeline, Timings, check_result

    t_start = time.perf_counter()
    maps = parse_maps(args.map)
    if not args.source and not maps:
        raise CliError("give at least one --source (or --map SRC=REF)")
    if args.mode == Mode.REFERENCE.value and not args.reference_face:
        raise CliError("--mode reference needs --reference-face IMAGE")
    if args.max_pixels <= 0 or args.min_face < 8 or not 1 <= args.jpeg_quality <= 100:
        raise CliError("--max-pixels must be > 0, --min-face >= 8, --jpeg-quality in 1..100")
    is_video = check_target_kind(args.target)
    if not is_video and video_options_given(args):
        raise CliError(
            f"{args.target}: --frame, --resume, --trim-*, --fps and the encoder options are for videos"
        )
    inputs = [*args.source, args.target, *args.reference_face, *(p for pair in maps for p in pair)]
    if is_video:
        from facefuse.cli_video import swap_video

        return swap_video(args, maps, inputs, t_start)
    output = check_output_path(args.output, inputs)

    selection = Selection(
        mode=Mode(args.mode),
        order=Order(args.order),
        index=args.index,
        reference_distance=args.reference_distance,
    )
    from facefuse.cli_zoo import pipeline_options

    timings = Timings()
    with timings.stage("load_models"):
        pipe = Pipeline(
            detector=DetectorSettings(min_face=args.min_face),
            max_pixels=args.max_pixels,
            **pipeline_options(args),
        )
    with timings.stage("read"):
        target = pipe.load(args.target)
    with timings.stage("source"):
        source = pipe.source(args.source) if args.source else None
        reference = pipe.reference(args.reference_face) if args.reference_face else None
        people = [(pipe.source(src), pipe.reference(ref)) for src, ref in maps]
    result = pipe.run(source, target, selection, reference=reference, people=people, timings=timings)
    check_result(result, selection.resolved(pipe.analyser.same_person), args.target)
    with timings.stage("write"):
        write_image(
            result.image, output, source_type=pipe.swapper.digital_source_type, jpeg_quality=args.jpeg_quality
        )
    summary = {"output": str(output), "swapper": pipe.swapper.name, **result.summary()}
    summary["wall_ms"] = round(1000 * (time.perf_counter() - t_start), 1)
    report(summary, args.json)
    return ExitCode.OK


def video_options_given(args: argparse.Namespace) -> bool:
    names = ("crf", "preset", "fps", "resolution", "trim_start", "trim_end", "frame")
    return any(getattr(args, n) is not None for n in names) or args.resume or args.encoder != "h264"


def report(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    unchanged = summary["faces_unchanged"]
    note = f", {unchanged} left unchanged" if unchanged else ""
    print(
        f"{summary['output']}: swapped {summary['faces_swapped']} of {summary['faces_found']} "
        f"face(s){note} in {summary['wall_ms'] / 1000:.2f} s",
        file=sys.stderr,
    )


def cmd_inspect(args: argparse.Namespace) -> int:
    from facefuse.media import inspect_file

    rep = inspect_file(args.file)
    if args.json:
        print(json.dumps(rep.to_dict()))
    else:
        print(f"{args.file}:")
        for line in rep.summary_lines():
            print(f"  {line}")
    return ExitCode.OK


def demo_images() -> tuple[Path, Path]:
    try:
        import matplotlib
        import skimage.data
    except ImportError as exc:
        raise CliError(
            "the demo images ship with matplotlib and scikit-image: pip install 'facefuse[demo]'"
        ) from exc
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    astronaut = Path(skimage.data.__file__).parent / "astronaut.png"
    for p in (hopper, astronaut):
        if not p.exists():
            raise InputMissing(f"{p}: demo image missing from its package")
    return hopper, astronaut


def cmd_demo(args: argparse.Namespace) -> int:
    hopper, astronaut = demo_images()
    swap_args = build_parser().parse_args(
        ["swap", "-s", str(hopper), "-t", str(astronaut), "-o", args.output]
        + (["--json"] if args.json else [])
    )
    return cmd_swap(swap_args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    try:
        return int(args.func(args))
    except FacefuseError as exc:
        print(f"facefuse: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("facefuse: interrupted; nothing was written at the output path", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # the last line of defence: one line, not a traceback
        if args.debug or os.environ.get("FACEFUSE_DEBUG"):
            raise
        print(f"facefuse: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr)
        return int(ExitCode.INTERNAL)


if __name__ == "__main__":
    sys.exit(main())
