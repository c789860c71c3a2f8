"""What this server can run: model choices (learned ones only when their files are installed), encoders,
limits. `GET /v1/capabilities` shows it; job options are checked against it; workers build a Pipeline per
learned model choice (`Pipelines`), each model file opened once per worker.

A learned model counts as installed when its file is in the models folder (a stat, cheap enough to do
per request, so models installed while the server runs show up). Hashes are checked when a worker
first opens the file, as everywhere else; a corrupt file fails the job with `model_corrupt`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from facefuse.service.options import JobOptions

# What each choice needs installed (registry names), beyond nothing for the built-in ones.
SWAPPER_NEEDS = {
    "mesh": (),
    "inswapper_128": ("inswapper_128", "arcface_w600k_r50"),
    "inswapper_128_fp16": ("inswapper_128_fp16", "arcface_w600k_r50"),
    "simswap_256": ("simswap_256", "arcface_converter_simswap", "arcface_w600k_r50"),
}
ENHANCER_NEEDS = {"none": (), "gfpgan_1.4": ("gfpgan_1.4",), "codeformer": ("codeformer",)}
ENHANCER_NEEDS["gpen_bfr_512"] = ("gpen_bfr_512",)
MASK_NEEDS = {"mesh": (), "box": (), "occlusion": ("xseg_1",), "region": ("bisenet_resnet_34",)}
DETECTOR_NEEDS = {
    "hog": (),
    "scrfd_10g": ("scrfd_10g",),
    "scrfd_2.5g": ("scrfd_2.5g",),
    "scrfd_500m": ("scrfd_500m",),
    "yunet": ("yunet_2023_mar",),
}
LABELS = {
    "mesh": "Built-in mesh swapper",
    "inswapper_128": "InSwapper 128",
    "inswapper_128_fp16": "InSwapper 128 (fp16)",
    "simswap_256": "SimSwap 256",
    "none": "None",
    "gfpgan_1.4": "GFPGAN 1.4",
    "codeformer": "CodeFormer",
    "gpen_bfr_512": "GPEN-BFR 512",
    "hog": "Built-in HOG detector",
    "scrfd_10g": "SCRFD 10G",
    "scrfd_2.5g": "SCRFD 2.5G",
    "scrfd_500m": "SCRFD 500M",
    "yunet": "YuNet",
}
MASK_LABELS = {
    "mesh": "Built-in face region",
    "box": "Face box (soft edges)",
    "occlusion": "Face box minus occluders (XSeg)",
    "region": "Face regions (BiSeNet parser)",
}
DEFAULTS_SHOWN = ("swapper", "enhancer", "enhancer_blend", "mask", "detector", "encoder", "jpeg_quality")
ENCODER_LABELS = {"h264": "H.264", "h265": "H.265 / HEVC", "vp9": "VP9", "av1": "AV1"}


class Choice(BaseModel):
    name: str = Field(description="the value to send in the job options")
    label: str
    learned: bool = Field(description="a learned (ONNX) model rather than the built-in dlib/mesh stack")
    licence: str | None = Field(None, description="terms of the learned model's weights")


class Limits(BaseModel):
    max_upload_bytes: int = Field(description="largest request body (0: no limit)")
    max_pixels: int = Field(description="largest image or video frame, in pixels")
    max_sync_pixels: int = Field(description="largest target for POST /v1/swap, in pixels")
    max_video_frames: int
    max_sources: int = Field(description="source photos per job")
    max_active_jobs: int = Field(description="queued + running jobs per API key (0: no limit)")


class Capabilities(BaseModel):
    """The choices this server offers in the job `options` (JSON names) and its limits."""

    swappers: list[Choice]
    enhancers: list[Choice]
    masks: list[Choice]
    mask_regions: list[str] = Field(description="face regions for mask 'region' (empty: not installed)")
    detectors: list[Choice]
    output_formats: list[str]
    encoders: list[Choice]
    presets: dict[str, list[str]] = Field(description="speed presets per encoder")
    defaults: dict[str, Any]
    limits: Limits


@dataclass(frozen=True)
class Installed:
    """The registry's models whose files are in the models folder (not hash-checked here)."""

    names: frozenset[str]

    @classmethod
    def scan(cls, models_dir: Path | None) -> Installed:
        from facefuse.models import default_models_dir, default_registry

        folder = Path(models_dir) if models_dir is not None else default_models_dir()
        return cls(frozenset(s.name for s in default_registry() if (folder / s.filename).is_file()))

    def has(self, needs: tuple[str, ...]) -> bool:
        return all(n in self.names for n in needs)


def _choices(needs: dict[str, tuple[str, ...]], installed: Installed, labels: dict[str, str]) -> list[Choice]:
    from facefuse.models import default_registry

    registry = default_registry()
    out = []
    for name, required in needs.items():
        if installed.has(required):
            licence = "; ".join(sorted({registry.get(n).licence for n in required})) or None
            out.append(Choice(name=name, label=labels[name], learned=bool(required), licence=licence))
    return out


