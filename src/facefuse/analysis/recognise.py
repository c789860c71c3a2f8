"""128-D identity descriptors from dlib's ResNet (face-recognition-models); ~70 ms a face on a CPU."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import dlib
import numpy as np

from facefuse.analysis.face import Face

# dlib's own rule of thumb for this descriptor: under 0.6 is usually the same person.
SAME_PERSON = 0.6


class Recogniser(Protocol):
    """Identity descriptors. Distances are Euclidean; each recogniser says what distance is one person."""

    name: str
    same_person: float  # the default reference distance
    same_track: float  # a new track this close to a lost one takes back its id

    def describe(self, image: np.ndarray, face: Face) -> np.ndarray: ...


class DlibRecogniser:
    name = "dlib"
    same_person = SAME_PERSON
    same_track = 0.5

    def __init__(self, model_path: Path) -> None:
        self._model = dlib.face_recognition_model_v1(str(model_path))

    def describe(self, image: np.ndarray, face: Face) -> np.ndarray:
        return self(image, face.box, face.landmarks_68)

    def __call__(self, image: np.ndarray, box: np.ndarray, points: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        parts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in points])
        shape = dlib.full_object_detection(dlib.rectangle(x0, y0, x1, y1), parts)
        return np.asarray(self._model.compute_face_descriptor(image, shape), np.float32)


def mean_descriptor(descriptors: Sequence[np.ndarray]) -> np.ndarray:
    """Averaging several photos of one person gives a steadier identity than any single one."""
    return np.mean(np.stack(descriptors), axis=0).astype(np.float32)
