"""The model registry: every learned model facefuse knows, where it comes from, and how to check it.

A hash is pinned only where a published SHA-256 for that exact file was found (the source is named in
a comment beside it); the rest have sha256=None and are checked by size where known, then by the hash
recorded on first download (see store.py). No hash here was computed by us or guessed.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from facefuse.errors import UnknownModel

PURPOSES = ("detector", "landmarker", "recogniser", "swapper", "enhancer", "mask")

_FF = "https://github.com/facefusion/facefusion-assets/releases/download"
_IF_HF = "https://huggingface.co/deepinsight/insightface/resolve/main/models"

NON_COMMERCIAL_INSIGHTFACE = "non-commercial research only (InsightFace pretrained-model terms)"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    purpose: str  # one of PURPOSES
    # scrfd | yunet | 2dfan4 | arcface | inswapper | simswap | gfpgan | codeformer | gpen | xseg | bisenet
    family: str
    filename: str
    url: str
    sha256: str | None
    size: int | None
    licence: str

    def __post_init__(self) -> None:
        if self.purpose not in PURPOSES:
            raise ValueError(f"{self.name}: purpose {self.purpose!r} is not one of {PURPOSES}")
        if self.sha256 is not None and (
            len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256)
        ):
            raise ValueError(f"{self.name}: sha256 must be 64 lower-case hex digits")
        if "/" in self.filename or "\\" in self.filename or self.filename in ("", ".", ".."):
            raise ValueError(f"{self.name}: filename must be a plain file name")


class Registry:
    """An ordered, immutable set of ModelSpecs looked up by name."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._specs: dict[str, ModelSpec] = {}
        files: dict[str, str] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"duplicate model name {spec.name!r}")
            if spec.filename in files:
                raise ValueError(f"{spec.name} and {files[spec.filename]} share the file {spec.filename}")
            self._specs[spec.name] = spec
            files[spec.filename] = spec.name

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._specs), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see `facefuse models list`"
            raise UnknownModel(f"unknown model {name!r}{hint}") from None

    def names(self, purpose: str | None = None) -> list[str]:
        return [s.name for s in self._specs.values() if purpose is None or s.purpose == purpose]

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs


