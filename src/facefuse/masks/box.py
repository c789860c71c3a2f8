"""The box mask: a square crop with its border faded out, the default paste-back mask of learned models."""

from __future__ import annotations

import cv2
import numpy as np


def box_mask(
    size: int, blur: float = 0.3, padding: tuple[float, float, float, float] = (0, 0, 0, 0)
) -> np.ndarray:
    """float32 (size, size) in [0, 1]: zero on a border, Gaussian-faded inwards (FaceFusion's numbers).

    `blur` is the fade width as a fraction of half the crop (0.3: 19 px sigma at 512, 4.75 at 128);
    `padding` (top, right, bottom, left, in percent of the crop) cuts further in on each side.
    """
    blur_amount = int(size * 0.5 * blur)
    blur_area = max(blur_amount // 2, 1)
    mask = np.ones((size, size), np.float32)
    top, right, bottom, left = (int(size * p / 100) for p in padding)
    mask[: max(blur_area, top), :] = 0
    mask[-max(blur_area, bottom) :, :] = 0
    mask[:, : max(blur_area, left)] = 0
    mask[:, -max(blur_area, right) :] = 0
    if blur_amount > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), blur_amount * 0.25)
    return mask