def capabilities(settings: Any, installed: Installed) -> Capabilities:
    from facefuse.masks.bisenet import REGIONS
    from facefuse.media.video import available_encoders
    from facefuse.service.options import IMAGE_OUTPUTS, MAX_SOURCES, PRESETS, VIDEO_OUTPUTS

    encoders = available_encoders()
    defaults = JobOptions()
    return Capabilities(
        swappers=_choices(SWAPPER_NEEDS, installed, LABELS),
        enhancers=_choices(ENHANCER_NEEDS, installed, LABELS),
        masks=_choices(MASK_NEEDS, installed, MASK_LABELS),
        mask_regions=list(REGIONS) if installed.has(MASK_NEEDS["region"]) else [],
        detectors=_choices(DETECTOR_NEEDS, installed, LABELS),
        output_formats=[*IMAGE_OUTPUTS, *VIDEO_OUTPUTS],
        encoders=[Choice(name=e, label=ENCODER_LABELS[e], learned=False) for e in encoders],
        presets={e: list(PRESETS[e]) for e in encoders},
        defaults={name: getattr(defaults, name) for name in DEFAULTS_SHOWN},
        limits=Limits(
            max_upload_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_pixels,
            max_sync_pixels=min(settings.max_pixels, settings.max_sync_pixels),
            max_video_frames=settings.max_video_frames,
            max_sources=MAX_SOURCES,
            max_active_jobs=settings.max_active_jobs,
        ),
    )


def unavailable(options: JobOptions, installed: Installed) -> str | None:
    """Why these options cannot run on this server (a model not installed), or None."""
    from facefuse.media.video import available_encoders

    for what, value, needs in (
        ("swapper", options.swapper, SWAPPER_NEEDS),
        ("enhancer", options.enhancer, ENHANCER_NEEDS),
        ("mask", options.mask, MASK_NEEDS),
        ("detector", options.detector, DETECTOR_NEEDS),
    ):
        if not installed.has(needs[value]):
            have = ", ".join(n for n, req in needs.items() if installed.has(req))
            missing = ", ".join(n for n in needs[value] if n not in installed.names)
            return (
                f"options: {what} {value!r} is not available on this server (model files not installed: "
                f"{missing}); available: {have}"
            )
    if options.encoder not in available_encoders():
        return f"options: encoder {options.encoder!r} is not available in this server's FFmpeg build"
    return None


def model_choice(options: JobOptions) -> Any:
    """The facefuse.zoo.ModelChoice for a job's options."""
    from facefuse.zoo import ModelChoice

    masks = {
        "mesh": ("box",),
        "box": ("box",),
        "occlusion": ("box", "occlusion"),
        "region": ("box", "region"),
    }
    kwargs: dict[str, Any] = {}
    if options.mask_regions:
        kwargs["mask_regions"] = tuple(options.mask_regions)
    return ModelChoice(
        detector=options.detector,
        swapper=options.swapper,
        enhancer=None if options.enhancer == "none" else options.enhancer,
        enhancer_blend=options.enhancer_blend,
        masks=masks[options.mask],
        **kwargs,
    )


class Pipelines:
    """The Pipelines one worker (or the API's synchronous endpoints) runs: the built-in one, loaded at
    start-up, and one per learned model choice, built when first asked for. All learned ones share a
    SessionPool, so each model file is opened once per process, never per job."""

    def __init__(
        self,
        default: Any,
        *,
        models_dir: Path | None = None,
        verify: bool = True,
        threads: int | None = None,
        max_pixels: int = 40_000_000,
    ) -> None:
        self.default = default
        self.models_dir = models_dir
        self.verify = verify
        self.threads = threads
        self.max_pixels = max_pixels
        self._pool: Any = None
        self._built: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, options: JobOptions) -> Any:
        choice = model_choice(options)
        if not choice.learned:
            return self.default
        key = json.dumps(choice.key(), sort_keys=True)
        with self._lock:
            pipe = self._built.get(key)
            if pipe is None:
                from facefuse.analysis import DetectorSettings
                from facefuse.pipeline import Pipeline

                pipe = Pipeline(
                    detector=DetectorSettings(), models=choice, pool=self.pool(), max_pixels=self.max_pixels
                )
                self._built[key] = pipe
            return pipe

    def pool(self) -> Any:
        if self._pool is None:
            from facefuse.models import ModelStore, SessionPool, default_models_dir, default_registry

            folder = self.models_dir or default_models_dir()
            store = ModelStore(default_registry(), folder, verify=self.verify)
            self._pool = SessionPool(store, threads=self.threads)
        return self._pool