# Sources of the pinned values (public repositories and docs that publish the SHA-256 and byte size of
# these exact files; several agree for each unless noted):
#   [A] DaWasteh/DaWastehs-ComfyUI-Bundle, tools/upgrade_v099.py and tools/upgrade_v100.py (tables of
#       FaceFusion models-3.x assets with size and SHA-256).
#   [B] a FaceFusion-asset catalogue (ModelSpec table "scrfd/arcface/inswapper/gpen/gfpgan/bisenet/xseg",
#       GitHub release URLs, sha256 and size) found via the code search; also model_catalog YAML/TS files
#       pinning the same facefusion-assets URLs.
#   [C] Gourieff/sd-webui-reactor README "Models hashes" (InsightFace buffalo_l files), repeated in
#       several download scripts that fetch det_10g.onnx from InsightFace's Hugging Face repository.
#   [D] sizes only: a FaceFusion models-3.0.0 catalogue listing byte sizes (2dfan4 97,904,803 etc.) and
#       facefusion/facefusion tests/test_download.py (yunet_2023_mar.onnx is 232,475 bytes).
_SPECS = (
    # --- detectors --------------------------------------------------------------------------------
    ModelSpec(
        name="scrfd_10g",
        purpose="detector",
        family="scrfd",
        filename="det_10g.onnx",
        url=f"{_IF_HF}/buffalo_l/det_10g.onnx",
        sha256="5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",  # [C]
        size=None,
        licence=f"{NON_COMMERCIAL_INSIGHTFACE}; buffalo_l pack",
    ),
    ModelSpec(
        name="scrfd_2.5g",
        purpose="detector",
        family="scrfd",
        filename="scrfd_2.5g.onnx",
        url=f"{_FF}/models-3.0.0/scrfd_2.5g.onnx",
        sha256="2c07342347cef21a619c49dd5664fb8c09570ae9eda5bff3e385c11eafc45ada",  # [B]
        size=3_295_067,  # [B], [D]
        licence=NON_COMMERCIAL_INSIGHTFACE,
    ),
    ModelSpec(
        name="scrfd_500m",
        purpose="detector",
        family="scrfd",
        filename="det_500m.onnx",
        url=f"{_IF_HF}/buffalo_sc/det_500m.onnx",
        sha256=None,  # no published SHA-256 found for this file
        size=None,
        licence=f"{NON_COMMERCIAL_INSIGHTFACE}; buffalo_s/buffalo_sc pack",
    ),
    ModelSpec(
        name="yunet_2023_mar",
        purpose="detector",
        family="yunet",
        filename="yunet_2023_mar.onnx",
        url=f"{_FF}/models-3.4.0/yunet_2023_mar.onnx",
        sha256=None,  # FaceFusion publishes a CRC32 only; no SHA-256 of this copy found
        size=232_475,  # [D]
        licence="MIT (OpenCV Zoo YuNet)",
    ),
    # --- landmarker -------------------------------------------------------------------------------
    ModelSpec(
        name="2dfan4",
        purpose="landmarker",
        family="2dfan4",
        filename="2dfan4.onnx",
        url=f"{_FF}/models-3.0.0/2dfan4.onnx",
        sha256=None,  # no published SHA-256 found
        size=97_904_803,  # [D] (two catalogues agree)
        licence="BSD-3-Clause (face-alignment, 2DFAN4 weights)",
    ),
    # --- recogniser -------------------------------------------------------------------------------
    ModelSpec(
        name="arcface_w600k_r50",
        purpose="recogniser",
        family="arcface",
        filename="arcface_w600k_r50.onnx",
        url=f"{_FF}/models-3.0.0/arcface_w600k_r50.onnx",
        sha256="f1f79dc3b0b79a69f94799af1fffebff09fbd78fd96a275fd8f0cbbea23270d1",  # [B]
        size=174_388_474,  # [B], [D]
        licence=f"{NON_COMMERCIAL_INSIGHTFACE}; buffalo_l recogniser",
    ),
    # --- swappers ---------------------------------------------------------------------------------
    ModelSpec(
        name="inswapper_128",
        purpose="swapper",
        family="inswapper",
        filename="inswapper_128.onnx",
        url=f"{_FF}/models-3.0.0/inswapper_128.onnx",
        # FaceFusion's copy; InsightFace's original (e4a3f08c...) is a different file of the same model.
        sha256="a290273ed497312095dac48cdef20feec9d5208298223dd01288ab202b54bea7",  # [A], [B]
        size=555_303_150,  # [A], [D]
        licence=NON_COMMERCIAL_INSIGHTFACE,
    ),
    ModelSpec(
        name="inswapper_128_fp16",
        purpose="swapper",
        family="inswapper",
        filename="inswapper_128_fp16.onnx",
        url=f"{_FF}/models-3.0.0/inswapper_128_fp16.onnx",
        sha256="c4eccca86ad177586c85c28bf1a64a9d9ed237e283a15818d831f7facfd3f420",  # [B]
        size=277_680_829,  # [B], [D]
        licence=NON_COMMERCIAL_INSIGHTFACE,
    ),
    ModelSpec(
        name="simswap_256",
        purpose="swapper",
        family="simswap",
        filename="simswap_256.onnx",
        url=f"{_FF}/models-3.0.0/simswap_256.onnx",
        sha256=None,  # no complete published SHA-256 found
        size=None,
        licence="non-commercial research only (SimSwap, Neostar)",
    ),
    ModelSpec(
        # SimSwap's identity input: FaceFusion's converter from w600k_r50 embeddings to SimSwap's ArcFace.
        name="arcface_converter_simswap",
        purpose="recogniser",
        family="arcface_converter",
        filename="arcface_converter_w600k_r50_simswap.onnx",
        url=f"{_FF}/models-3.0.0/arcface_converter_w600k_r50_simswap.onnx",
        sha256=None,  # no published SHA-256 found
        size=None,
        licence="MIT (facefusion-labs embedding converter)",
    ),
    # --- enhancers --------------------------------------------------------------------------------
    ModelSpec(
        name="gfpgan_1.4",
        purpose="enhancer",
        family="gfpgan",
        filename="gfpgan_1.4.onnx",
        url=f"{_FF}/models-3.0.0/gfpgan_1.4.onnx",
        sha256="accc4757b26bdb89b32b4d3500d4f79c9dff97c1dd7c7104bf9dcb95e3311385",  # [A], [B]
        size=340_299_087,  # [A], [B], [D]
        licence="Apache-2.0 (GFPGAN), with NVIDIA StyleGAN2 terms for some components; trained on FFHQ",
    ),
    ModelSpec(
        name="codeformer",
        purpose="enhancer",
        family="codeformer",
        filename="codeformer.onnx",
        url=f"{_FF}/models-3.0.0/codeformer.onnx",
        sha256="21710e7ab61c82683576c428e9c1b6fe1ed419586b7b39e394c3449c294b550f",  # [B]
        size=376_951_650,  # [B], [D]
        licence="non-commercial (S-Lab License 1.0, CodeFormer)",
    ),
    ModelSpec(
        name="gpen_bfr_512",
        purpose="enhancer",
        family="gpen",
        filename="gpen_bfr_512.onnx",
        url=f"{_FF}/models-3.0.0/gpen_bfr_512.onnx",
        sha256="d5f066b9068a8b74217f9712e28e875a6144629b108a6f7355acbdb3a2832c54",  # [A], [B]
        size=284_340_240,  # [A], [D]
        licence="non-commercial (GPEN weights; code Apache-2.0)",
    ),
    # --- masks ------------------------------------------------------------------------------------
    ModelSpec(
        name="xseg_1",
        purpose="mask",
        family="xseg",
        filename="xseg_1.onnx",
        url=f"{_FF}/models-3.1.0/xseg_1.onnx",
        sha256="c4d1498b8a03b5fe2a3a5d2ef2a0402ab03bd51edaf5b2d8d5fb764702a97dd3",  # [A], [B]
        size=70_324_286,  # [A], [B], [D]
        licence="GPL-3.0 (DeepFaceLab XSeg)",
    ),
    ModelSpec(
        name="bisenet_resnet_34",
        purpose="mask",
        family="bisenet",
        filename="bisenet_resnet_34.onnx",
        url=f"{_FF}/models-3.0.0/bisenet_resnet_34.onnx",
        sha256="4a0b8c958a3c938913bd06a8365dbb3c8761afba6ecbf0d14b3b1f77eb230c96",  # [A], [B]
        size=93_632_546,  # [A], [B], [D]
        licence="MIT (yakhyo/face-parsing); trained on CelebAMask-HQ (non-commercial dataset)",
    ),
)


def default_registry() -> Registry:
    """The built-in table of every downloadable model."""
    return Registry(_SPECS)
