"""The models folder: where each model file lives, how it is checked, and how it is downloaded.

Nothing is fetched implicitly: `path()` only looks on disk and, when a file is missing, says in one
line which file to put where (or which command downloads it). `download()` is the only network call:
it resumes a `.part` file with an HTTP Range request, checks size and SHA-256, and renames the file
into place only when it is right, so the final path never holds a partial or wrong file. Downloads
of one file by several processes take turns (an flock on `<file>.lock`): the later ones find the
file in place. Bytes past the registry's size (or 2 GiB where it gives none) are never written.

Models with no pinned hash are checked by size (where known) and, after their first download, against
the SHA-256 recorded then in `facefuse-models.lock.json` in the models folder (trust on first use).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from facefuse import __version__
from facefuse.errors import (
    ModelCorrupt,
    ModelDownloadFailed,
    ModelError,
    ModelHashMismatch,
    ModelMissing,
)
from facefuse.fsutil import atomic_file, fsync_dir
from facefuse.models.registry import ModelSpec, Registry

LOCK_NAME = "facefuse-models.lock.json"
PART_SUFFIX = ".part"
# Beside each file being downloaded (and beside the lock file) while it is written: an flock, so two
# `facefuse models download` runs never write one `.part` or lose each other's recorded hashes.
FLOCK_SUFFIX = ".lock"
# Cap on a download whose size the registry does not give: one ONNX protobuf cannot exceed 2 GiB.
MAX_UNKNOWN_SIZE = 2 << 30
MODELS_DIR_ENV = "FACEFUSE_MODELS_DIR"
CHUNK = 1 << 20
TIMEOUT_S = 30.0

# progress(done_bytes, total_bytes_or_None)
Progress = Callable[[int, int | None], None]


def default_models_dir() -> Path:
    """$FACEFUSE_MODELS_DIR, else the per-user cache ($XDG_CACHE_HOME or ~/.cache)/facefuse/models."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "facefuse" / "models"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """What `verify()` found for one model (plain data for the CLI's report)."""

    name: str
    path: Path
    status: str  # ok | unpinned | missing | corrupt | mismatch
    detail: str
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "unpinned")


