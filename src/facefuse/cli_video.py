"""`facefuse swap` with a video target: the whole video, or one frame with --frame."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from facefuse.analysis.select import Mode, Order, Selection
from facefuse.errors import ExitCode, FacefuseError, InputInvalid, NoTargetFace
from facefuse.interrupts import sigterm_as_interrupt
from facefuse.media import video as media


def _usage(message: str) -> FacefuseError:
    return FacefuseError(message, ExitCode.USAGE)


def parse_fps(text: str | None) -> Fraction | None:
    if text is None:
        return None
    try:
        rate = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise _usage(f"--fps {text!r}: expected a rate such as 25, 29.97 or 30000/1001") from None
    if not 0 < rate <= 480:
        raise _usage(f"--fps {text!r}: must be above 0 and at most 480")
    return rate.limit_denominator(100_000)


def parse_resolution(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    w, sep, h = text.lower().partition("x")
    try:
        size = (int(w), int(h))
    except ValueError:
        size = None
    if not sep or size is None or any(v == 0 or v < -1 or v > 16384 for v in size) or size == (-1, -1):
        raise _usage(f"--resolution {text!r}: expected WxH, e.g. 1280x720, 1280x-1 or -1x720")
    return size


def video_options(args: argparse.Namespace) -> Any:
    from facefuse.video import TimeSpec, VideoOptions

    if args.encoder not in media.available_encoders():
        have = ", ".join(media.available_encoders())
        raise _usage(f"--encoder {args.encoder}: not in this FFmpeg build (available: {have})")
    if args.crf is not None and not 0 <= args.crf <= 63:
        raise _usage(f"--crf {args.crf}: must be 0..63")
    if args.segment_frames < 0 or args.workers < 0:
        raise _usage("--segment-frames and --workers must be >= 0")
    try:
        trim_start = TimeSpec.parse(args.trim_start) if args.trim_start else None
        trim_end = TimeSpec.parse(args.trim_end) if args.trim_end else None
    except ValueError as exc:
        raise _usage(f"--trim-start/--trim-end {exc}") from None
    encoder = media.EncoderSettings(args.encoder, args.crf, args.preset)
    return VideoOptions(
        encoder=encoder,
        fps=parse_fps(args.fps),
        size=parse_resolution(args.resolution),
        trim_start=trim_start,
        trim_end=trim_end,
        segment_frames=args.segment_frames,
        workers=args.workers,
    )


def swap_video(
    args: argparse.Namespace, maps: Sequence[tuple[str, str]], inputs: list[str], t_start: float
) -> int:
    from facefuse.media import check_output_path

    target = Path(args.target)
    if args.frame is not None:
        if args.resume:
            raise _usage("--frame previews one frame; it cannot be combined with --resume")
        output = check_output_path(args.output, inputs)
    else:
        output = media.check_video_output_path(args.output, inputs)
    options = video_options(args)
    info = media.probe(target)
    if args.frame is not None:
        return _preview(args, maps, info, output, t_start)
    return _whole_video(args, maps, info, options, output, t_start)


def _load(args: argparse.Namespace, maps: Sequence[tuple[str, str]]) -> tuple[Any, Any, Any, Any, Selection]:
    from facefuse.analysis import DetectorSettings
    from facefuse.pipeline import Pipeline

    selection = Selection(
        mode=Mode(args.mode),
        order=Order(args.order),
        index=args.index,
        reference_distance=args.reference_distance,
    )
    from facefuse.cli_zoo import pipeline_options

    pipe = Pipeline(
        detector=DetectorSettings(min_face=args.min_face),
        max_pixels=args.max_pixels,
        **pipeline_options(args),
    )
    source = pipe.source(args.source) if args.source else None
    reference = pipe.reference(args.reference_face) if args.reference_face else None
    people = [(pipe.source(src), pipe.reference(ref)) for src, ref in maps]
    return pipe, source, reference, people, selection


def _frame_swapper(
    pipe: Any, source: Any, reference: Any, people: Any, selection: Selection, batch_frames: int = 1
) -> Any:
    from facefuse.stream import FrameSwapper

    return FrameSwapper(
        pipe, source, selection, reference=reference, people=people, batch_frames=batch_frames
    )


def _check_pixels(info: media.VideoInfo, max_pixels: int) -> None:
    from facefuse.errors import TooManyPixels

    if info.width * info.height > max_pixels:
        raise TooManyPixels(
            f"{info.path}: {info.width}x{info.height} frames are more pixels than --max-pixels {max_pixels:,}"
        )


def _preview(
    args: argparse.Namespace,
    maps: Sequence[tuple[str, str]],
    info: media.VideoInfo,
    output: Path,
    t_start: float,
) -> int:
    from facefuse.media import write_image
    from facefuse.pipeline import Timings

    if not 0 <= args.frame < info.frame_count:
        raise _usage(f"--frame {args.frame}: {info.path} has frames 0..{info.frame_count - 1}")
    _check_pixels(info, args.max_pixels)
    with media.FrameReader(info) as reader:
        frame = next(iter(reader.frames(args.frame, args.frame + 1)), None)
    if frame is None:
        raise InputInvalid(f"{info.path}: frame {args.frame} cannot be decoded")
    rgb = media.upright(media.frame_to_rgb(frame), info.rotation)
    timings = Timings()
    pipe, source, reference, people, selection = _load(args, maps)
    result = _frame_swapper(pipe, source, reference, people, selection).process(
        rgb, float(frame.pts * info.time_base), timings
    )
    if result.faces_found == 0:
        raise NoTargetFace(f"{info.path}: no face found in frame {args.frame}")
    write_image(
        result.image, output, source_type=pipe.swapper.digital_source_type, jpeg_quality=args.jpeg_quality
    )
    summary = {
        "output": str(output),
        "frame": args.frame,
        "faces_found": result.faces_found,
        "faces_swapped": result.faces_swapped,
        "stages_ms": timings.rounded(),
        "wall_ms": round(1000 * (time.perf_counter() - t_start), 1),
    }
    _report(summary, args.json)
    return ExitCode.OK


def _whole_video(
    args: argparse.Namespace,
    maps: Sequence[tuple[str, str]],
    info: media.VideoInfo,
    options: Any,
    output: Path,
    t_start: float,
) -> int:
    from facefuse.video import VideoJob, file_fingerprint

    _check_pixels(info, args.max_pixels)
    t_load = time.perf_counter()
    pipe, source, reference, people, selection = _load(args, maps)
    load_ms = round(1000 * (time.perf_counter() - t_load), 1)
    key = {
        "sources": [file_fingerprint(Path(p)) for p in args.source],
        "references": [file_fingerprint(Path(p)) for p in args.reference_face],
        "maps": [[file_fingerprint(Path(s)), file_fingerprint(Path(r))] for s, r in maps],
        "selection": [args.mode, args.order, args.index, args.reference_distance, args.min_face],
        "swapper": pipe.swapper.name,
        "models": pipe.models.key(),
    }
    if pipe.models.learned:
        # onnxruntime's thread pools do not survive a fork: learned models run in this one process.
        options = dataclasses.replace(options, workers=1)
    job = VideoJob(
        info=info,
        output=output,
        options=options,
        make_processor=lambda: _frame_swapper(
            pipe, source, reference, people, selection, batch_frames=args.batch_frames
        ),
        key=key,
        source_type=pipe.swapper.digital_source_type,
        show_progress=sys.stderr.isatty() and not args.json,
    )
    # A kill from a supervisor (SIGTERM) ends the run like Ctrl-C: finished segments kept, no output.
    with sigterm_as_interrupt():
        summary = job.run(resume=args.resume, t_start=t_start).to_dict()
    summary["swapper"] = pipe.swapper.name
    summary["stages_ms"] = {"load_models": load_ms, **summary["stages_ms"]}
    _report(summary, args.json)
    return ExitCode.OK


def _report(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    if "frame" in summary:
        print(
            f"{summary['output']}: frame {summary['frame']}: swapped {summary['faces_swapped']} of "
            f"{summary['faces_found']} face(s)",
            file=sys.stderr,
        )
        return
    broken = f", {summary['frames_broken']} broken frame(s) skipped" if summary["frames_broken"] else ""
    print(
        f"{summary['output']}: {summary['frames_out']} frames, {summary['faces_swapped']} face(s) swapped in "
        f"{summary['frames_with_faces']} frame(s) with faces{broken}; audio {summary['audio']}; "
        f"{summary['wall_s']:.1f} s ({summary['fps']:.1f} fps)",
        file=sys.stderr,
    )
