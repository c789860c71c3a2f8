"""ONNX Runtime sessions: one per model per pool, created on first use and reused.

Execution providers are asked for by short name (cpu, cuda, tensorrt, coreml, directml, openvino).
One that this onnxruntime build lacks, or that fails to start (e.g. CUDA libraries missing), falls back
to CPU with a single warning per pool, never an error: the CPU always runs every model.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from facefuse.errors import ModelCorrupt, ModelMissing
from facefuse.models.store import ModelStore

if TYPE_CHECKING:
    import onnxruntime

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
CPU = PROVIDERS["cpu"]


class ProviderFallbackWarning(UserWarning):
    """An execution provider was asked for but is unavailable here; the CPU runs the model instead."""


def available_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def resolve_providers(names: Sequence[str], available: Sequence[str]) -> tuple[list[str], list[str]]:
    """(onnxruntime provider list ending in CPU, short names that are unavailable)."""
    chosen: list[str] = []
    missing: list[str] = []
    for name in names:
        key = name.lower()
        if key not in PROVIDERS:
            raise ValueError(f"unknown execution provider {name!r}; choose from {', '.join(PROVIDERS)}")
        ort_name = PROVIDERS[key]
        if ort_name in chosen:
            continue
        if ort_name in available:
            chosen.append(ort_name)
            # TensorRT hands the layers it cannot build to CUDA when both are present.
            if key == "tensorrt" and PROVIDERS["cuda"] in available and PROVIDERS["cuda"] not in chosen:
                chosen.append(PROVIDERS["cuda"])
        else:
            missing.append(key)
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen, missing


def _short(ort_name: str) -> str:
    return next((k for k, v in PROVIDERS.items() if v == ort_name), ort_name)


class SessionPool:
    """Lazily created, reused onnxruntime sessions for the models of one ModelStore."""

    def __init__(
        self,
        store: ModelStore,
        providers: Sequence[str] = ("cpu",),
        threads: int | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        if threads is not None and threads < 1:
            raise ValueError("threads must be at least 1")
        self.store = store
        self.threads = threads
        self.requested = tuple(p.lower() for p in providers)
        self._warn_fn = warn
        self._warned: set[str] = set()
        self.providers, missing = resolve_providers(self.requested, available_providers())
        if missing:
            self._warn(missing, "is not available in this onnxruntime build")
        self._sessions: dict[str, onnxruntime.InferenceSession] = {}
        self._lock = threading.Lock()
        self.created = 0  # sessions built by this pool (each model once)

    def _warn(self, names: Sequence[str], why: str) -> None:
        fresh = [n for n in names if n not in self._warned]
        if not fresh:
            return
        self._warned.update(fresh)
        verb = "is" if len(fresh) == 1 else "are"
        message = (
            f"execution provider {', '.join(fresh)} {why.replace('is ', verb + ' ', 1)}; "
            "running on the CPU instead (slower)"
        )
        self.warn(message)

    def warn(self, message: str) -> None:
        """Say `message` once through the pool's warning channel (the CLI prints one stderr line)."""
        if self._warn_fn is not None:
            self._warn_fn(message)
        else:
            warnings.warn(message, ProviderFallbackWarning, stacklevel=4)

    def session_options(self) -> onnxruntime.SessionOptions:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # Errors become one-line FacefuseErrors; onnxruntime's own console warnings would only add noise.
        options.log_severity_level = 3
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        return options

    def get(self, name: str) -> onnxruntime.InferenceSession:
        """The session of registry model `name`, created on first use (path checked by the store)."""
        key = f"model:{name}"
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                path = self.store.path(name)
                session = self._create(path, label=f"model {name}")
                self._sessions[key] = session
            return session

    def open(self, path: Path) -> onnxruntime.InferenceSession:
        """A session for an ONNX file outside the registry, with the same providers and options."""
        path = Path(path)
        key = f"file:{path.resolve()}"
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                if not path.is_file():
                    raise ModelMissing(f"{path}: no such model file")
                session = self._create(path, label=None)
                self._sessions[key] = session
            return session

    def _create(self, path: Path, label: str | None) -> onnxruntime.InferenceSession:
        import onnxruntime

        try:
            session = onnxruntime.InferenceSession(
                str(path), sess_options=self.session_options(), providers=self.providers
            )
        except Exception as exc:
            if self.providers == [CPU]:
                raise ModelCorrupt(_corrupt_message(label, path, exc)) from exc
            # An accelerator that is listed but cannot start (driver, libraries): retry on the CPU
            # so that a broken file is still told apart from a broken provider.
            try:
                session = onnxruntime.InferenceSession(
                    str(path), sess_options=self.session_options(), providers=[CPU]
                )
            except Exception as cpu_exc:
                raise ModelCorrupt(_corrupt_message(label, path, cpu_exc)) from cpu_exc
            failed = [_short(p) for p in self.providers if p != CPU]
            self._warn(failed, "failed to start")
            self.providers = [CPU]
            self.created += 1
            return session
        active = set(session.get_providers())
        silent = [_short(p) for p in self.providers if p != CPU and p not in active]
        if silent:
            self._warn(silent, "failed to start")
        self.created += 1
        return session


def _corrupt_message(label: str | None, path: Path, exc: Exception) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    # onnxruntime says "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from P failed:Protobuf ...".
    detail = first.rsplit(" : ", 1)[-1]
    if detail.startswith("Load model from ") and " failed:" in detail:
        detail = detail.split(" failed:", 1)[1]
    detail = detail.strip() or type(exc).__name__
    if len(detail) > 160:
        detail = detail[:157] + "..."
    prefix = f"{label}: " if label else ""
    return f"{prefix}{path} is not a valid ONNX model (truncated or corrupt): {detail}"
