"""`facefuse live`: swap faces on a camera stream (or a video replayed as one) in real time."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from facefuse.analysis.select import Mode, Order, Selection
from facefuse.errors import ExitCode, FacefuseError
from facefuse.interrupts import sigterm_as_interrupt

EXAMPLES = """\
examples:
  facefuse live -s me.jpg --camera 0                      preview window; n/p switch source, q quits
  facefuse live -s me.jpg -s you.jpg --camera 0 --output virtual --control 7000
  facefuse live -s me.jpg --input clip.mp4 --output out.mp4 --json   replay a file as a camera
  echo '{"source_index": 1}' | nc localhost 7000          switch source while running
"""


def _usage(message: str) -> FacefuseError:
    return FacefuseError(message, ExitCode.USAGE)


def add_parser(sub: Any, epilog: str = "") -> None:
    live = sub.add_parser(
        "live",
        help="swap faces on a camera stream in real time",
        description="Swap the source face onto a camera stream (or a video file replayed at its own pace) "
        "with bounded latency: when processing falls behind, frames are dropped, never queued.",
        epilog=EXAMPLES + "\n" + epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    live.add_argument(
        "-s",
        "--source",
        action="append",
        default=[],
        metavar="IMAGE",
        help="photo of a person to swap in; repeat to prepare several and switch between them (the first "
        "is used at the start)",
    )
    inp = live.add_mutually_exclusive_group(required=True)
    inp.add_argument("--camera", type=int, metavar="N", help="camera index (0: the first camera)")
    inp.add_argument(
        "--input",
        metavar="PATH",
        help="a video file, delivered at its own frame rate as a camera would",
    )
    live.add_argument(
        "-o",
        "--output",
        default="window",
        metavar="OUT",
        help="'window' (default; needs the live extra), 'virtual' (a virtual camera) or a video file (.mp4)",
    )
    live.add_argument(
        "--control",
        metavar="PORT|PATH",
        help='accept JSON lines such as {"source_index": 1} on this localhost TCP port or Unix socket',
    )
    live.add_argument(
        "--mode",
        choices=[Mode.ONE.value, Mode.MANY.value],
        default=Mode.ONE.value,
        help="one face or every face",
    )
    live.add_argument(
        "--order",
        choices=[o.value for o in Order],
        default=Order.LARGE_SMALL.value,
        help="which face counts as first for --mode one",
    )
    live.add_argument(
        "--min-face", type=int, default=40, metavar="PX", help="smallest face to look for (default 40)"
    )
    live.add_argument(
        "--detect-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between searches for new faces while faces are tracked (default 1)",
    )
    live.add_argument("--json", action="store_true", help="print a JSON summary on stdout at the end")
    live.set_defaults(func=cmd_live)


def _open_input(args: argparse.Namespace) -> Any:
    from facefuse.live_io import CameraInput, FileInput

    if args.input is not None:
        return FileInput(args.input)
    return CameraInput(args.camera)


def _open_output(args: argparse.Namespace, source_input: Any) -> tuple[Any, str]:
    """Opened before the models load, so a missing window or virtual camera is reported at once."""
    from facefuse.live_io import FileOutput, VirtualCameraOutput, WindowOutput
    from facefuse.media.video import check_video_output_path

    w, h, fps = source_input.width, source_input.height, source_input.fps
    if args.output == "window":
        return WindowOutput(w, h), "display"
    if args.output == "virtual":
        return VirtualCameraOutput(w, h, fps), "display"
    inputs = [*args.source] + ([args.input] if args.input else [])
    path = check_video_output_path(args.output, inputs)
    return FileOutput(path, w, h, fps), "encode"


def cmd_live(args: argparse.Namespace) -> int:
    from facefuse.analysis import DetectorSettings
    from facefuse.live import LiveSession, LiveSettings
    from facefuse.pipeline import Pipeline

    if not args.source:
        raise _usage("give at least one --source IMAGE")
    if args.min_face < 8 or args.detect_interval < 0:
        raise _usage("--min-face must be >= 8 and --detect-interval >= 0")
    for src in args.source:
        if not Path(src).is_file():
            from facefuse.errors import InputMissing

            raise InputMissing(f"{src}: no such file")
    source_input = _open_input(args)
    output = None
    session = None
    control = None
    ok = False
    try:
        output, out_stage = _open_output(args, source_input)
        # No identity check live: choosing a new face's strength costs a few swaps, a visible stall.
        pipe = Pipeline(detector=DetectorSettings(min_face=args.min_face), identity_check=False)
        output.source_type = pipe.swapper.digital_source_type
        sources = [(src, pipe.source(src)) for src in args.source]
        selection = Selection(mode=Mode(args.mode), order=Order(args.order))
        settings = LiveSettings(detect_interval=args.detect_interval, min_face=args.min_face)
        session = LiveSession(pipe, sources, selection, settings)
        stop = threading.Event()

        def quit_session() -> None:
            stop.set()

        if args.control:
            from facefuse.live_io import ControlServer

            control = ControlServer(args.control, session, quit_session)
        capture_errors: list[BaseException] = []
        capture = threading.Thread(
            target=_capture, args=(source_input, session, stop, capture_errors), daemon=True, name="capture"
        )
        ended = None
        with sigterm_as_interrupt():
            try:
                capture.start()
                ended = _output_loop(session, output, out_stage, stop)
            except KeyboardInterrupt:
                ended = "interrupted"  # Ctrl-C is how a camera session is stopped: finish the output
            finally:
                stop.set()
                capture.join()
        if capture_errors:
            raise capture_errors[0]
        summary = session.close(ended)
        session = None
        ok = True
    finally:
        if control is not None:
            control.close()
        if session is not None:
            session.close("error")
        if output is not None:
            output.close(ok)
        source_input.close()
    _report(summary.to_dict(), args.json)
    if hasattr(source_input, "check"):
        source_input.check()  # a camera that went away: the summary is out, now the exit code
    return ExitCode.OK


def _capture(source_input: Any, session: Any, stop: threading.Event, errors: list[BaseException]) -> None:
    """The capture thread: an input that fails still ends the session, so the output loop stops."""
    try:
        source_input.run(session, stop, session.stats.stage)
    except BaseException as exc:
        errors.append(exc)
        session.end_input("error")


def _output_loop(session: Any, output: Any, out_stage: str, stop: threading.Event) -> str | None:
    """Show or write each swapped frame as it comes; keys and the stop flag end the session."""
    ended = None
    while True:
        result = session.latest(timeout=0.05)
        if result is None:
            keys = output.poll()
            if session.finished:
                return ended
        else:
            t0 = time.perf_counter()
            keys = output.show(result.image, result.t_capture)
            t1 = time.perf_counter()
            session.stats.stage(out_stage, 1000 * (t1 - t0))
            session.delivered(result, t1)
        for key in keys:
            if key in ("n", "p"):
                session.change_source(step=1 if key == "n" else -1)
            elif key == "q":
                stop.set()
        if stop.is_set() and ended is None:
            ended = "quit"
            session.end_input("quit")


def _report(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    print(
        f"live: {summary['frames_out']} of {summary['frames_in']} frames out ({summary['frames_dropped']} "
        f"dropped), {summary['fps']:.1f} fps, latency p50 {summary['latency_ms_p50']:.0f} ms, p95 "
        f"{summary['latency_ms_p95']:.0f} ms, max {summary['latency_ms_max']:.0f} ms; {summary['ended']}",
        file=sys.stderr,
    )
