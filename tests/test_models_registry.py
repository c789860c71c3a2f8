"""Model registry and store: lookups, checked paths, resumable hash-checked atomic downloads."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
from model_helpers import ServerState, build_onnx, file_server, sha256

from facefuse.errors import (
    ExitCode,
    ModelCorrupt,
    ModelDownloadFailed,
    ModelHashMismatch,
    ModelMissing,
    UnknownModel,
)
from facefuse.models import store as store_module
from facefuse.models.registry import ModelSpec, Registry, default_registry
from facefuse.models.store import LOCK_NAME, ModelStore, default_models_dir

BIG = 700_000  # floats of padding: a ~2.8 MB file, several download chunks


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("onnx")
    return {
        "small": build_onnx(root / "small.onnx", scale=2.0),
        "big": build_onnx(root / "big.onnx", scale=3.0, padding_floats=BIG),
        "other": build_onnx(root / "other.onnx", scale=5.0),
    }


def spec(name: str, data: bytes, url: str, pinned: bool = True, size: bool = True, **kw) -> ModelSpec:
    return ModelSpec(
        name=name,
        purpose=kw.pop("purpose", "swapper"),
        family="inswapper",
        filename=f"{name}.onnx",
        url=url,
        sha256=sha256(data) if pinned else None,
        size=len(data) if size else None,
        licence="test",
    )


# --- registry ---------------------------------------------------------------------------------------


def test_default_registry_has_every_model_the_issue_names():
    reg = default_registry()
    for name in (
        "scrfd_10g",
        "scrfd_2.5g",
        "scrfd_500m",
        "yunet_2023_mar",
        "2dfan4",
        "arcface_w600k_r50",
        "inswapper_128",
        "inswapper_128_fp16",
        "simswap_256",
        "gfpgan_1.4",
        "codeformer",
        "gpen_bfr_512",
        "xseg_1",
        "bisenet_resnet_34",
    ):
        s = reg.get(name)
        assert s.url.startswith("https://") and s.url.endswith(s.filename)
    for s in reg:
        if s.family in ("inswapper", "arcface", "scrfd"):
            assert "non-commercial" in s.licence, s.name
    assert set(reg.names("swapper")) == {"inswapper_128", "inswapper_128_fp16", "simswap_256"}
    assert len({s.filename for s in reg}) == len(reg)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModel) as err:
        default_registry().get("inswaper_128")
    assert err.value.exit_code == ExitCode.MODEL_UNKNOWN
    assert "inswapper_128" in str(err.value)
    assert "\n" not in str(err.value)


def test_spec_validation_rejects_bad_hash_and_path_names():
    with pytest.raises(ValueError):
        ModelSpec("a", "swapper", "x", "a.onnx", "http://h/a.onnx", "abc", None, "t")
    with pytest.raises(ValueError):
        ModelSpec("a", "swapper", "x", "../a.onnx", "http://h/a.onnx", None, None, "t")
    with pytest.raises(ValueError):
        ModelSpec("a", "painter", "x", "a.onnx", "http://h/a.onnx", None, None, "t")
    a = ModelSpec("a", "swapper", "x", "a.onnx", "http://h/a.onnx", None, None, "t")
    with pytest.raises(ValueError):
        Registry([a, a])


def test_default_models_dir_honours_env_and_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("FACEFUSE_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_models_dir() == tmp_path / "cache" / "facefuse" / "models"
    monkeypatch.setenv("FACEFUSE_MODELS_DIR", str(tmp_path / "mine"))
    assert default_models_dir() == tmp_path / "mine"


# --- download -----------------------------------------------------------------------------------------


def test_download_checks_hash_and_installs(tmp_path, model_bytes):
    state = ServerState(files={"/m/small.onnx": model_bytes["small"]})
    with file_server(state) as base:
        reg = Registry([spec("small", model_bytes["small"], f"{base}/m/small.onnx")])
        store = ModelStore(reg, tmp_path / "models")
        path = store.download("small")
        assert path == tmp_path / "models" / "small.onnx"
        assert path.read_bytes() == model_bytes["small"]
        assert store.path("small") == path
        # Already installed and correct: a second download fetches nothing.
        store.download("small")
    assert len(state.requests) == 1
    assert not (tmp_path / "models" / "small.onnx.part").exists()


def test_download_resumes_after_dropped_connection(tmp_path, model_bytes):
    data = model_bytes["big"]
    cut = len(data) // 3
    state = ServerState(files={"/big.onnx": data}, drop_after=cut, drops_left=1)
    dest = tmp_path / "big.onnx"
    with file_server(state) as base:
        store = ModelStore(Registry([spec("big", data, f"{base}/big.onnx")]), tmp_path)
        with pytest.raises(ModelDownloadFailed) as err:
            store.download("big", attempts=1)
        assert err.value.exit_code == ExitCode.MODEL_DOWNLOAD_FAILED
        assert "\n" not in str(err.value)
        assert not dest.exists()
        assert (tmp_path / "big.onnx.part").stat().st_size == cut
        # The second run asks only for the rest and completes.
        assert store.download("big", attempts=1) == dest
    assert state.requests == [("/big.onnx", None), ("/big.onnx", f"bytes={cut}-")]
    assert dest.read_bytes() == data
    assert not (tmp_path / "big.onnx.part").exists()


def test_download_retries_within_one_call_by_resuming(tmp_path, model_bytes):
    data = model_bytes["big"]
    state = ServerState(files={"/big.onnx": data}, drop_after=100_000, drops_left=2)
    with file_server(state) as base:
        store = ModelStore(Registry([spec("big", data, f"{base}/big.onnx")]), tmp_path)
        store.download("big", attempts=3)
    ranges = [r for _, r in state.requests]
    assert ranges == [None, "bytes=100000-", "bytes=200000-"]
    assert (tmp_path / "big.onnx").read_bytes() == data


def test_download_restarts_when_server_ignores_range(tmp_path, model_bytes):
    data = model_bytes["big"]
    state = ServerState(files={"/big.onnx": data}, honour_range=False)
    (tmp_path / "big.onnx.part").write_bytes(b"\0" * 5000)  # stale bytes that must not survive
    with file_server(state) as base:
        store = ModelStore(Registry([spec("big", data, f"{base}/big.onnx")]), tmp_path)
        store.download("big")
    assert state.requests[0][1] == "bytes=5000-"
    assert (tmp_path / "big.onnx").read_bytes() == data


def test_hash_mismatch_leaves_nothing_at_final_path(tmp_path, model_bytes):
    # The server has a different file than the registry pins (same size would be a tampered mirror).
    served = model_bytes["other"]
    state = ServerState(files={"/x.onnx": served})
    with file_server(state) as base:
        url = f"{base}/x.onnx"
        wrong = ModelSpec("x", "swapper", "inswapper", "x.onnx", url, sha256(b"not it"), None, "t")
        store = ModelStore(Registry([wrong]), tmp_path)
        with pytest.raises(ModelHashMismatch) as err:
            store.download("x")
    assert err.value.exit_code == ExitCode.MODEL_HASH_MISMATCH
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_size_mismatch_download_is_rejected_as_corrupt(tmp_path, model_bytes):
    data = model_bytes["small"]
    state = ServerState(files={"/s.onnx": data[:-10]})  # the server serves a short file
    with file_server(state) as base:
        store = ModelStore(Registry([spec("s", data, f"{base}/s.onnx")]), tmp_path)
        with pytest.raises(ModelCorrupt):
            store.download("s")
    assert list(tmp_path.iterdir()) == []


def test_final_path_never_holds_a_partial_file(tmp_path, model_bytes):
    data = model_bytes["big"]
    dest = tmp_path / "big.onnx"
    seen: list[bool] = []

    def progress(done: int, total: int | None) -> None:
        seen.append(dest.exists())
        assert total == len(data)

    state = ServerState(files={"/big.onnx": data}, drop_after=len(data) // 2, drops_left=1)
    with file_server(state) as base:
        store = ModelStore(Registry([spec("big", data, f"{base}/big.onnx")]), tmp_path)
        store.download("big", progress=progress, attempts=2)
    assert len(seen) >= 3 and not any(seen)
    assert dest.read_bytes() == data


def test_no_network_gives_one_line_with_the_path(tmp_path, model_bytes):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/m.onnx"
    store = ModelStore(Registry([spec("m", model_bytes["small"], url)]), tmp_path)
    with pytest.raises(ModelMissing) as err:
        store.path("m")
    msg = str(err.value)
    assert err.value.exit_code == ExitCode.MODEL_MISSING
    assert "\n" not in msg and str(tmp_path / "m.onnx") in msg and "facefuse models download m" in msg
    with pytest.raises(ModelDownloadFailed) as err:
        store.download("m", attempts=1)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "m.onnx") in msg
    assert not (tmp_path / "m.onnx").exists()


def test_http_error_is_one_line(tmp_path, model_bytes):
    with file_server(ServerState()) as base:
        store = ModelStore(Registry([spec("m", model_bytes["small"], f"{base}/gone.onnx")]), tmp_path)
        with pytest.raises(ModelDownloadFailed, match="HTTP 404"):
            store.download("m")


# --- checks of files on disk ----------------------------------------------------------------------------


def install(store: ModelStore, name: str, data: bytes) -> Path:
    store.models_dir.mkdir(parents=True, exist_ok=True)
    path = store.models_dir / store.registry.get(name).filename
    path.write_bytes(data)
    return path


def test_verify_finds_a_tampered_file(tmp_path, model_bytes):
    data = model_bytes["big"]
    reg = Registry([spec("big", data, "http://unused/big.onnx")])
    path = install(ModelStore(reg, tmp_path), "big", data)
    assert ModelStore(reg, tmp_path).check("big").status == "ok"
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(tampered))
    result = ModelStore(reg, tmp_path).check("big")
    assert result.status == "mismatch" and not result.ok
    with pytest.raises(ModelHashMismatch) as err:
        ModelStore(reg, tmp_path).path("big")
    assert str(path) in str(err.value)


def test_store_rechecks_a_file_changed_after_it_was_checked(tmp_path, model_bytes):
    data = model_bytes["small"]
    reg = Registry([spec("s", data, "http://unused/s.onnx")])
    store = ModelStore(reg, tmp_path)
    path = install(store, "s", data)
    store.path("s")
    path.write_bytes(model_bytes["other"][: len(data)].ljust(len(data), b"\0"))
    with pytest.raises(ModelHashMismatch):
        store.path("s")


def test_truncated_file_is_corrupt(tmp_path, model_bytes):
    data = model_bytes["big"]
    reg = Registry([spec("big", data, "http://unused/big.onnx")])
    install(ModelStore(reg, tmp_path), "big", data[: len(data) // 2])
    with pytest.raises(ModelCorrupt) as err:
        ModelStore(reg, tmp_path).path("big")
    assert err.value.exit_code == ExitCode.MODEL_CORRUPT
    assert "truncated" in str(err.value) and "\n" not in str(err.value)


def test_unpinned_model_records_hash_on_first_download(tmp_path, model_bytes):
    data = model_bytes["small"]
    state = ServerState(files={"/u.onnx": data})
    with file_server(state) as base:
        reg = Registry([spec("u", data, f"{base}/u.onnx", pinned=False, size=False)])
        store = ModelStore(reg, tmp_path)
        store.download("u")
    lock = json.loads((tmp_path / LOCK_NAME).read_text())
    assert lock["files"]["u.onnx"]["sha256"] == sha256(data)
    result = ModelStore(reg, tmp_path).check("u")
    assert result.status == "unpinned" and "recorded" in result.detail
    (tmp_path / "u.onnx").write_bytes(model_bytes["other"])
    assert ModelStore(reg, tmp_path).check("u").status == "mismatch"
    with pytest.raises(ModelHashMismatch, match="recorded"):
        ModelStore(reg, tmp_path).path("u")


def test_override_is_checked_against_the_pinned_hash(tmp_path, model_bytes):
    reg = Registry([spec("s", model_bytes["small"], "http://unused/s.onnx")])
    good = tmp_path / "good.onnx"
    good.write_bytes(model_bytes["small"])
    assert ModelStore(reg, tmp_path / "m", overrides={"s": good}).path("s") == good
    other = tmp_path / "other.onnx"
    other.write_bytes(model_bytes["other"])
    with pytest.raises((ModelHashMismatch, ModelCorrupt)) as err:
        ModelStore(reg, tmp_path / "m", overrides={"s": other}).path("s")
    assert "--no-verify" in str(err.value)
    assert ModelStore(reg, tmp_path / "m", overrides={"s": other}, verify=False).path("s") == other
    with pytest.raises(ModelMissing, match="--model s="):
        ModelStore(reg, tmp_path / "m", overrides={"s": tmp_path / "nope.onnx"}).path("s")
    with pytest.raises(UnknownModel):
        ModelStore(reg, tmp_path / "m", overrides={"nope": good})


def test_override_of_unpinned_model_is_accepted_without_hash(tmp_path, model_bytes):
    reg = Registry([spec("u", model_bytes["small"], "http://unused/u.onnx", pinned=False)])
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(model_bytes["other"])  # a different build, other size: nothing pinned to refuse it
    assert ModelStore(reg, tmp_path / "m", overrides={"u": mine}).path("u") == mine


def _in_parallel(*calls):
    """Run each call on its own thread at once; returns their results (or raises the first error)."""
    results: list = [None] * len(calls)
    errors: list[BaseException] = []
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


def test_two_downloads_of_one_model_at_once_give_one_good_file(tmp_path, model_bytes):
    data = model_bytes["big"]
    state = ServerState(files={"/big.onnx": data}, slow=0.05)
    with file_server(state) as base:
        # Unpinned: trust on first use must record the file's real hash, not a mix of two writers'.
        reg = Registry([spec("big", data, f"{base}/big.onnx", pinned=False, size=False)])
        # Two stores, as two `facefuse models download big` processes would have.
        paths = _in_parallel(
            lambda: ModelStore(reg, tmp_path).download("big"),
            lambda: ModelStore(reg, tmp_path).download("big"),
        )
    assert paths == [tmp_path / "big.onnx"] * 2
    assert (tmp_path / "big.onnx").read_bytes() == data
    assert [p for p, _ in state.requests] == ["/big.onnx"]  # the second waited and found it in place
    assert not (tmp_path / "big.onnx.part").exists()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["files"]["big.onnx"]["sha256"] == sha256(data)
    assert ModelStore(reg, tmp_path).check("big").status == "unpinned"


def test_downloads_of_two_models_at_once_both_record_their_hash(tmp_path, model_bytes, monkeypatch):
    write = store_module._atomic_write_text

    def slow_write(path, text):
        # Widens the read-modify-write window of the lock file, as a slow disk would.
        threading.Event().wait(0.3)
        write(path, text)

    monkeypatch.setattr(store_module, "_atomic_write_text", slow_write)
    a, b = model_bytes["small"], model_bytes["other"]
    with file_server(ServerState(files={"/a.onnx": a, "/b.onnx": b})) as base:
        reg = Registry(
            [
                spec("a", a, f"{base}/a.onnx", pinned=False, size=False),
                spec("b", b, f"{base}/b.onnx", pinned=False, size=False),
            ]
        )
        _in_parallel(
            lambda: ModelStore(reg, tmp_path).download("a"), lambda: ModelStore(reg, tmp_path).download("b")
        )
    files = json.loads((tmp_path / LOCK_NAME).read_text())["files"]
    assert files["a.onnx"]["sha256"] == sha256(a) and files["b.onnx"]["sha256"] == sha256(b)


def test_download_never_writes_past_the_registry_size(tmp_path, model_bytes):
    data = model_bytes["big"]
    expected = data[: len(data) // 2]
    seen: list[int] = []
    with file_server(ServerState(files={"/big.onnx": data})) as base:
        reg = Registry([spec("big", expected, f"{base}/big.onnx", pinned=False)])
        with pytest.raises(ModelCorrupt, match="larger than") as err:
            ModelStore(reg, tmp_path).download("big", progress=lambda done, total: seen.append(done))
    assert err.value.exit_code == ExitCode.MODEL_CORRUPT and "\n" not in str(err.value)
    assert max(seen) <= len(expected)
    assert not (tmp_path / "big.onnx").exists() and not (tmp_path / "big.onnx.part").exists()


def test_download_of_unknown_size_stops_at_the_cap(tmp_path, model_bytes, monkeypatch):
    monkeypatch.setattr(store_module, "MAX_UNKNOWN_SIZE", 1_000_000, raising=False)
    data = model_bytes["big"]  # ~2.8 MB
    with file_server(ServerState(files={"/big.onnx": data})) as base:
        reg = Registry([spec("big", data, f"{base}/big.onnx", pinned=False, size=False)])
        with pytest.raises(ModelDownloadFailed, match="1,000,000 bytes") as err:
            ModelStore(reg, tmp_path).download("big")
    assert err.value.exit_code == ExitCode.MODEL_DOWNLOAD_FAILED
    assert not (tmp_path / "big.onnx").exists() and not (tmp_path / "big.onnx.part").exists()
