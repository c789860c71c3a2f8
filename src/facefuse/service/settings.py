"""Service settings and API keys (kept as SHA-256 hashes, never in clear)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from facefuse.errors import ServiceConfigError, ServiceDataDirError
from facefuse.fsutil import atomic_file

KEYS_FILE = "api-keys.json"
ANONYMOUS = "local"  # the owner of every job when no keys are required (a localhost-only server)


def hash_key(key: str) -> str:
    # Keys are 256-bit random tokens, so a plain SHA-256 is enough (no password stretching needed).
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> str:
    return "ffk_" + secrets.token_urlsafe(32)


@dataclass
class Settings:
    """Everything `create_app` and the workers need to know. Limits of 0 switch that limit off."""

    data_dir: Path = field(default_factory=lambda: Path("facefuse-data"))
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # job workers (embedded backend), each with its own models
    # Embedded backend: workers are processes (`facefuse serve`) or threads in this one (the default
    # for create_app, which tests use in-process).
    worker_processes: bool = False
    api_keys: dict[str, str] = field(default_factory=dict)  # sha256 hex -> key name (the job owner)
    require_keys: bool | None = None  # None: required when keys exist or the host is not loopback
    rate_limit_per_minute: float = 600.0  # requests per key, refilled continuously
    rate_burst: int = 60  # requests a key may make at once before the rate applies
    max_active_jobs: int = 8  # queued + running jobs per key
    max_upload_bytes: int = 100 * 1024 * 1024  # whole request body
    max_pixels: int = 40_000_000  # per image, and per video frame; checked from headers before decoding
    max_sync_pixels: int = 4_000_000  # POST /v1/swap answers in the request, so only small images
    max_video_frames: int = 18_000
    result_ttl_s: float = 24 * 3600.0
    # After its result expires a job's record still answers (410, "expired") for this long, then it
    # is deleted too (404), so the job store does not grow without end.
    record_ttl_s: float = 7 * 24 * 3600.0
    expiry_interval_s: float = 30.0
    cors_origins: list[str] = field(default_factory=list)  # empty: no CORS headers at all
    video_workers: int = 1  # processes per video job; the service runs jobs side by side instead
    models_dir: Path | None = None  # learned models' folder (None: facefuse.models.default_models_dir())
    verify_models: bool = True  # check model files' hashes when a worker opens them

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)

    @property
    def keys_needed(self) -> bool:
        if self.require_keys is not None:
            return self.require_keys
        return bool(self.api_keys) or not is_loopback(self.host)

    def owner_for(self, key: str | None) -> str | None:
        """The key's name, ANONYMOUS when no key is needed and none was given, else None (401)."""
        if not self.keys_needed and key is None:
            return ANONYMOUS
        if key is None:
            return None
        digest = hash_key(key)
        for stored, name in self.api_keys.items():
            if hmac.compare_digest(stored, digest):
                return name
        return None

    def check(self) -> None:
        """Refuse settings that cannot work safely (exit code 30/31 from `facefuse serve`)."""
        if self.keys_needed and not self.api_keys:
            raise ServiceConfigError(
                f"serving on {self.host} needs API keys: create one with "
                f"`facefuse serve --data-dir {self.data_dir} --create-key NAME`"
            )
        if self.workers < 1 or self.workers > 64:
            raise ServiceConfigError(f"--workers {self.workers}: must be 1..64")
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.data_dir, prefix=".probe-"):
                pass
        except OSError as exc:
            raise ServiceDataDirError(
                f"{self.data_dir}: cannot use as the data folder ({exc.strerror or exc})"
            ) from exc


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_keys(data_dir: Path) -> dict[str, str]:
    path = Path(data_dir) / KEYS_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {entry["sha256"]: entry["name"] for entry in data["keys"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ServiceConfigError(f"{path}: unreadable API key file ({exc})") from exc


def add_key(data_dir: Path, name: str) -> str:
    """Create a key named `name`, store its hash, and return the key (shown once, never stored)."""
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise ServiceConfigError(f"key name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEYS_FILE
    keys = [{"name": n, "sha256": h} for h, n in load_keys(data_dir).items()]
    if any(k["name"] == name for k in keys):
        raise ServiceConfigError(f"a key named {name!r} exists already in {path}")
    key = new_key()
    keys.append({"name": name, "sha256": hash_key(key)})
    # A unique temp name (mkstemp: mode 0600, O_EXCL), so two --create-key runs cannot write into
    # one file, and a crash leaves the old key file whole.
    with atomic_file(path, "w") as fh:
        json.dump({"keys": keys}, fh, indent=1)
    return key
