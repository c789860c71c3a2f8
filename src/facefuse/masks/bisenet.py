"""BiSeNet face parser: a mask of chosen face regions (skin, brows, eyes, glasses, nose, mouth, lips)."""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from facefuse.masks.xseg import soften
from facefuse.models.onnx_io import SessionLike, TensorSpec, bind_inputs, check_outputs

# CelebAMask-HQ classes the parser predicts, by the names the CLI takes.
REGIONS = {
    "skin": 1,
    "left-eyebrow": 2,
    "right-eyebrow": 3,
    "left-eye": 4,
    "right-eye": 5,
    "glasses": 6,
    "nose": 10,
    "mouth": 11,
    "upper-lip": 12,
    "lower-lip": 13,
}
# Ears, neck, cloth, hair and hat are never swapped: the default is the face itself.
DEFAULT_REGIONS = tuple(REGIONS)

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def region_ids(names: Iterable[str]) -> np.ndarray:
    ids = []
    for name in names:
        if name not in REGIONS:
            raise ValueError(f"unknown face region {name!r}; choose from {', '.join(REGIONS)}")
        ids.append(REGIONS[name])
    return np.array(sorted(set(ids)), np.int64)


class BiSeNetParser:
    """[1,3,512,512] RGB ImageNet-normalised -> (1,19,512,512) logits; the mask is the chosen classes."""

    name = "region"

    def __init__(
        self, session: SessionLike, regions: Iterable[str] = DEFAULT_REGIONS, model: str = "bisenet"
    ) -> None:
        self.session = session
        port = bind_inputs(session, model, {"input": TensorSpec((None, 3, None, None))})["input"]
        check_outputs(session, model, (1, 2, 3))
        self._input = port.name
        self.size = port.shape[2] or 512
        self.ids = region_ids(regions)

    def classes(self, crop: np.ndarray) -> np.ndarray:
        """The class index of every pixel at the parser's size (int64)."""
        x = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        x = ((x - _MEAN) / _STD).transpose(2, 0, 1)[None].astype(np.float32)
        logits = np.asarray(self.session.run(None, {self._input: x})[0])[0]
        return logits.argmax(axis=0)

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        h, w = crop.shape[:2]
        inside = np.isin(self.classes(crop), self.ids).astype(np.float32)
        return soften(cv2.resize(inside, (w, h), interpolation=cv2.INTER_LINEAR))
