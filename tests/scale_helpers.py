"""Real servers for the scale-out tests: a redis-server and an S3-compatible server (moto), each on a
free port, started by the test and stopped afterwards (nothing is left running)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 15
# The ISO BMFF box a C2PA manifest is embedded in (uuid box with this user type).
C2PA_BOX_UUID = bytes.fromhex("d8fec3d61b0e483c92975828877ec481")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RedisServer:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    """A throwaway redis-server (no persistence, localhost only) in `folder`."""
    binary = shutil.which("redis-server")
    if binary is None:  # installed by scripts/install_system.sh (scripts/apt-packages.txt)
        raise RuntimeError("redis-server not found: run `bash scripts/install_system.sh`")
    folder.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):  # another process may take the free port before redis binds it
        port = free_port()
        log = folder / f"redis-{port}.log"
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
        args += ["--save", "", "--appendonly", "no", "--logfile", str(log)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _wait_for_port(port, proc):
            break
        _stop(proc)
    else:
        raise RuntimeError(f"redis-server did not start; see {folder}")
    try:
        yield RedisServer(proc, port, log)
    finally:
        _stop(proc)


S3_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        """What a client (this process or a worker) needs to reach the server."""
        return {**S3_TEST_CREDENTIALS, "FACEFUSE_S3_ENDPOINT": self.endpoint}


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto's S3-compatible server on a free port (a thread in this process), with a new bucket.

    moto keeps its buckets in this process's memory, shared by every server it starts: each call
    gets a bucket of its own so tests never see each other's objects."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    bucket = f"facefuse-test-{uuid.uuid4().hex[:12]}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=S3_TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=bucket)
        yield S3Server(endpoint, bucket)
    finally:
        server.stop()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return True
        time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def without_c2pa_box(data: bytes) -> bytes:
    """The file with its top-level C2PA uuid box removed.

    Everything else (the moov and mdat boxes: every frame, timestamp and audio sample) is kept. The
    manifest is the one part that differs between two runs of the same job: it holds the signing time
    and an ECDSA signature, which is randomised.
    """
    out, offset = bytearray(), 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[offset + 8 : offset + 16])[0], 16
        elif size == 0:
            size = len(data) - offset
        box = data[offset : offset + size]
        if not (kind == b"uuid" and box[header : header + 16] == C2PA_BOX_UUID):
            out += box
        offset += size
    return bytes(out)
