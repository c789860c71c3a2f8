"""FaceAnalyser: one object holding the loaded analysis models, turning an image into `Face`s."""

from __future__ import annotations

import numpy as np

from facefuse.analysis.detect import Detection, DetectorSettings, HogDetector
from facefuse.analysis.face import Face
from facefuse.analysis.landmarks import ShapePredictor68, head_pose, sharpness
from facefuse.analysis.recognise import DlibRecogniser
from facefuse.geometry import five_from_68
from facefuse.models.builtin import builtin_paths


class FaceAnalyser:
    """Loads the built-in models once; every call reuses them."""

    def __init__(self, detector: DetectorSettings | None = None) -> None:
        paths = builtin_paths()
        self.detector = HogDetector(detector)
        self.landmarks = ShapePredictor68(paths.landmarks_68)
        self._recogniser: DlibRecogniser | None = None
        self._recognition_path = paths.recognition

    @property
    def recogniser(self) -> DlibRecogniser:
        # Loaded on first use: many runs (mode `one`, no reference) never need identity.
        if self._recogniser is None:
            self._recogniser = DlibRecogniser(self._recognition_path)
        return self._recogniser

    def analyse(
        self, image: np.ndarray, *, largest_only: bool = False, descriptors: bool = False
    ) -> list[Face]:
        """Every face in an RGB uint8 image (only the largest when `largest_only`), largest first."""
        image = np.ascontiguousarray(image)
        faces = [self.face_at(image, det) for det in self.detector.detect(image, largest_only=largest_only)]
        faces.sort(key=lambda f: f.area, reverse=True)
        if largest_only:
            faces = faces[:1]
        if descriptors:
            for face in faces:
                self.describe(image, face)
        return faces

    def face_at(self, image: np.ndarray, detection: Detection) -> Face:
        """A `Face` for one detection: its 68 points and what follows from them (no descriptor)."""
        points = self.landmarks(image, detection.box)
        return Face(
            box=detection.box,
            score=detection.score,
            landmarks_68=points,
            landmarks_5=five_from_68(points),
            pose=head_pose(points, image.shape),
            sharpness=sharpness(image, points),
        )

    def describe(self, image: np.ndarray, face: Face) -> np.ndarray:
        """Fill in (and return) the face's identity descriptor."""
        if face.descriptor is None:
            face.descriptor = self.recogniser(np.ascontiguousarray(image), face.box, face.landmarks_68)
        return face.descriptor
