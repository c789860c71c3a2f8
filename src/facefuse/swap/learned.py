"""What every learned swapper shares: align the target to the model's template, run, paste back.

A model sees a square crop with the face's 5 points on its training template. The crop is warped
out with edge pixels repeated (a face at the frame border still gets a full crop), the result goes
back through the inverse transform, blended through the combined crop masks. Only the footprint of
the crop is touched, and every pixel where the mask is 0 keeps the frame's exact value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from facefuse.analysis.face import Face
from facefuse.geometry import paste_back, paste_change, warp_crop
from facefuse.masks.combine import MaskSet
from facefuse.swap.pixel_boost import boosted


def swap_crop(
    frame: np.ndarray,
    target: Face,
    run: Callable[[np.ndarray], np.ndarray],
    *,
    template: str,
    model_size: int,
    crop_size: int,
    masks: MaskSet,
    keep_detail: bool = True,
) -> np.ndarray:
    """The shared chain: crop at `crop_size` (pixel boost when larger than the model), run, mask, paste.

    `keep_detail` pastes the model's change rather than its output (see geometry.paste_change), so the
    frame's detail finer than the crop survives; off, the output replaces the face as in FaceFusion.
    """
    if crop_size % model_size:
        raise ValueError(f"pixel boost {crop_size} is not a multiple of the model's {model_size}")
    crop, m = warp_crop(frame, target.landmarks_5, template, crop_size)
    before = masks.before(crop)
    swapped = boosted(run, crop, model_size)
    mask = masks.combine(before + masks.after(swapped), crop_size)
    if keep_detail:
        return paste_change(frame, crop, swapped, m, mask)
    return paste_back(frame, swapped, m, mask)


def to_rgb_uint8(x: np.ndarray) -> np.ndarray:
    """CHW float in [0, 1] -> HWC uint8, rounded."""
    return (np.clip(np.asarray(x, np.float32).transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
