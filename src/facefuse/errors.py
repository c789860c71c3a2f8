"""Errors a user can cause, each with its own documented exit code.

The CLI prints `str(error)` as one line and exits with `error.exit_code`; library users catch
`FacefuseError` (or a subclass) and never see a bare OpenCV or Pillow exception for bad input.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug: please report it
    USAGE = 2  # bad command line (argparse's own code)
    INPUT_MISSING = 3  # file missing or unreadable
    INPUT_INVALID = 4  # not an image we can decode, or truncated/corrupt
    TOO_MANY_PIXELS = 5  # larger than --max-pixels (decompression-bomb guard)
    NO_SOURCE_FACE = 6
    NO_TARGET_FACE = 7
    OUTPUT_IS_INPUT = 8
    OUTPUT_DIR_MISSING = 9
    OUTPUT_WRITE_FAILED = 10
    NO_MATCH = 11  # reference/--map given but no target face matched
    NO_VIDEO_STREAM = 12  # a media file with no video stream (e.g. audio only)
    EMPTY_VIDEO = 13  # a video stream with no decodable frames (in the trimmed range)
    RESUME_MISMATCH = 14  # --resume found the work of a different job
    # Model zoo (20-29)
    MODEL_MISSING = 20  # a model file is not in the models folder (nothing is fetched implicitly)
    MODEL_HASH_MISMATCH = 21  # a model file's SHA-256 differs from the pinned (or recorded) one
    MODEL_CORRUPT = 22  # a model file is truncated, the wrong size, or not a loadable ONNX model
    MODEL_UNKNOWN = 23  # no model of that name in the registry
    MODEL_DOWNLOAD_FAILED = 24  # network or server error during `facefuse models download`
    MODEL_UNSUPPORTED = 25  # a readable model file whose graph is not the architecture a backend implements
    BACKEND_UNAVAILABLE = 26  # --swapper-backend torch without PyTorch installed
    # Service (30-39)
    SERVICE_CONFIG = 30  # `facefuse serve`: unworkable settings (e.g. a non-local host, no API keys)
    SERVICE_DATA_DIR = 31  # `facefuse serve`: the data folder cannot be created or written
    SERVICE_START = 32  # `facefuse serve`: the port cannot be bound, or start-up (models, keys) failed
    SCALE_CONFIG = 35  # serve/worker scale-out: a bad --broker/--storage, or the scale-out extras missing
    BROKER_UNREACHABLE = 36  # serve/worker: the Redis broker does not answer
    STORAGE_UNREACHABLE = 37  # serve/worker: the shared folder or bucket cannot be used
    # Live (40-49)
    NO_CAMERA = 40  # live: the camera cannot be opened
    VIRTUAL_CAMERA_UNAVAILABLE = 41  # live: --output virtual, but no virtual camera backend
    WINDOW_UNAVAILABLE = 42  # live: --output window, but no GUI library or no display
    CONTROL_UNAVAILABLE = 43  # live: the --control port or socket cannot be opened
    CAMERA_LOST = 44  # live: the camera stopped delivering frames mid-session (summary still given)
    INTERRUPTED = 130


EXIT_CODE_HELP = {
    ExitCode.OK: "success",
    ExitCode.INTERNAL: "internal error (a bug; run with --debug and report it)",
    ExitCode.USAGE: "bad command line",
    ExitCode.INPUT_MISSING: "an input file is missing or unreadable",
    ExitCode.INPUT_INVALID: "an input is not a supported image or video, or it is truncated or corrupt",
    ExitCode.TOO_MANY_PIXELS: "an input has more pixels than --max-pixels",
    ExitCode.NO_SOURCE_FACE: "no face found in a source or reference photo",
    ExitCode.NO_TARGET_FACE: "no face found in the target",
    ExitCode.OUTPUT_IS_INPUT: "the output path is one of the inputs",
    ExitCode.OUTPUT_DIR_MISSING: "the output folder does not exist",
    ExitCode.OUTPUT_WRITE_FAILED: "the output could not be written",
    ExitCode.NO_MATCH: "no target face matched the reference face(s)",
    ExitCode.NO_VIDEO_STREAM: "the target video has no video stream (e.g. an audio-only file)",
    ExitCode.EMPTY_VIDEO: "the target video has no frames (zero length, all broken, or trimmed away)",
    ExitCode.RESUME_MISMATCH: "--resume found unfinished work of a different job (input or options changed)",
    ExitCode.MODEL_MISSING: "a model file is missing (the message says which file to put where)",
    ExitCode.MODEL_HASH_MISMATCH: "a model file's SHA-256 does not match the registry (or its recorded hash)",
    ExitCode.MODEL_CORRUPT: "a model file is truncated, the wrong size, or not a valid ONNX model",
    ExitCode.MODEL_UNKNOWN: "no model of that name (see `facefuse models list`)",
    ExitCode.MODEL_DOWNLOAD_FAILED: "a model download failed (rerun to resume it)",
    ExitCode.MODEL_UNSUPPORTED: "a model file is not the architecture the chosen backend implements",
    ExitCode.BACKEND_UNAVAILABLE: "the torch swapper backends need PyTorch (pip install 'facefuse[gpu]')",
    ExitCode.SERVICE_CONFIG: "serve: the settings cannot work (e.g. a non-local --host without API keys)",
    ExitCode.SERVICE_DATA_DIR: "serve: the data folder cannot be created or written",
    ExitCode.SERVICE_START: "serve: the port is in use or cannot be bound, or start-up failed",
    ExitCode.SCALE_CONFIG: "serve/worker: bad --broker or --storage, or facefuse[scale] not installed",
    ExitCode.BROKER_UNREACHABLE: "serve/worker: the Redis broker (--broker) does not answer",
    ExitCode.STORAGE_UNREACHABLE: "serve/worker: the --storage folder or bucket cannot be used",
    ExitCode.NO_CAMERA: "live: the camera does not exist or cannot be opened",
    ExitCode.VIRTUAL_CAMERA_UNAVAILABLE: "live: no virtual camera on this system (pip install "
    "'facefuse[live]' and a backend such as v4l2loopback or OBS)",
    ExitCode.WINDOW_UNAVAILABLE: "live: no preview window (pip install 'facefuse[live]'; needs a display)",
    ExitCode.CONTROL_UNAVAILABLE: "live: the --control port or socket cannot be opened",
    ExitCode.CAMERA_LOST: "live: the camera stopped delivering frames mid-session (summary still given)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C or SIGTERM); nothing was written at the output path",
}


class FacefuseError(Exception):
    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class InputMissing(FacefuseError):
    exit_code = ExitCode.INPUT_MISSING


class InputInvalid(FacefuseError):
    exit_code = ExitCode.INPUT_INVALID


class TooManyPixels(FacefuseError):
    exit_code = ExitCode.TOO_MANY_PIXELS


class NoSourceFace(FacefuseError):
    exit_code = ExitCode.NO_SOURCE_FACE


class NoTargetFace(FacefuseError):
    exit_code = ExitCode.NO_TARGET_FACE


class OutputIsInput(FacefuseError):
    exit_code = ExitCode.OUTPUT_IS_INPUT


class OutputDirMissing(FacefuseError):
    exit_code = ExitCode.OUTPUT_DIR_MISSING


class OutputWriteFailed(FacefuseError):
    exit_code = ExitCode.OUTPUT_WRITE_FAILED


class NoMatch(FacefuseError):
    exit_code = ExitCode.NO_MATCH


class NoVideoStream(FacefuseError):
    exit_code = ExitCode.NO_VIDEO_STREAM


class EmptyVideo(FacefuseError):
    exit_code = ExitCode.EMPTY_VIDEO


class ResumeMismatch(FacefuseError):
    exit_code = ExitCode.RESUME_MISMATCH


class Interrupted(FacefuseError):
    exit_code = ExitCode.INTERRUPTED


class ModelError(FacefuseError):
    """Base of the model-zoo errors; each subclass has its own exit code."""


class ModelMissing(ModelError):
    exit_code = ExitCode.MODEL_MISSING


class ModelHashMismatch(ModelError):
    exit_code = ExitCode.MODEL_HASH_MISMATCH


class ModelCorrupt(ModelError):
    exit_code = ExitCode.MODEL_CORRUPT


class UnknownModel(ModelError):
    exit_code = ExitCode.MODEL_UNKNOWN


class ModelDownloadFailed(ModelError):
    exit_code = ExitCode.MODEL_DOWNLOAD_FAILED


class ModelUnsupported(ModelError):
    exit_code = ExitCode.MODEL_UNSUPPORTED


class BackendUnavailable(ModelError):
    exit_code = ExitCode.BACKEND_UNAVAILABLE


class ServiceConfigError(FacefuseError):
    exit_code = ExitCode.SERVICE_CONFIG


class ServiceDataDirError(FacefuseError):
    exit_code = ExitCode.SERVICE_DATA_DIR


class ServiceStartError(FacefuseError):
    exit_code = ExitCode.SERVICE_START


class ScaleConfigError(FacefuseError):
    exit_code = ExitCode.SCALE_CONFIG


class BrokerUnreachable(FacefuseError):
    exit_code = ExitCode.BROKER_UNREACHABLE


class StorageUnreachable(FacefuseError):
    exit_code = ExitCode.STORAGE_UNREACHABLE


class NoCamera(FacefuseError):
    exit_code = ExitCode.NO_CAMERA


class VirtualCameraUnavailable(FacefuseError):
    exit_code = ExitCode.VIRTUAL_CAMERA_UNAVAILABLE


class WindowUnavailable(FacefuseError):
    exit_code = ExitCode.WINDOW_UNAVAILABLE


class ControlUnavailable(FacefuseError):
    exit_code = ExitCode.CONTROL_UNAVAILABLE


class CameraLost(FacefuseError):
    exit_code = ExitCode.CAMERA_LOST
