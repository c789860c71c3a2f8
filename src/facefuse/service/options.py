"""Job options: the CLI's choices as a strict schema (unknown keys or values are a 422)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from facefuse.analysis.select import Mode, Order, Selection

IMAGE_OUTPUTS = ("png", "jpg", "webp")
VIDEO_OUTPUTS = ("mp4",)
X26X_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
PRESETS = {
    "h264": X26X_PRESETS,
    "h265": X26X_PRESETS,
    "vp9": ("realtime", "good", "best"),
    "av1": tuple(str(n) for n in range(14)),
}
# Every name a job may ask for (facefuse.zoo's, as JSON values). Which of them a server can run
# depends on the model files it has: service.capabilities checks that per request.
SWAPPERS = ("mesh", "inswapper_128", "inswapper_128_fp16", "simswap_256")
ENHANCERS = ("none", "gfpgan_1.4", "codeformer", "gpen_bfr_512")
# mesh: the swapper's own (the mesh swapper's face region; a learned swapper's soft box). The others
# are for learned swappers: box, box minus occluders (XSeg), box limited to face regions (BiSeNet).
MASKS = ("mesh", "box", "occlusion", "region")
DETECTORS = ("hog", "scrfd_10g", "scrfd_2.5g", "scrfd_500m", "yunet")
MAX_SOURCES = 10


class BadOptions(ValueError):
    """The options field cannot be used; the message says which option and why (HTTP 422)."""


class JobOptions(BaseModel):
    """Same names and meaning as `facefuse swap`'s flags (with '-' as '_')."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = Mode.ONE
    order: Order = Order.LARGE_SMALL
    index: int | None = Field(None, ge=0, le=10_000)
    reference_distance: float = Field(0.6, gt=0.0, le=2.0)
    reference_face_index: int | None = Field(
        None, ge=0, le=10_000, description="a target face (index from /v1/faces) to use as the reference"
    )
    jpeg_quality: int = Field(95, ge=1, le=100)
    output_format: Literal["png", "jpg", "webp", "mp4"] | None = None
    encoder: Literal["h264", "h265", "vp9", "av1"] = "h264"
    crf: int | None = Field(None, ge=0, le=63)
    preset: str | None = Field(None, max_length=16)
    fps: str | None = Field(None, max_length=32)
    resolution: str | None = Field(None, max_length=32)
    trim_start: str | None = Field(None, max_length=32)
    trim_end: str | None = Field(None, max_length=32)
    swapper: str = "mesh"
    enhancer: str = "none"
    enhancer_blend: float = Field(0.8, ge=0.0, le=1.0)
    mask: str = "mesh"
    mask_regions: list[str] | None = Field(
        None, min_length=1, max_length=16, description="face regions for mask 'region' (default: all)"
    )
    detector: str = "hog"

    @field_validator("swapper")
    @classmethod
    def _known_swapper(cls, value: str) -> str:
        return _one_of("swapper", value, SWAPPERS)

    @field_validator("enhancer")
    @classmethod
    def _known_enhancer(cls, value: str) -> str:
        return _one_of("enhancer", value, ENHANCERS)

    @field_validator("mask")
    @classmethod
    def _known_mask(cls, value: str) -> str:
        return _one_of("mask", value, MASKS)

    @field_validator("detector")
    @classmethod
    def _known_detector(cls, value: str) -> str:
        return _one_of("detector", value, DETECTORS)

    @field_validator("mask_regions")
    @classmethod
    def _known_regions(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            from facefuse.masks.bisenet import REGIONS

            for name in value:
                _one_of("mask region", name, tuple(REGIONS))
        return value

    @field_validator("trim_start", "trim_end")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None:
            from facefuse.video import TimeSpec

            TimeSpec.parse(value)  # ValueError -> 422 with its message
        return value

    @field_validator("fps")
    @classmethod
    def _fps(cls, value: str | None) -> str | None:
        if value is not None:
            from facefuse.cli_video import parse_fps

            _cli_check(parse_fps, value)
        return value

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, value: str | None) -> str | None:
        if value is not None:
            from facefuse.cli_video import parse_resolution

            _cli_check(parse_resolution, value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> JobOptions:
        if self.preset is not None and self.preset not in PRESETS[self.encoder]:
            raise ValueError(f"preset {self.preset!r} is not one of {', '.join(PRESETS[self.encoder])}")
        if self.mask_regions is not None and self.mask != "region":
            raise ValueError("mask_regions: only with mask 'region'")
        if self.mask not in ("mesh", "box") and self.swapper == "mesh":
            raise ValueError(f"mask {self.mask!r}: only for learned swappers (the mesh swapper has its own)")
        return self

    def selection(self) -> Selection:
        return Selection(
            mode=self.mode, order=self.order, index=self.index, reference_distance=self.reference_distance
        )

    def video_settings(self, workers: int = 1) -> Any:
        """facefuse.video.VideoOptions for these options."""
        from facefuse.cli_video import parse_fps, parse_resolution
        from facefuse.media.video import EncoderSettings
        from facefuse.video import TimeSpec, VideoOptions

        return VideoOptions(
            encoder=EncoderSettings(self.encoder, self.crf, self.preset),
            fps=parse_fps(self.fps),
            size=parse_resolution(self.resolution),
            trim_start=TimeSpec.parse(self.trim_start) if self.trim_start else None,
            trim_end=TimeSpec.parse(self.trim_end) if self.trim_end else None,
            workers=workers,
        )

    def video_only_given(self) -> list[str]:
        names = ("crf", "preset", "fps", "resolution", "trim_start", "trim_end")
        given = [n for n in names if getattr(self, n) is not None]
        return given + (["encoder"] if self.encoder != "h264" else [])


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")
    return value


def _cli_check(parse: Any, value: str) -> None:
    from facefuse.errors import FacefuseError

    try:
        parse(value)
    except FacefuseError as exc:
        raise ValueError(str(exc).lstrip("-")) from None


def parse_options(text: str | None) -> JobOptions:
    """Parse the multipart `options` field (a JSON object); BadOptions with a readable message."""
    if text is None or not text.strip():
        return JobOptions()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadOptions(f"options: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadOptions("options: expected a JSON object")
    try:
        return JobOptions.model_validate(data)
    except ValidationError as exc:
        raise BadOptions("options: " + describe_validation(exc)) from None


def describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "value"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)
