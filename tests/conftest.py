"""Shared fixtures: the real test photos in ../shared/media (never copied into the repo)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import tempfile
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
