"""Several crop masks combined: a pixel shows the new face only where every enabled mask allows it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from facefuse.masks.box import box_mask

MASK_TYPES = ("box", "occlusion", "region")

CropMask = Callable[[np.ndarray], np.ndarray]  # RGB uint8 crop -> float32 mask of its size


@dataclass
class MaskSet:
    """The masks a learned model pastes back through. `box` is geometric; the others look at pixels.

    The occluder looks at the target crop (what covers the face there must stay); the region parser
    looks at the swapped crop (the new face's own regions), as FaceFusion does.
    """

    box: bool = True
    blur: float = 0.3
    padding: tuple[float, float, float, float] = (0, 0, 0, 0)
    occluders: Sequence[CropMask] = field(default_factory=tuple)
    parsers: Sequence[CropMask] = field(default_factory=tuple)

    def before(self, crop: np.ndarray) -> list[np.ndarray]:
        size = crop.shape[0]
        masks = [box_mask(size, self.blur, self.padding)] if self.box else []
        return masks + [m(crop) for m in self.occluders]

    def after(self, swapped: np.ndarray) -> list[np.ndarray]:
        return [m(swapped) for m in self.parsers]

    def combine(self, masks: list[np.ndarray], size: int) -> np.ndarray:
        if not masks:
            return np.ones((size, size), np.float32)
        return np.minimum.reduce(masks).clip(0, 1).astype(np.float32)
