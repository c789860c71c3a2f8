"""Storage in an S3-compatible bucket (AWS S3, MinIO, Ceph, ...), for workers on several hosts.

`s3://bucket/prefix` names the place; credentials and region come from the usual boto3 sources
(environment, ~/.aws, instance role) and `FACEFUSE_S3_ENDPOINT` (or `AWS_ENDPOINT_URL`) points at a
non-AWS server. An object appears whole or not at all (S3 PUT is atomic), so readers never see half
a result.

`local_path` downloads to a fixed place under the cache folder (`$FACEFUSE_S3_CACHE`, default
`~/.cache/facefuse/s3-cache`, private to the user) with the object's Last-Modified time as its
mtime, and removes it
afterwards. The same object then always looks like the same file: a video job taken over by another
process (or host, with the same cache path) passes the resume check, which fingerprints the input's
path, size, mtime and content.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from facefuse.fsutil import private_dir
from facefuse.service.storage import check_key


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/"); ValueError if it is not one."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise ValueError(f"{url!r}: expected s3://BUCKET or s3://BUCKET/PREFIX")
    prefix = parsed.path.strip("/")
    return parsed.netloc, f"{prefix}/" if prefix else ""


class S3Storage:
    """The Storage protocol on one bucket and key prefix."""

    def __init__(
        self, url: str, *, endpoint_url: str | None = None, client: Any = None, cache_dir: Path | None = None
    ) -> None:
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        cache = cache_dir or os.environ.get("FACEFUSE_S3_CACHE") or private_dir("s3-cache")
        self.cache_dir = Path(cache)
        if client is None:
            import boto3
            from botocore.config import Config

            endpoint = endpoint_url or os.environ.get("FACEFUSE_S3_ENDPOINT") or None
            config = Config(retries={"max_attempts": 5, "mode": "standard"})
            client = boto3.client("s3", endpoint_url=endpoint, config=config)
        self.client = client

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def check(self) -> None:
        """Raise if the bucket cannot be reached (wrong endpoint, credentials or bucket)."""
        self.client.head_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))
        Path(path).unlink()

    def get(self, key: str) -> bytes:
        return self.open(key).read()

    def open(self, key: str) -> BinaryIO:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None

    def delete(self, key: str) -> None:
        """Remove `key` and every key under `key/` (a job's folder)."""
        full = self._key(key)
        self.client.delete_object(Bucket=self.bucket, Key=full)
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full + "/"):
            batch = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if batch:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(key)
        return int(head["ContentLength"])

    def keys(self, prefix: str) -> list[str]:
        """Keys under `prefix/`, relative to this storage's prefix."""
        full = self._key(prefix) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        found = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            found += [item["Key"][len(self.prefix) :] for item in page.get("Contents", [])]
        return sorted(found)

    def download(self, key: str, dest: Path) -> None:
        """Copy the object to `dest` (temp file + rename), with its Last-Modified time as the mtime."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            self.client.download_file(self.bucket, self._key(key), str(tmp))
            stamp = head["LastModified"].timestamp()
            os.utime(tmp, (stamp, stamp))
        except Exception as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if _is_not_found(exc):
                raise FileNotFoundError(key) from None
            raise
        os.replace(tmp, dest)

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        path = self.cache_dir / self.bucket / (self.prefix + check_key(key))
        self.download(key, path)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise


def _is_not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}
