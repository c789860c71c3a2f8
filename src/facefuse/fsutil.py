"""Writing files so that a reader (or a crash) never sees half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a new temp file beside `path`; on success it is fsynced and renamed onto `path`.

    mkstemp gives a unique name (O_EXCL, mode 0600), so two writers never share a temp file and a
    planted symlink is never followed; on any error the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # a crash after the rename must not leave an empty file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort: some file systems refuse a directory fsync)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def private_dir(name: str) -> Path:
    """A folder only this user can enter, under ~/.cache/facefuse ($XDG_CACHE_HOME): for the saved
    face detector and the service's default S3 cache and work folders, which a fixed path in a
    shared /tmp would let other local users pre-create, read or plant files in."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facefuse"
    path = base / name
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user")
    os.chmod(base, 0o700)
    os.chmod(path, 0o700)
    return path
