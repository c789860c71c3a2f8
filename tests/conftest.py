"""Shared fixtures: the real test photos in ../shared/media (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

_ROOT = Path(__file__).resolve().parents[1]
_CANDIDATES = [_ROOT.parent / "shared" / "media", _ROOT / "shared" / "media"]
MEDIA = Path(os.environ.get("FACEFUSE_MEDIA") or next((p for p in _CANDIDATES if p.exists()), _CANDIDATES[0]))
if not (MEDIA / "identities.csv").exists():
    raise RuntimeError(f"test media not found at {MEDIA}; set FACEFUSE_MEDIA to the shared media folder")


def media(name: str) -> Path:
    return MEDIA / name


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
