"""XSeg occlusion mask: where the face is visible (hands, hair, glasses in front of it are not)."""

from __future__ import annotations

import cv2
import numpy as np

from facefuse.models.onnx_io import SessionLike, TensorSpec, bind_inputs, check_outputs


def soften(mask: np.ndarray) -> np.ndarray:
    """Blur, then stretch the upper half to [0, 1]: a soft edge that stays inside the predicted face."""
    return ((cv2.GaussianBlur(mask.clip(0, 1), (0, 0), 5).clip(0.5, 1) - 0.5) * 2).astype(np.float32)


class XSegOccluder:
    """DeepFaceLab's XSeg: NHWC [1,256,256,3] BGR in [0,1] -> (256,256,1) visible-face probability."""

    name = "occlusion"

    def __init__(self, session: SessionLike, model: str = "xseg") -> None:
        self.session = session
        port = bind_inputs(session, model, {"input": TensorSpec((None, None, None, 3))})["input"]
        check_outputs(session, model, (1, 2))
        self._input = port.name
        self.size = port.shape[1] or 256

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        """float32 mask at the crop's size for an RGB uint8 crop."""
        h, w = crop.shape[:2]
        x = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)[..., ::-1]
        x = (x.astype(np.float32) / 255.0)[None]
        out = np.asarray(self.session.run(None, {self._input: x})[0])[0]
        out = out.reshape(self.size, self.size).astype(np.float32)
        return soften(cv2.resize(out.clip(0, 1), (w, h), interpolation=cv2.INTER_LINEAR))
