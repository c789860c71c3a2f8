"""Where uploads and results are kept, by keys the server chooses (never a client's file name).

A key is a relative path of lowercase letters, digits, '.', '_', '-' and '/', e.g.
`jobs/3f2a.../target.jpg`. `DirectoryStorage` keeps files under one folder (the default data dir, or a
folder shared by several hosts); service-scale adds an S3 store behind the same Protocol.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from facefuse.fsutil import atomic_file

KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$")


class BadKey(ValueError):
    """A key that is not one the server would choose: a bug, never a user error."""


def check_key(key: str) -> str:
    if not KEY_PATTERN.fullmatch(key) or ".." in key or len(key) > 200:
        raise BadKey(f"invalid storage key {key!r}")
    return key


class Storage(Protocol):
    def put(self, key: str, data: bytes) -> None:
        """Store bytes under `key`, atomically (readers see all of it or nothing)."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Move the local file `path` in under `key` (consumed: it no longer exists afterwards)."""
        ...

    def get(self, key: str) -> bytes: ...

    def open(self, key: str) -> BinaryIO: ...

    def delete(self, key: str) -> None:
        """Remove `key`, or every key under it when it names a prefix (a job's folder). Missing is fine."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def local_path(self, key: str) -> contextlib.AbstractContextManager[Path]:
        """A local file holding the object for the duration of the `with` block (read only)."""
        ...


class DirectoryStorage:
    """Files under `root`. Writes go to a temp file in the same folder and are renamed into place."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:  # belt and braces: the pattern already forbids escapes
            raise BadKey(f"invalid storage key {key!r}")
        return path

    def put(self, key: str, data: bytes) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(dest) as fh:
            fh.write(data)

    def put_file(self, key: str, path: Path) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, dest)  # same file system: one atomic rename
        except OSError:  # another file system: copy to a unique temp file beside it, then rename
            with atomic_file(dest) as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, 1024 * 1024)
            os.unlink(path)

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):  # drop the job's folder once it is empty
            parent = path.parent
            if parent != self.root:
                parent.rmdir()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        yield path
