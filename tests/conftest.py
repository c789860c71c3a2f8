"""Shared fixtures: the real test photos in ../shared/media (never copied into the repo)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

_ROOT = Path(__file__).resolve().parents[1]


def _origin_checkout(root: Path) -> Path | None:
    """The local checkout this one was cloned from, if any: a scratch clone (say in /tmp) then finds
    the media beside the working copy it came from, as CI's clone beside ../shared does directly."""
    git = ["git", "-C", str(root), "remote", "get-url", "origin"]
    try:
        url = subprocess.run(git, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(url.removeprefix("file://"))
    return path.resolve() if path.is_absolute() and path.is_dir() else None


def _find_media() -> Path:
    if os.environ.get("FACEFUSE_MEDIA"):
        return Path(os.environ["FACEFUSE_MEDIA"])
    roots = [_ROOT]
    if (origin := _origin_checkout(_ROOT)) is not None:
        roots.append(origin)
    candidates = [p for root in roots for p in (root.parent / "shared" / "media", root / "shared" / "media")]
    return next((p for p in candidates if (p / "identities.csv").exists()), candidates[0])


MEDIA = _find_media()
if not (MEDIA / "identities.csv").exists():
    raise RuntimeError(f"test media not found at {MEDIA}; set FACEFUSE_MEDIA to the shared media folder")


def media(name: str) -> Path:
    return MEDIA / name


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    # Session-wide and first (autouse runs before the other session fixtures): the session's
    # Pipeline saves dlib's face detector to the cache, and that must not be the user's.
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.getbasetemp() / "cache")
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def pipe():
    from facefuse.pipeline import Pipeline

    return Pipeline()


@pytest.fixture(scope="session")
def images(pipe):
    """Decoded photos, cached for the session: name -> RGB array (read-only)."""
    cache: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            img = pipe.load(media(name))
            img.setflags(write=False)
            cache[name] = img
        return cache[name]

    return get


@pytest.fixture(autouse=True)
def _private_config(tmp_path_factory, monkeypatch):
    # Signing keys created by any test go to a throwaway folder, never the user's config.
    monkeypatch.setenv("FACEFUSE_CONFIG_DIR", str(tmp_path_factory.getbasetemp() / "config"))


@pytest.fixture(scope="session")
def inswapper_replica() -> tuple[Path, str]:
    """The random-weight inswapper_128 replica (~554 MB) from scripts/build_inswapper_random.py, built
    once per test session in a temporary folder removed at the end; (its path, what the script printed)."""
    folder = Path(tempfile.mkdtemp(prefix="facefuse-inswapper-"))
    try:
        if shutil.disk_usage(folder).free < 2e9:
            pytest.fail(f"{folder}: under 2 GB free; the replica needs ~0.6 GB")
        script = _ROOT / "scripts" / "build_inswapper_random.py"
        spec = importlib.util.spec_from_file_location("build_inswapper_random", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = folder / "inswapper_128_replica.onnx"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert module.main([str(out), "--seed", "7"]) == 0
        yield out, printed.getvalue()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
