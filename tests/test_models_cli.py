"""`facefuse models list|verify|path|download` as a user runs them: exit codes and one-line errors.

These use the built-in registry with files placed by hand (no network): scrfd_2.5g is pinned with a
known size, yunet_2023_mar has a known size but no pinned hash.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run_cli

from facefuse.errors import ExitCode
from facefuse.models.registry import default_registry

PINNED = default_registry().get("scrfd_2.5g")
UNPINNED = default_registry().get("yunet_2023_mar")


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "config"
    path.mkdir()
    return path


@pytest.fixture
def models(tmp_path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


def test_list_shows_every_model_with_licence_and_state(config, models):
    (models / UNPINNED.filename).write_bytes(b"\0" * UNPINNED.size)
    proc = run_cli(config, "models", "list", "--json", "--models-dir", models)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    rows = {r["name"]: r for r in data["models"]}
    assert set(rows) == set(default_registry().names())
    assert rows["inswapper_128"]["pinned"] and "non-commercial" in rows["inswapper_128"]["licence"]
    assert rows[UNPINNED.name]["installed"] and not rows["inswapper_128"]["installed"]
    text = run_cli(config, "models", "list", "--models-dir", models)
    assert text.returncode == 0 and "inswapper_128" in text.stdout and str(models) in text.stdout


def test_models_dir_from_environment(config, models, monkeypatch):
    monkeypatch.setenv("FACEFUSE_MODELS_DIR", str(models))
    proc = run_cli(config, "models", "list", "--json")
    assert json.loads(proc.stdout)["models_dir"] == str(models)


def test_path_of_missing_model_says_which_file_to_put_where(config, models):
    proc = run_cli(config, "models", "path", "inswapper_128", "--models-dir", models)
    assert_one_line_error(
        proc, ExitCode.MODEL_MISSING, "inswapper_128.onnx", models / "inswapper_128.onnx", "models download"
    )


def test_unknown_model_name(config, models):
    proc = run_cli(config, "models", "path", "inswaper", "--models-dir", models)
    line = assert_one_line_error(proc, ExitCode.MODEL_UNKNOWN, "inswaper")
    assert "inswapper_128" in line
    proc = run_cli(config, "models", "verify", "--model", "nope=/tmp/x.onnx", "--models-dir", models)
    assert_one_line_error(proc, ExitCode.MODEL_UNKNOWN, "nope")


def test_truncated_model_is_corrupt(config, models):
    (models / PINNED.filename).write_bytes(b"\0" * 1000)
    proc = run_cli(config, "models", "path", PINNED.name, "--models-dir", models)
    assert_one_line_error(proc, ExitCode.MODEL_CORRUPT, "truncated", models / PINNED.filename)
    proc = run_cli(config, "models", "verify", "--models-dir", models)
    assert_one_line_error(proc, ExitCode.MODEL_CORRUPT, PINNED.name)


def test_verify_finds_a_file_that_is_not_the_pinned_one(config, models):
    (models / PINNED.filename).write_bytes(b"\0" * PINNED.size)  # right size, wrong bytes
    proc = run_cli(config, "models", "verify", PINNED.name, "--models-dir", models)
    assert_one_line_error(proc, ExitCode.MODEL_HASH_MISMATCH, "SHA-256", models / PINNED.filename)


def test_verify_reports_unpinned_honestly(config, models):
    (models / UNPINNED.filename).write_bytes(b"\0" * UNPINNED.size)
    proc = run_cli(config, "models", "verify", "--models-dir", models)
    assert proc.returncode == 0, proc.stderr
    assert f"{UNPINNED.name}: unpinned: no pinned hash" in proc.stdout
    empty = run_cli(config, "models", "verify", "--models-dir", models / "none")
    assert empty.returncode == 0 and "no models installed" in empty.stdout


def test_model_override_checked_unless_no_verify(config, models, tmp_path):
    mine = tmp_path / "my_scrfd.onnx"
    mine.write_bytes(b"not the real model")
    args = ["--models-dir", models, "--model", f"{PINNED.name}={mine}"]
    proc = run_cli(config, "models", "path", PINNED.name, *args)
    assert_one_line_error(proc, ExitCode.MODEL_CORRUPT, mine, "--no-verify")
    proc = run_cli(config, "models", "path", PINNED.name, *args, "--no-verify")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(mine)
    proc = run_cli(config, "models", "path", PINNED.name, "--model", "no-equals-sign")
    assert_one_line_error(proc, ExitCode.USAGE, "NAME=PATH")


def test_download_needs_a_name(config, models):
    proc = run_cli(config, "models", "download", "--models-dir", models)
    assert_one_line_error(proc, ExitCode.USAGE, "--all")
    proc = run_cli(config, "models", "download", "inswaper", "--models-dir", models)
    assert_one_line_error(proc, ExitCode.MODEL_UNKNOWN, "inswaper")


def test_help_lists_the_model_exit_codes(config):
    proc = run_cli(config, "--help")
    assert proc.returncode == 0
    for code in (20, 21, 22, 23, 24):
        assert f"\n  {code}   " in proc.stdout
