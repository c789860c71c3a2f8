"""2DFAN4 68-point landmarks (FaceFusion's 2dfan4.onnx): a heatmap network on a 256 px box crop.

Crop: the detector box scaled so its longer side is 195 px and centred in 256 x 256. Input 'input'
[1,3,256,256]: the crop / 255 in BGR order; a dark crop (mean Lab lightness < 30) gets CLAHE on its
lightness first. Outputs: [0] (1,68,3) points in the 64 x 64 heatmap frame (x, y, -), [1] the
heatmaps (1,68,64,64). Points are scaled by 256/64 and mapped back through the inverse crop. The
score is the mean of each heatmap's peak, mapped from [0, 0.9] onto [0, 1].
"""

from __future__ import annotations

import cv2
import numpy as np

from facefuse.geometry import invert, transform_points
from facefuse.models.onnx_io import SessionLike, TensorSpec, bind_inputs, check_outputs

CROP = 256
BOX_SIDE = 195.0


def box_matrix(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = (float(v) for v in box)
    scale = BOX_SIDE / max(x2 - x1, y2 - y1, 1.0)
    tx, ty = (CROP - (x1 + x2) * scale) * 0.5, (CROP - (y1 + y2) * scale) * 0.5
    return np.array([[scale, 0, tx], [0, scale, ty]], np.float32)


def lift_dark(crop_bgr: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2LAB)
    if lab[:, :, 0].mean() < 30:
        lab[:, :, 0] = cv2.createCLAHE(clipLimit=2).apply(lab[:, :, 0])
        return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    return crop_bgr


class Fan68Landmarker:
    name = "2dfan4"

    def __init__(self, session: SessionLike, model: str = "2dfan4") -> None:
        self.session = session
        self._input = bind_inputs(session, model, {"input": TensorSpec((None, 3, CROP, CROP))})["input"].name
        check_outputs(session, model, 2)

    def fit(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]:
        """(68 points in image pixels, confidence in [0, 1]) for the face in `box` of an RGB image."""
        m = box_matrix(box)
        crop = cv2.warpAffine(image, m, (CROP, CROP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        crop = lift_dark(np.ascontiguousarray(crop[..., ::-1]))
        x = (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        points, heatmaps = self.session.run(None, {self._input: x})[:2]
        pts = np.asarray(points, np.float32).reshape(68, -1)[:, :2] / 64.0 * CROP
        peaks = np.asarray(heatmaps, np.float32).reshape(68, -1).max(axis=1)
        score = float(np.interp(peaks.mean(), [0.0, 0.9], [0.0, 1.0]))
        return transform_points(pts, invert(m)), score

    def __call__(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        return self.fit(image, box)[0]