class ModelStore:
    """Model files on disk for one registry: a models folder plus per-model local overrides."""

    def __init__(
        self,
        registry: Registry,
        models_dir: Path,
        overrides: Mapping[str, Path] | None = None,
        verify: bool = True,
    ) -> None:
        self.registry = registry
        self.models_dir = Path(models_dir)
        self.verify = verify
        self.overrides: dict[str, Path] = {}
        for name, path in (overrides or {}).items():
            self.registry.get(name)  # UnknownModel for a name not in the registry
            self.overrides[name] = Path(path)
        # (path, size, mtime_ns) of files already hashed in this process, so a model is hashed once.
        self._checked: dict[str, tuple[str, int, int]] = {}
        self._lock = threading.Lock()

    # --- where files live --------------------------------------------------------------------------
    def target(self, name: str) -> Path:
        """The path `name` is read from: its override, else models_dir/filename (may not exist)."""
        spec = self.registry.get(name)
        return self.overrides.get(name, self.models_dir / spec.filename)

    def lock_path(self) -> Path:
        return self.models_dir / LOCK_NAME

    def path(self, name: str) -> Path:
        """The checked local file of `name`; raises ModelMissing / ModelCorrupt / ModelHashMismatch."""
        spec = self.registry.get(name)
        path = self.target(name)
        if not path.is_file():
            raise ModelMissing(self._missing_message(spec, path))
        if self.verify:
            self._check(spec, path)
        return path

    def _missing_message(self, spec: ModelSpec, path: Path) -> str:
        if spec.name in self.overrides:
            return f"model {spec.name}: the file given with --model {spec.name}={path} does not exist"
        return (
            f"model {spec.name} is not installed: run `facefuse models download {spec.name}`, "
            f"or put {spec.filename} (from {spec.url}) at {path}"
        )

    # --- checks ------------------------------------------------------------------------------------
    def _check(self, spec: ModelSpec, path: Path) -> str | None:
        """Size, then SHA-256 (pinned, else recorded on first download). Returns the hash it computed."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if self._checked.get(spec.name) == key:
                return None
        is_override = spec.name in self.overrides
        if spec.size is not None and stat.st_size != spec.size and not (is_override and spec.sha256 is None):
            raise ModelCorrupt(self._size_message(spec, path, stat.st_size))
        expected, origin = spec.sha256, "the registry"
        if expected is None and not is_override:
            recorded = self._read_lock().get(spec.filename, {})
            expected, origin = recorded.get("sha256"), f"the hash recorded at download in {self.lock_path()}"
        actual = None
        if expected is not None:
            actual = sha256_file(path)
            if actual != expected:
                hint = (
                    "pass --no-verify to use a different build on purpose"
                    if is_override
                    else f"delete it and run `facefuse models download {spec.name}`"
                )
                raise ModelHashMismatch(
                    f"model {spec.name}: {path} has SHA-256 {actual[:16]}..., "
                    f"not {expected[:16]}... as in {origin}; {hint}"
                )
        with self._lock:
            self._checked[spec.name] = key
        return actual

    def _size_message(self, spec: ModelSpec, path: Path, size: int) -> str:
        if spec.name in self.overrides:
            return (
                f"model {spec.name}: {path} is {size:,} bytes, but the registry's file is "
                f"{spec.size:,} bytes (truncated, or a different build: --no-verify uses it anyway)"
            )
        what = "truncated" if size < (spec.size or 0) else "too large"
        return (
            f"model {spec.name}: {path} is {what} ({size:,} bytes, expected {spec.size:,}); "
            f"delete it and run `facefuse models download {spec.name}`"
        )

    def check(self, name: str) -> VerifyResult:
        """Full check of one model for `facefuse models verify` (always hashes, never raises for files)."""
        spec = self.registry.get(name)
        path = self.target(name)
        if not path.is_file():
            return VerifyResult(name, path, "missing", self._missing_message(spec, path))
        with self._lock:
            self._checked.pop(name, None)
        try:
            self._check(spec, path)
        except (ModelCorrupt, ModelHashMismatch) as exc:
            status = "corrupt" if isinstance(exc, ModelCorrupt) else "mismatch"
            return VerifyResult(name, path, status, str(exc))
        digest = sha256_file(path)
        if spec.sha256 is not None:
            return VerifyResult(name, path, "ok", "SHA-256 matches the registry", digest)
        recorded = None if name in self.overrides else self._read_lock().get(spec.filename, {}).get("sha256")
        detail = (
            "no pinned hash; matches the hash recorded at download"
            if recorded
            else "no pinned hash and none recorded; size checked only"
        )
        return VerifyResult(name, path, "unpinned", detail, digest)

    # --- lock file (trust on first use for unpinned models) -----------------------------------------
    def _read_lock(self) -> dict[str, dict]:
        try:
            data = json.loads(self.lock_path().read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}
        return data.get("files", {}) if isinstance(data, dict) else {}

    def _record(self, spec: ModelSpec, digest: str, size: int) -> None:
        lock = self.lock_path()
        with _exclusive(lock.with_name(lock.name + FLOCK_SUFFIX)):
            files = self._read_lock()
            files[spec.filename] = {"model": spec.name, "sha256": digest, "size": size, "url": spec.url}
            payload = json.dumps({"version": 1, "files": files}, indent=2, sort_keys=True) + "\n"
            _atomic_write_text(lock, payload)

    # --- download ----------------------------------------------------------------------------------
    def download(self, name: str, progress: Progress | None = None, attempts: int = 3) -> Path:
        """Fetch `name` into the models folder (resuming a `.part` file); returns the final path.

        A file already in place that passes the checks is kept. Each attempt after a dropped
        connection resumes where the last one stopped; after `attempts` the `.part` file is kept for
        the next run. A wrong size or hash removes the `.part` file and raises.
        """
        spec = self.registry.get(name)
        dest = self.models_dir / spec.filename
        if self._installed(spec, dest):
            return dest
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelDownloadFailed(
                f"cannot create the models folder {self.models_dir}: {exc.strerror}"
            ) from exc
        with _exclusive(dest.with_name(dest.name + FLOCK_SUFFIX)):
            # Another download of this file may have finished while this one waited for the lock.
            if self._installed(spec, dest):
                return dest
            return self._download(spec, dest, progress, attempts)

    def _installed(self, spec: ModelSpec, dest: Path) -> bool:
        if not dest.is_file():
            return False
        try:
            self._check(spec, dest)
        except (ModelCorrupt, ModelHashMismatch):
            return False  # a bad file in place: download again, then replace it atomically
        return True

    def _download(self, spec: ModelSpec, dest: Path, progress: Progress | None, attempts: int) -> Path:
        part = dest.with_name(dest.name + PART_SUFFIX)
        last_error = ""
        for _ in range(max(1, attempts)):
            try:
                complete = self._fetch(spec, part, progress)
            except _Interrupted as exc:
                last_error = str(exc)
                continue
            if complete:
                return self._finish(spec, part, dest)
        raise ModelDownloadFailed(
            f"could not download {spec.name} from {spec.url}: {last_error}; "
            f"rerun `facefuse models download {spec.name}` to retry (a partial file is resumed), "
            f"or put {spec.filename} at {dest}"
        )

    def _fetch(self, spec: ModelSpec, part: Path, progress: Progress | None) -> bool:
        offset = part.stat().st_size if part.exists() else 0
        if spec.size is not None and offset > spec.size:
            part.unlink()
            offset = 0
        if spec.size is not None and offset == spec.size:
            return True
        headers = {"User-Agent": f"facefuse/{__version__}"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(spec.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                # The server has nothing past our offset: the .part is complete (checked next) or bad.
                return True
            raise ModelDownloadFailed(
                f"could not download {spec.name} from {spec.url}: HTTP {exc.code} {exc.reason}; "
                f"put {spec.filename} at {self.models_dir / spec.filename} instead"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise _Interrupted(f"network error ({reason})") from exc
        with response:
            if offset and response.status != 206:
                offset = 0  # the server ignored the Range header: start again from the first byte
            length = response.headers.get("Content-Length")
            expected_total = offset + int(length) if length is not None else spec.size
            limit = spec.size if spec.size is not None else MAX_UNKNOWN_SIZE
            done = offset
            too_big = False
            try:
                with part.open("r+b" if offset else "wb") as fh:
                    fh.seek(offset)
                    fh.truncate()
                    if progress:
                        progress(done, expected_total)
                    while chunk := response.read(CHUNK):
                        if done + len(chunk) > limit:
                            too_big = True  # never written: a server sending without end fills no disk
                            break
                        fh.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, expected_total)
                    fh.flush()
                    os.fsync(fh.fileno())
            except ModelError:
                raise
            except OSError as exc:
                if isinstance(exc, TimeoutError | ConnectionError):
                    raise _Interrupted(f"connection lost after {done:,} bytes ({exc})") from exc
                raise ModelDownloadFailed(f"cannot write {part}: {exc.strerror or exc}") from exc
            except Exception as exc:  # http.client.IncompleteRead and friends: a dropped connection
                raise _Interrupted(f"connection lost after {done:,} bytes ({type(exc).__name__})") from exc
        if too_big:
            part.unlink(missing_ok=True)
            if spec.size is not None:
                raise ModelCorrupt(
                    f"model {spec.name}: the download from {spec.url} is larger than the registry's "
                    f"{spec.size:,} bytes; removed it"
                )
            raise ModelDownloadFailed(
                f"model {spec.name}: the download from {spec.url} passed {MAX_UNKNOWN_SIZE:,} bytes, "
                "more than any ONNX model holds; stopped and removed it"
            )
        if expected_total is not None and done < expected_total:
            raise _Interrupted(f"connection closed after {done:,} of {expected_total:,} bytes")
        return True

    def _finish(self, spec: ModelSpec, part: Path, dest: Path) -> Path:
        size = part.stat().st_size
        if spec.size is not None and size != spec.size:
            part.unlink()
            raise ModelCorrupt(
                f"model {spec.name}: the download from {spec.url} is {size:,} bytes, expected {spec.size:,}; "
                "removed it"
            )
        digest = sha256_file(part)
        if spec.sha256 is not None and digest != spec.sha256:
            part.unlink()
            raise ModelHashMismatch(
                f"model {spec.name}: the download from {spec.url} has SHA-256 {digest[:16]}..., "
                f"not {spec.sha256[:16]}...; removed it (nothing was installed)"
            )
        os.replace(part, dest)
        fsync_dir(dest.parent)
        if spec.sha256 is None:
            self._record(spec, digest, size)
        stat = dest.stat()
        with self._lock:
            self._checked[spec.name] = (str(dest.resolve()), stat.st_size, stat.st_mtime_ns)
        return dest


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path`, removed again on release so the models folder stays clean.

    A waiter may wake up holding a file that its owner has just removed; it then locks the new one,
    so exactly one holder at a time owns the file at `path`.
    """
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ModelDownloadFailed(f"cannot create the lock file {path}: {exc.strerror or exc}") from exc
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        held = os.fstat(fd)
        if st is not None and (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        # Removed while still held: anyone waiting on this file sees it gone and tries again.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


class _Interrupted(Exception):
    """A download stopped part-way; the `.part` file is kept so the next attempt resumes it."""


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path, "w") as fh:
        fh.write(text)
