"""InsightFace inswapper_128 (and its fp16 export): a 128 px crop plus a 512-D latent -> the swapped crop.

- Target: the face on the arcface_128 template at 128 px, RGB in [0, 1], NCHW, batch fixed at 1.
- Source: the ArcFace w600k_r50 embedding mapped through the model's own 512x512 `emap` (the last
  initializer in the file): latent = normalise(normalise(e) @ emap), InsightFace's reference formula.
- Output: RGB in [0, 1] (the graph ends in (tanh + 1) / 2).

The network is anything with `run(target (N,3,128,128) float32, latent (N,512) float32)`, so the ONNX
session wrapper here and a PyTorch re-implementation plug in alike.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from facefuse.analysis.face import Face
from facefuse.masks.combine import MaskSet
from facefuse.models.onnx_io import SessionLike, TensorSpec, bind_inputs, check_outputs
from facefuse.swap.base import SourceFace
from facefuse.swap.learned import LearnedSwapper

MODEL_SIZE = 128
TEMPLATE = "arcface_128"


class InswapperNet(Protocol):
    def run(self, target: np.ndarray, latent: np.ndarray) -> np.ndarray: ...


class Embedder(Protocol):
    """A recogniser that can give raw embeddings (ArcFace w600k_r50 for inswapper)."""

    def raw(self, image: np.ndarray, five: np.ndarray) -> np.ndarray: ...


def emap_latent(embedding: np.ndarray, emap: np.ndarray) -> np.ndarray:
    """InsightFace's inswapper latent: (e / |e|) @ emap, renormalised; float32 (512,)."""
    e = np.asarray(embedding, np.float64).ravel()
    latent = (e / np.linalg.norm(e)) @ np.asarray(emap, np.float64)
    return (latent / np.linalg.norm(latent)).astype(np.float32)


class OnnxInswapper:
    """An inswapper ONNX session as an `InswapperNet`; fp16 exports with float16 I/O are cast for."""

    def __init__(self, session: SessionLike, model: str = "inswapper_128") -> None:
        self.session = session
        fp = (np.float32, np.float16)
        ports = bind_inputs(
            session,
            model,
            {
                "target": TensorSpec((None, 3, MODEL_SIZE, MODEL_SIZE), fp),
                "source": TensorSpec((None, 512), fp),
            },
        )
        check_outputs(session, model, 1)
        self._target, self._source = ports["target"], ports["source"]

    def run(self, target: np.ndarray, latent: np.ndarray) -> np.ndarray:
        outs = []
        # The published files fix the batch at 1.
        for t, z in zip(target, latent, strict=True):
            feed = {
                self._target.name: t[None].astype(self._target.dtype),
                self._source.name: z[None].astype(self._source.dtype),
            }
            outs.append(np.asarray(self.session.run(None, feed)[0], np.float32)[0])
        return np.stack(outs)


class InswapperSwapper(LearnedSwapper):
    digital_source_type = "trainedAlgorithmicMedia"
    template = TEMPLATE
    model_size = MODEL_SIZE

    def __init__(
        self,
        net: InswapperNet,
        emap: np.ndarray,
        embedder: Embedder,
        *,
        masks: MaskSet | None = None,
        keep_detail: bool = True,
        pixel_boost: int = MODEL_SIZE,
        name: str = "inswapper_128",
    ) -> None:
        if emap.shape != (512, 512):
            raise ValueError(f"inswapper emap must be 512x512, not {emap.shape}")
        self.net = net
        self.emap = emap.astype(np.float32)
        self.embedder = embedder
        self.masks = masks or MaskSet()
        self.keep_detail = keep_detail
        self.crop_size = pixel_boost
        self.name = name

    def prepare(self, image: np.ndarray, face: Face) -> SourceFace:
        latent = emap_latent(self.embedder.raw(image, face.landmarks_5), self.emap)
        return SourceFace(
            face=face, image=np.zeros((0, 0, 3), np.uint8), origin=np.zeros(2, np.float32), latent=latent
        )

    def _inputs(self, phases: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((phases.astype(np.float32) / 255.0).transpose(0, 3, 1, 2))

    def _net(self, target: np.ndarray, latent: np.ndarray) -> np.ndarray:
        return self.net.run(target, latent)
