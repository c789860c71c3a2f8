"""What every learned swapper shares: align the target to the model's template, run, paste back.

A model sees a square crop with the face's 5 points on its training template. The crop is warped
out with edge pixels repeated (a face at the frame border still gets a full crop), the result goes
back through the inverse transform, blended through the combined crop masks. Only the footprint of
the crop is touched, and every pixel where the mask is 0 keeps the frame's exact value.

The chain is split in three so that faces from several frames can share one model call (the GPU
backend is only fast at batch 16-64): `begin_crop` (warp, masks that look at the target), the
model on every face's phases at once, then `finish_crop` (masks that look at the result, paste).
`swap_crop` runs the three for one face; both routes give the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from facefuse.analysis.face import Face
from facefuse.geometry import paste_back, paste_change, warp_crop
from facefuse.masks.combine import MaskSet
from facefuse.swap.base import SourceFace
from facefuse.swap.pixel_boost import explode, implode


@dataclass
class PendingCrop:
    """One face between `begin_crop` and `finish_crop`: its crop, transform and the model's inputs."""

    crop: np.ndarray  # RGB uint8 (crop_size, crop_size, 3)
    matrix: np.ndarray  # frame -> crop affine
    before: list[np.ndarray]  # masks computed from the target crop
    phases: np.ndarray  # (n^2, model_size, model_size, 3) uint8: the pixel-boost sub-crops (n = 1: the crop)
    latent: np.ndarray | None = None  # the source identity the model gets with every phase


def begin_crop(
    frame: np.ndarray, target: Face, *, template: str, model_size: int, crop_size: int, masks: MaskSet
) -> PendingCrop:
    if crop_size % model_size:
        raise ValueError(f"pixel boost {crop_size} is not a multiple of the model's {model_size}")
    crop, m = warp_crop(frame, target.landmarks_5, template, crop_size)
    n = crop_size // model_size
    phases = crop[None] if n == 1 else explode(crop, n)
    return PendingCrop(crop, m, masks.before(crop), phases)


def finish_crop(
    frame: np.ndarray, pending: PendingCrop, swapped_phases: np.ndarray, *, masks: MaskSet, keep_detail: bool
) -> np.ndarray:
    """Interleave the model's phases back, combine the masks and paste (see `swap_crop`)."""
    n = int(round(np.sqrt(len(swapped_phases))))
    swapped = swapped_phases[0] if n == 1 else implode(swapped_phases, n)
    size = pending.crop.shape[0]
    mask = masks.combine(pending.before + masks.after(swapped), size)
    if keep_detail:
        return paste_change(frame, pending.crop, swapped, pending.matrix, mask)
    return paste_back(frame, swapped, pending.matrix, mask)


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
    pending = begin_crop(
        frame, target, template=template, model_size=model_size, crop_size=crop_size, masks=masks
    )
    swapped = np.stack([run(p) for p in pending.phases])
    return finish_crop(frame, pending, swapped, masks=masks, keep_detail=keep_detail)


def to_rgb_uint8(x: np.ndarray) -> np.ndarray:
    """CHW float in [0, 1] -> HWC uint8, rounded; an NCHW batch -> NHWC."""
    x = np.asarray(x, np.float32)
    axes = (1, 2, 0) if x.ndim == 3 else (0, 2, 3, 1)
    return (np.clip(x.transpose(axes), 0, 1) * 255 + 0.5).astype(np.uint8)


class BatchSwapper(Protocol):
    """A learned swapper whose model calls can be shared by many faces (see FrameSwapper.process_batch)."""

    def begin(self, frame: np.ndarray, target: Face, source: SourceFace) -> PendingCrop: ...

    def run_batch(self, pending: Sequence[PendingCrop]) -> list[np.ndarray]: ...

    def finish(self, frame: np.ndarray, pending: PendingCrop, swapped_phases: np.ndarray) -> np.ndarray: ...


class LearnedSwapper:
    """The begin / run_batch / finish chain for a model with `(N,3,S,S) + (N,512) -> (N,3,S,S)` calls.

    Subclasses set template, model_size, crop_size, masks, keep_detail and implement `_inputs` (uint8
    NHWC phases -> the model's float NCHW input) and `_net` (one batched model call -> NCHW in [0, 1]).
    """

    template: str
    model_size: int
    crop_size: int
    masks: MaskSet
    keep_detail: bool

    def _inputs(self, phases: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _net(self, target: np.ndarray, latent: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def begin(self, frame: np.ndarray, target: Face, source: SourceFace) -> PendingCrop:
        if source.latent is None:
            raise ValueError("this source was prepared by another swapper; prepare it with this one")
        pending = begin_crop(
            frame,
            target,
            template=self.template,
            model_size=self.model_size,
            crop_size=self.crop_size,
            masks=self.masks,
        )
        pending.latent = np.asarray(source.latent, np.float32)
        return pending

    def run_batch(self, pending: Sequence[PendingCrop]) -> list[np.ndarray]:
        """Every phase of every face through one model call; per face, its swapped phases (uint8 NHWC)."""
        if not pending:
            return []
        phases = np.concatenate([p.phases for p in pending])
        latents = np.concatenate([np.repeat(p.latent[None], len(p.phases), axis=0) for p in pending])
        out = to_rgb_uint8(self._net(self._inputs(phases), latents))
        bounds = np.cumsum([len(p.phases) for p in pending])[:-1]
        return np.split(out, bounds)

    def finish(self, frame: np.ndarray, pending: PendingCrop, swapped_phases: np.ndarray) -> np.ndarray:
        return finish_crop(frame, pending, swapped_phases, masks=self.masks, keep_detail=self.keep_detail)

    def swap(self, frame: np.ndarray, target: Face, source: SourceFace) -> np.ndarray:
        pending = self.begin(frame, target, source)
        return self.finish(frame, pending, self.run_batch([pending])[0])
