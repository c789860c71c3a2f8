"""Face detection with dlib's HOG detector, run coarse-to-fine so big faces cost little.

dlib's HOG window is 80 px: at detection scale s it finds faces of 80/s px and larger. One run at
the finest scale finds everything, but costs in proportion to its pixels, so a caller who wants only
the largest face first tries a coarse scale and stops as soon as that finds one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from typing import Protocol

import cv2
import dlib
import numpy as np

from facefuse.fsutil import private_dir

HOG_WINDOW = 80


@dataclass(frozen=True)
class Detection:
    box: np.ndarray  # x0, y0, x1, y1 in image pixels (float32)
    score: float
    landmarks_5: np.ndarray | None = None  # (5, 2) eyes, nose, mouth corners, where the detector gives them


class Detector(Protocol):
    """What FaceAnalyser and the tracker need from a detector."""

    name: str
    # The threshold for a check where a face is already expected (the tracker's crop check): lenient.
    lenient: float
    # `run` takes a grey (H, W) image as well as RGB, and is cheaper on it: the tracker's full-frame
    # passes, every few frames, then hand it grey.
    takes_grey: bool

    def detect(self, image: np.ndarray, largest_only: bool = False) -> list[Detection]: ...

    def run(self, image: np.ndarray, scale: float, threshold: float | None = None) -> list[Detection]: ...


@dataclass(frozen=True)
class DetectorSettings:
    min_face: int = 40  # smallest face (px) to find when every face is wanted
    coarse_size: int = 640  # long side of the first, cheap pass
    max_size: int = 2000  # never upsample past this long side: cost grows with area
    threshold: float = 0.0  # dlib margin; raise it to trade recall for fewer false faces


class HogDetector:
    name = "hog"
    lenient = -0.5  # dlib SVM margin
    # dlib's HOG takes the strongest of the three colour gradients; on grey it costs a fifth less and
    # found the same faces in every shared photo and clip, but with boxes a little apart and a more
    # lenient margin on half faces: the still-image path (one detection places the landmarks) and
    # the tracker's crop check (a half face leaving the picture must fail it) stay on colour.
    takes_grey = True

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()
        self._detector = frontal_detector()

    def scales(self, shape: tuple[int, ...]) -> list[float]:
        """Detection scales from coarse to fine; the last reaches `min_face` (within `max_size`)."""
        long_side = max(shape[:2])
        st = self.settings
        coarse = min(1.0, st.coarse_size / long_side)
        fine = max(coarse, min(HOG_WINDOW / st.min_face, st.max_size / long_side))
        levels = [coarse]
        while levels[-1] * 2 < fine * 0.95:
            levels.append(levels[-1] * 2)
        if fine > levels[-1] * 1.05:
            levels.append(fine)
        return levels

    def detect(self, image: np.ndarray, largest_only: bool = False) -> list[Detection]:
        levels = self.scales(image.shape)
        if not largest_only:
            levels = levels[-1:]
        for scale in levels:
            found = self.run(image, scale)
            if found:
                return found
        return []

    def run(self, image: np.ndarray, scale: float, threshold: float | None = None) -> list[Detection]:
        """One pass at one scale (boxes in `image` pixels); `threshold` overrides the settings' margin.

        `image`: RGB (H, W, 3) or grey (H, W) uint8."""
        if threshold is None:
            threshold = self.settings.threshold
        if abs(scale - 1.0) < 1e-3:
            scaled = image
        else:
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            scaled = cv2.resize(image, None, fx=scale, fy=scale, interpolation=interp)
        rects, scores, _ = self._detector.run(np.ascontiguousarray(scaled), 0, threshold)
        out = []
        for rect, score in zip(rects, scores, strict=True):
            box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32) / scale
            out.append(Detection(box=box, score=float(score)))
        return out


def frontal_detector() -> dlib.fhog_object_detector:
    """dlib's frontal HOG face detector, loaded from a copy saved in the user's cache.

    Building it (`dlib.get_frontal_face_detector`) parses a form compiled into dlib and took 0.23 s
    of every CLI run's start; the saved binary loads in 1 ms and detects the same boxes. The copy is
    named by dlib's version; one that fails to load is rebuilt and saved again (atomically, so a
    second process never reads half a file), and a cache folder that cannot be written is skipped.
    """
    try:
        path = private_dir("detectors") / f"dlib-{dlib.__version__}-frontal.svm"
    except (OSError, RuntimeError):  # RuntimeError: no home folder to be found (a bare container)
        return dlib.get_frontal_face_detector()
    if path.is_file():
        # A damaged copy can fail in dlib's loader in several ways (RuntimeError, ValueError,
        # MemoryError from a wild length); any of them means: build it again.
        with contextlib.suppress(Exception):
            return dlib.fhog_object_detector(str(path))
    detector = dlib.get_frontal_face_detector()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        detector.save(tmp)
        os.replace(tmp, path)
    except (RuntimeError, OSError):  # a full disk or a read-only cache: run without the copy
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return detector
