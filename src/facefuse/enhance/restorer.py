"""GFPGAN, CodeFormer and GPEN-BFR: restore a face crop, paste it back, blend it in by an amount.

All three see the face on the ffhq_512 template at the model's size (512 for GFPGAN 1.4 and
CodeFormer; 256/512/1024 for GPEN-BFR), RGB, (x / 255 - 0.5) / 0.5, NCHW; their output is in
[-1, 1]. The result goes back through a box mask (the same numbers as the swappers') and is mixed
with the frame by `blend` (0..1; FaceFusion's default is 0.8).

CodeFormer takes a second input, the fidelity weight w (shape (1,), float64): 0 is the codebook's
own face (most restored), 1 keeps most of the input's features.
"""

from __future__ import annotations

import numpy as np

from facefuse.analysis.face import Face
from facefuse.geometry import paste_back, warp_crop
from facefuse.masks.combine import MaskSet
from facefuse.models.onnx_io import SessionLike, TensorSpec, bind_inputs, check_outputs

FAMILIES = ("gfpgan", "codeformer", "gpen")
TEMPLATE = "ffhq_512"


class FaceEnhancer:
    digital_source_type = "trainedAlgorithmicMedia"

    def __init__(
        self,
        session: SessionLike,
        family: str,
        *,
        blend: float = 0.8,
        fidelity: float = 0.5,
        masks: MaskSet | None = None,
        name: str | None = None,
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown enhancer family {family!r}; choose from {', '.join(FAMILIES)}")
        if not 0.0 <= blend <= 1.0 or not 0.0 <= fidelity <= 1.0:
            raise ValueError("enhancer blend and CodeFormer fidelity must lie in 0..1")
        self.name = name or family
        self.family = family
        wanted = {"input": TensorSpec((None, 3, None, None))}
        aliases = {"input": ("x", "input.1")}
        if family == "codeformer":
            wanted["weight"] = TensorSpec((1,), np.float64)
            aliases["weight"] = ("w",)
        ports = bind_inputs(session, self.name, wanted, aliases)
        check_outputs(session, self.name, (1, 2, 3))
        self.session = session
        self._input = ports["input"].name
        self._weight = ports["weight"].name if "weight" in ports else None
        self.size = ports["input"].shape[2] or 512
        self.blend = blend
        self.fidelity = fidelity
        self.masks = masks or MaskSet()

    def restore(self, crop: np.ndarray) -> np.ndarray:
        """One aligned RGB uint8 crop at the model's size -> the restored crop."""
        x = ((crop.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
        feed = {self._input: x}
        if self._weight is not None:
            feed[self._weight] = np.array([self.fidelity], np.float64)
        y = np.asarray(self.session.run(None, feed)[0], np.float32)[0]
        y = (np.clip(y, -1, 1) + 1) / 2 * 255
        return (y.transpose(1, 2, 0) + 0.5).astype(np.uint8)

    def enhance(self, frame: np.ndarray, face: Face) -> np.ndarray:
        """A new frame with this face restored; pixels outside its crop footprint stay bit-identical."""
        if self.blend <= 0:
            return frame
        crop, m = warp_crop(frame, face.landmarks_5, TEMPLATE, self.size)
        before = self.masks.before(crop)
        restored = self.restore(crop)
        mask = self.masks.combine(before + self.masks.after(restored), self.size) * np.float32(self.blend)
        return paste_back(frame, restored, m, mask)
