"""FaceAnalyser: one object holding the loaded analysis models, turning an image into `Face`s.

The detector, landmarker and recogniser are pluggable (small Protocols in detect.py, landmarks.py,
recognise.py); the default is the built-in dlib stack (HOG detector, 68-point shape predictor,
128-D ResNet descriptors), and the learned ones (SCRFD, YuNet, 2DFAN4, ArcFace) mix in freely.
"""

from __future__ import annotations

import numpy as np

from facefuse.analysis.detect import Detection, Detector, DetectorSettings, HogDetector
from facefuse.analysis.face import Face
from facefuse.analysis.landmarks import (
    Landmarker,
    ShapePredictor68,
    detector_box_from_five,
    sharpness,
)
from facefuse.analysis.recognise import DlibRecogniser, Recogniser
from facefuse.geometry import five_from_68
from facefuse.models.builtin import builtin_paths

# Below this landmarker confidence the detector's own 5 points align the face (FaceFusion's rule).
LANDMARK_SCORE = 0.5


class FaceAnalyser:
    """Loads its models once; every call reuses them."""

    def __init__(
        self,
        detector: DetectorSettings | Detector | None = None,
        *,
        landmarker: Landmarker | None = None,
        recogniser: Recogniser | None = None,
    ) -> None:
        paths = builtin_paths()
        if detector is None or isinstance(detector, DetectorSettings):
            detector = HogDetector(detector)
        self.detector: Detector = detector
        self.landmarks: Landmarker = landmarker or ShapePredictor68(paths.landmarks_68)
        self._recogniser = recogniser
        self._recognition_path = paths.recognition

    @property
    def recogniser(self) -> Recogniser:
        # The built-in one loads on first use: many runs (mode `one`, no reference) never need identity.
        if self._recogniser is None:
            self._recogniser = DlibRecogniser(self._recognition_path)
        return self._recogniser

    @property
    def same_person(self) -> float:
        """The recogniser's own reference distance (dlib 0.6 on 128-D; ArcFace 1.10 on unit 512-D)."""
        return (self._recogniser or DlibRecogniser).same_person

    @property
    def same_track(self) -> float:
        return (self._recogniser or DlibRecogniser).same_track

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
        kps = detection.landmarks_5
        box = detection.box
        if kps is not None and isinstance(self.landmarks, ShapePredictor68):
            box = detector_box_from_five(kps)
        points, score = self.landmarks.fit(image, box)
        # A learned detector's keypoints are what the zoo's models were aligned with in training;
        # a confident 68-point fit is steadier, so it wins where there is one.
        five = kps if kps is not None and (score is None or score < LANDMARK_SCORE) else five_from_68(points)
        return Face(
            box=detection.box,
            score=detection.score,
            landmarks_68=points,
            landmarks_5=np.asarray(five, np.float32),
            image_size=image.shape[:2],
            sharpness=sharpness(image, points),
        )

    def describe(self, image: np.ndarray, face: Face) -> np.ndarray:
        """Fill in (and return) the face's identity descriptor."""
        if face.descriptor is None:
            face.descriptor = self.recogniser.describe(np.ascontiguousarray(image), face)
        return face.descriptor
