"""68-point landmarks (dlib's regression-tree shape predictor, ~1 ms a face) and what follows from them."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import dlib
import numpy as np

from facefuse.geometry import ARCFACE_112, TEMPLATE_68, five_from_68, similarity, transform_points

# Where dlib's HOG detector puts its box relative to the 68 points, in template units (eye
# distances; TEMPLATE_68's frame): the median over the test photos and the Hamilton clip. The shape
# predictor was trained on such boxes, so boxes placed like this give it the input it expects.
DETECTOR_BOX_CENTRE = np.array([0.0, 0.355], np.float32)
DETECTOR_BOX_SIZE = 1.78


def detector_box(points: np.ndarray) -> np.ndarray:
    """The box dlib's detector would most likely give a face with these landmarks (x0, y0, x1, y1)."""
    m = similarity(TEMPLATE_68, points)
    centre = transform_points(DETECTOR_BOX_CENTRE[None], m)[0]
    half = 0.5 * DETECTOR_BOX_SIZE * float(np.hypot(m[0, 0], m[1, 0]))
    return np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half], np.float32)


def detector_box_from_five(five: np.ndarray) -> np.ndarray:
    """The same box placed from 5 points (a learned detector's keypoints), for dlib's shape predictor:
    it was trained on HOG boxes, and another detector's boxes sit differently on the face."""
    m = similarity(five_from_68(TEMPLATE_68), five)
    centre = transform_points(DETECTOR_BOX_CENTRE[None], m)[0]
    half = 0.5 * DETECTOR_BOX_SIZE * float(np.hypot(m[0, 0], m[1, 0]))
    return np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half], np.float32)


class Landmarker(Protocol):
    """68 points for the face in a box; `fit` adds a confidence in [0, 1] (None: the model has none)."""

    name: str

    def __call__(self, image: np.ndarray, box: np.ndarray) -> np.ndarray: ...

    def fit(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float | None]: ...


class ShapePredictor68:
    name = "dlib"

    def __init__(self, model_path: Path) -> None:
        self._predictor = dlib.shape_predictor(str(model_path))

    def fit(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float | None]:
        return self(image, box), None

    def __call__(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        shape = self._predictor(image, dlib.rectangle(x0, y0, x1, y1))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def sharpness(image: np.ndarray, points: np.ndarray) -> float:
    """Fine-detail energy of the face at a fixed 128 px size, relative to its contrast.

    Measuring at a common size makes an upscaled small face score low and a large sharp one high,
    which is what choosing the best source face needs.
    """
    m = similarity(five_from_68(points), ARCFACE_112 * (128 / 112))
    crop = cv2.warpAffine(image, m, (128, 128), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    g = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)[16:112, 16:112]
    fine = np.abs(g - cv2.GaussianBlur(g, (0, 0), 1.0)).mean()
    return float(100.0 * fine / (g.std() + 1.0))
