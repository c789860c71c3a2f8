"""SimSwap 256 (FaceFusion's export): a 256 px crop plus a converted, unit-length identity -> the swap.

- Target: the face on the arcface_112_v1 template at 256 px, RGB, ImageNet mean/std, NCHW.
- Source: the ArcFace w600k_r50 embedding passed through FaceFusion's embedding converter
  (arcface_converter_w600k_r50_simswap: (N,512) -> (N,512)), then made unit length.
- Output: RGB in [0, 1] as it comes out (no de-normalisation for this family), clipped.
"""

from __future__ import annotations

import numpy as np

from facefuse.analysis.face import Face
from facefuse.masks.combine import MaskSet
from facefuse.models.onnx_io import SessionLike, TensorSpec, bind_inputs, check_outputs
from facefuse.swap.base import SourceFace
from facefuse.swap.inswapper import Embedder
from facefuse.swap.learned import LearnedSwapper

TEMPLATE = "arcface_112_v1"
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


class EmbeddingConverter:
    """Maps a w600k_r50 embedding into another model's identity space."""

    def __init__(self, session: SessionLike, model: str = "arcface_converter_simswap") -> None:
        self.session = session
        self._input = bind_inputs(session, model, {"input": TensorSpec((None, 512))})["input"].name
        check_outputs(session, model, 1)

    def __call__(self, embedding: np.ndarray) -> np.ndarray:
        x = np.asarray(embedding, np.float32).reshape(-1, 512)
        return np.asarray(self.session.run(None, {self._input: x})[0], np.float32).ravel()


def simswap_latent(embedding: np.ndarray, converter: EmbeddingConverter) -> np.ndarray:
    z = converter(embedding).astype(np.float64)
    return (z / np.linalg.norm(z)).astype(np.float32)


class SimSwapSwapper(LearnedSwapper):
    digital_source_type = "trainedAlgorithmicMedia"
    template = TEMPLATE

    def __init__(
        self,
        session: SessionLike,
        converter: EmbeddingConverter,
        embedder: Embedder,
        *,
        masks: MaskSet | None = None,
        keep_detail: bool = True,
        pixel_boost: int | None = None,
        name: str = "simswap_256",
    ) -> None:
        ports = bind_inputs(
            session, name, {"target": TensorSpec((None, 3, None, None)), "source": TensorSpec((None, 512))}
        )
        check_outputs(session, name, 1)
        self.session = session
        self._target, self._source = ports["target"].name, ports["source"].name
        self.model_size = ports["target"].shape[2] or 256
        self.converter = converter
        self.embedder = embedder
        self.masks = masks or MaskSet()
        self.keep_detail = keep_detail
        self.crop_size = max(pixel_boost or self.model_size, self.model_size)
        self.name = name

    def prepare(self, image: np.ndarray, face: Face) -> SourceFace:
        latent = simswap_latent(self.embedder.raw(image, face.landmarks_5), self.converter)
        return SourceFace(
            face=face, image=np.zeros((0, 0, 3), np.uint8), origin=np.zeros(2, np.float32), latent=latent
        )

    def _inputs(self, phases: np.ndarray) -> np.ndarray:
        x = (phases.astype(np.float32) / 255.0 - _MEAN) / _STD
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def _net(self, target: np.ndarray, latent: np.ndarray) -> np.ndarray:
        # FaceFusion's export fixes the batch at 1: one run per phase.
        outs = [
            self.session.run(None, {self._target: t[None], self._source: z[None]})[0][0]
            for t, z in zip(target, latent, strict=True)
        ]
        return np.stack(outs).astype(np.float32)
