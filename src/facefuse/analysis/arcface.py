"""ArcFace w600k_r50 (InsightFace buffalo_l): 512-D identity embeddings, compared by cosine.

Crop: the 5 points on the arcface_112_v2 template at 112 px, RGB, (x - 127.5) / 127.5, NCHW. The
network ends in BatchNorm, so its output is not unit length: the descriptor is `e / |e|`. On unit
vectors the Euclidean distance the rest of facefuse uses is sqrt(2 - 2 cos), so one threshold
maps onto the other: InsightFace/FaceFusion call cos > 0.4 the same person, i.e. distance < 1.10.
"""

from __future__ import annotations

import numpy as np

from facefuse.analysis.face import Face
from facefuse.geometry import warp_crop
from facefuse.models.onnx_io import SessionLike, TensorSpec, bind_inputs, check_outputs

# sqrt(2 - 2 * 0.4): FaceFusion's default reference distance 0.3 on its (1 - cos) / 2 scale.
ARCFACE_SAME_PERSON = 1.10
# A newborn track this close to a lost one is the same person (cos > 0.5): stricter than matching.
ARCFACE_SAME_TRACK = 1.0


def embedding_crop(image: np.ndarray, five: np.ndarray, size: int = 112) -> np.ndarray:
    return warp_crop(image, five, "arcface_112_v2", size)[0]


class ArcFaceRecogniser:
    name = "arcface_w600k_r50"
    same_person = ARCFACE_SAME_PERSON
    same_track = ARCFACE_SAME_TRACK

    def __init__(self, session: SessionLike, model: str = "arcface_w600k_r50") -> None:
        self.session = session
        wanted = {"input": TensorSpec((None, 3, 112, 112))}
        port = bind_inputs(session, model, wanted, {"input": ("input.1",)})["input"]
        outs = check_outputs(session, model, 1)
        if outs[0].shape and outs[0].shape[-1] not in (None, 512):
            raise_mismatch(model, outs[0].shape)
        self._input = port.name

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Raw embeddings (N, 512) of aligned RGB uint8 crops (N, 112, 112, 3)."""
        x = (crops.astype(np.float32) - 127.5) / 127.5
        return np.asarray(self.session.run(None, {self._input: x.transpose(0, 3, 1, 2)})[0], np.float32)

    def raw(self, image: np.ndarray, five: np.ndarray) -> np.ndarray:
        return self.embed(embedding_crop(image, five)[None])[0]

    def describe(self, image: np.ndarray, face: Face) -> np.ndarray:
        e = self.raw(image, face.landmarks_5)
        return (e / max(float(np.linalg.norm(e)), 1e-12)).astype(np.float32)


def raise_mismatch(model: str, shape: tuple) -> None:
    from facefuse.errors import ModelCorrupt

    raise ModelCorrupt(f"{model}: not an ArcFace model: its output is {list(shape)}, expected [N,512]")
