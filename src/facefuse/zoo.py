"""Choosing models by name: the built-in dlib/mesh stack and the learned zoo, mixed freely.

`ModelChoice` is plain data (what the CLI flags and the Pipeline constructor take); `Zoo` turns it
into loaded objects using a SessionPool, so every ONNX model is opened once and shared.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from facefuse.analysis.detect import Detector, DetectorSettings, HogDetector
from facefuse.analysis.landmarks import Landmarker
from facefuse.analysis.recognise import Recogniser
from facefuse.errors import BackendUnavailable
from facefuse.masks.bisenet import DEFAULT_REGIONS, region_ids
from facefuse.masks.combine import MASK_TYPES, MaskSet
from facefuse.models.sessions import SessionPool

DETECTORS = {
    "hog": None,
    "scrfd_10g": "scrfd",
    "scrfd_2.5g": "scrfd",
    "scrfd_500m": "scrfd",
    "yunet": "yunet",
}
# CLI names -> registry names where they differ.
_REGISTRY_NAME = {"yunet": "yunet_2023_mar"}
LANDMARKERS = ("dlib", "2dfan4")
RECOGNISERS = ("dlib", "arcface_w600k_r50")
SWAPPERS = ("mesh", "inswapper_128", "inswapper_128_fp16", "simswap_256")
# onnx: onnxruntime with the pool's execution providers; torch: facefuse.swap.inswapper_torch (CUDA fp16
# with CUDA graphs where a GPU is visible, else CPU fp32), for the inswapper family only.
SWAPPER_BACKENDS = ("onnx", "torch", "torch-compile")
TORCH_SWAPPERS = ("inswapper_128", "inswapper_128_fp16")
ENHANCERS = {"gfpgan_1.4": "gfpgan", "codeformer": "codeformer", "gpen_bfr_512": "gpen"}
PIXEL_BOOSTS = (128, 256, 512, 768, 1024)
EMBEDDER = "arcface_w600k_r50"  # what inswapper's emap and SimSwap's converter expect
OCCLUDER = "xseg_1"
PARSER = "bisenet_resnet_34"
SIMSWAP_CONVERTER = "arcface_converter_simswap"


@dataclass(frozen=True)
class ModelChoice:
    """Which model does each job. The defaults are the built-in, offline dlib stack and mesh swapper."""

    detector: str = "hog"
    landmarker: str = "dlib"
    recogniser: str = "dlib"
    swapper: str = "mesh"
    enhancer: str | None = None
    enhancer_blend: float = 0.8  # 0..1: how much of the restored face replaces the swapped one
    codeformer_fidelity: float = 0.5  # 0: CodeFormer's own face, 1: most faithful to the input
    masks: tuple[str, ...] = ("box",)  # learned swappers' paste-back masks, combined (minimum)
    mask_regions: tuple[str, ...] = DEFAULT_REGIONS  # for the `region` mask
    mask_blur: float = 0.3
    pixel_boost: int | None = None  # crop size for learned swappers; None: the model's own
    keep_detail: bool = True  # learned swappers paste their change, keeping detail finer than the crop
    detector_size: int = 640
    swapper_backend: str = "onnx"

    def __post_init__(self) -> None:
        checks = [
            ("detector", self.detector, tuple(DETECTORS)),
            ("landmarker", self.landmarker, LANDMARKERS),
            ("recogniser", self.recogniser, RECOGNISERS),
            ("swapper", self.swapper, SWAPPERS),
        ]
        for what, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")
        if self.swapper_backend not in SWAPPER_BACKENDS:
            raise ValueError(
                f"unknown swapper backend {self.swapper_backend!r}; choose from {', '.join(SWAPPER_BACKENDS)}"
            )
        if self.swapper_backend.startswith("torch") and self.swapper not in TORCH_SWAPPERS:
            raise ValueError(
                f"the {self.swapper_backend} swapper backend runs {' and '.join(TORCH_SWAPPERS)} only, "
                f"not {self.swapper}"
            )
        if self.enhancer is not None and self.enhancer not in ENHANCERS:
            raise ValueError(f"unknown enhancer {self.enhancer!r}; choose from {', '.join(ENHANCERS)}")
        for m in self.masks:
            if m not in MASK_TYPES:
                raise ValueError(f"unknown mask {m!r}; choose from {', '.join(MASK_TYPES)}")
        region_ids(self.mask_regions)
        if self.pixel_boost is not None and self.pixel_boost not in PIXEL_BOOSTS:
            raise ValueError(f"pixel boost must be one of {', '.join(map(str, PIXEL_BOOSTS))}")
        if not 0 <= self.enhancer_blend <= 1 or not 0 <= self.codeformer_fidelity <= 1:
            raise ValueError("enhancer blend and CodeFormer fidelity must lie in 0..1")

    @property
    def learned(self) -> bool:
        """Whether any ONNX model is in use (sessions must not cross a fork)."""
        return (
            DETECTORS[self.detector] is not None
            or self.landmarker != "dlib"
            or self.recogniser != "dlib"
            or self.swapper != "mesh"
            or self.enhancer is not None
        )

    def key(self) -> dict:
        """What decides the output, as plain JSON (a resumable job compares it with its manifest)."""
        return json.loads(json.dumps(self.__dict__))


@dataclass
class Zoo:
    """Builds the chosen models from one SessionPool (each file opened once)."""

    pool: SessionPool
    choice: ModelChoice = field(default_factory=ModelChoice)

    def session(self, name: str):
        return self.pool.get(_REGISTRY_NAME.get(name, name))

    def detector(self, settings: DetectorSettings | None = None) -> Detector:
        name = self.choice.detector
        family = DETECTORS[name]
        if family is None:
            return HogDetector(settings)
        if family == "scrfd":
            from facefuse.analysis.scrfd import ScrfdDetector

            return ScrfdDetector(self.session(name), size=self.choice.detector_size, name=name)
        from facefuse.analysis.yunet import YuNetDetector

        return YuNetDetector(self.session(name), size=self.choice.detector_size, name=name)

    def landmarker(self) -> Landmarker | None:
        if self.choice.landmarker == "dlib":
            return None
        from facefuse.analysis.fan68 import Fan68Landmarker

        return Fan68Landmarker(self.session("2dfan4"))

    def recogniser(self) -> Recogniser | None:
        if self.choice.recogniser == "dlib":
            return None
        return self.embedder()

    def embedder(self):
        from facefuse.analysis.arcface import ArcFaceRecogniser

        return ArcFaceRecogniser(self.session(EMBEDDER), model=EMBEDDER)

    def masks(self) -> MaskSet:
        ch = self.choice
        occluders: Sequence = ()
        parsers: Sequence = ()
        if "occlusion" in ch.masks:
            from facefuse.masks.xseg import XSegOccluder

            occluders = (XSegOccluder(self.session(OCCLUDER), model=OCCLUDER),)
        if "region" in ch.masks:
            from facefuse.masks.bisenet import BiSeNetParser

            parsers = (BiSeNetParser(self.session(PARSER), ch.mask_regions, model=PARSER),)
        return MaskSet(box="box" in ch.masks, blur=ch.mask_blur, occluders=occluders, parsers=parsers)

    def swapper(self, recogniser: Recogniser | None = None, mesh=None):
        """The chosen swapper; `recogniser` is reused as the embedder when it is already ArcFace."""
        ch = self.choice
        if ch.swapper == "mesh":
            from facefuse.swap.mesh import MeshSwapper

            return MeshSwapper(mesh)
        from facefuse.analysis.arcface import ArcFaceRecogniser

        embedder = recogniser if isinstance(recogniser, ArcFaceRecogniser) else self.embedder()
        if ch.swapper.startswith("inswapper"):
            from facefuse.swap.inswapper import InswapperSwapper

            net, emap = self._inswapper_net()
            return InswapperSwapper(
                net,
                emap,
                embedder,
                masks=self.masks(),
                keep_detail=ch.keep_detail,
                pixel_boost=ch.pixel_boost or 128,
                name=ch.swapper,
            )
        from facefuse.swap.simswap import EmbeddingConverter, SimSwapSwapper

        converter = EmbeddingConverter(self.session(SIMSWAP_CONVERTER), model=SIMSWAP_CONVERTER)
        return SimSwapSwapper(
            self.session(ch.swapper),
            converter,
            embedder,
            masks=self.masks(),
            keep_detail=ch.keep_detail,
            pixel_boost=ch.pixel_boost,
            name=ch.swapper,
        )

    def _inswapper_net(self):
        """The chosen backend's network for the chosen inswapper file, and the file's emap."""
        name = self.choice.swapper
        if self.choice.swapper_backend == "onnx":
            from facefuse.models.onnx_io import last_initializer
            from facefuse.swap.inswapper import OnnxInswapper

            net = OnnxInswapper(self.session(name), model=name)
            return net, last_initializer(self.pool.store.path(name), name)
        try:
            from facefuse.swap.inswapper_torch import TorchInswapper
        except ModuleNotFoundError as exc:
            if exc.name != "torch":
                raise
            raise BackendUnavailable(
                f"--swapper-backend {self.choice.swapper_backend} needs PyTorch, which is not installed: "
                "pip install 'facefuse[gpu]' (or use --swapper-backend onnx)"
            ) from None
        import torch

        backend = self.choice.swapper_backend
        device = "cuda" if torch.cuda.is_available() else "cpu"
        # Compilation pays off on the GPU only (0.40x the bare network at batch 64 on an H100, where
        # each batch size costs 10-25 s to compile the first time it is met); on the CPU it was not
        # measured to gain anything and would need a C++ toolchain.
        compiled = backend == "torch-compile" and device == "cuda"
        if device == "cpu":
            how = "fp32 without compilation" if backend == "torch-compile" else "fp32"
            self.pool.warn(
                f"--swapper-backend {backend}: PyTorch sees no CUDA GPU; running on the CPU in {how}"
            )
        net = TorchInswapper(self.pool.store.path(name), device=device, compile=compiled)
        return net, net.emap

    def enhancer(self):
        ch = self.choice
        if ch.enhancer is None:
            return None
        from facefuse.enhance import FaceEnhancer

        masks = self.masks() if "occlusion" in ch.masks else MaskSet()
        masks = MaskSet(box=True, occluders=masks.occluders)
        return FaceEnhancer(
            self.session(ch.enhancer),
            ENHANCERS[ch.enhancer],
            blend=ch.enhancer_blend,
            fidelity=ch.codeformer_fidelity,
            masks=masks,
            name=ch.enhancer,
        )
