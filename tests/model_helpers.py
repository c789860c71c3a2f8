"""Small ONNX models built on the fly and a local HTTP server with Range support, for model-zoo tests."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np


def build_onnx(path: Path, scale: float = 2.0, padding_floats: int = 0) -> bytes:
    """y = x * scale for x of shape (1, 4); `padding_floats` adds an unused initializer to make it bigger."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]
    inits = [numpy_helper.from_array(np.full((1,), scale, dtype=np.float32), name="scale")]
    nodes = [helper.make_node("Mul", ["x", "scale"], ["y"])]
    if padding_floats:
        rng = np.random.default_rng(int(scale * 1000))
        pad = rng.standard_normal(padding_floats).astype(np.float32)
        inits.append(numpy_helper.from_array(pad, name="padding"))
    graph = helper.make_graph(nodes, "scale", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    path.write_bytes(data)
    return data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    drop_after: int | None = None  # bytes sent before the connection is cut...
    drops_left: int = 0  # ...for this many requests
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    slow: float = 0.0  # seconds to pause after each 256 KiB sent, so downloads overlap in time
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        state = self.state
        rng = self.headers.get("Range")
        with state.lock:
            state.requests.append((self.path, rng))
            drop = state.drop_after if state.drops_left > 0 else None
            if drop is not None:
                state.drops_left -= 1
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404, "not found")
            return
        start = 0
        if rng and state.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if drop is not None:
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            return
        if not state.slow:
            self.wfile.write(body)
            return
        for i in range(0, len(body), 1 << 18):
            self.wfile.write(body[i : i + (1 << 18)])
            self.wfile.flush()
            time.sleep(state.slow)


@contextmanager
def file_server(state: ServerState) -> Iterator[str]:
    """Serve `state.files` on 127.0.0.1 at a free port; yields the base URL; always shuts down."""
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
