"""What every ONNX model wrapper shares: checking a session against its contract, and reading initializers.

Wrappers take an already-open session (anything with onnxruntime's `run`/`get_inputs`/`get_outputs`),
so production passes `SessionPool.get(name)` and tests pass sessions of tiny models they build. A
session that does not have the inputs a family needs (a detector given where a swapper belongs, a
re-export with other shapes) is refused here with one line naming what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from facefuse.errors import ModelCorrupt

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
}


class SessionLike(Protocol):
    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, np.ndarray]) -> list: ...
    def get_inputs(self) -> list: ...
    def get_outputs(self) -> list: ...


@dataclass(frozen=True)
class TensorSpec:
    """One input as a family's contract has it: `None` in `shape` is any size (or a symbolic one)."""

    shape: tuple[int | None, ...]
    dtype: type | tuple[type, ...] = np.float32


@dataclass(frozen=True)
class Port:
    """One of a session's inputs: its name, shape (ints, or None where dynamic) and numpy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: type


def ports(nodes: Sequence[Any]) -> list[Port]:
    out = []
    for node in nodes:
        shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (node.shape or ()))
        out.append(Port(node.name, shape, _ORT_TYPES.get(node.type, np.float32)))
    return out


def _fits(port: Port, spec: TensorSpec) -> bool:
    dtypes = spec.dtype if isinstance(spec.dtype, tuple) else (spec.dtype,)
    if len(port.shape) != len(spec.shape) or all(np.dtype(port.dtype) != np.dtype(d) for d in dtypes):
        return False
    return all(p is None or s is None or p == s for p, s in zip(port.shape, spec.shape, strict=True))


def _show(shape: Sequence[int | None]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def bind_inputs(
    session: SessionLike,
    model: str,
    wanted: Mapping[str, TensorSpec],
    aliases: Mapping[str, Sequence[str]] = {},
) -> dict[str, Port]:
    """Map each wanted role to one of the session's inputs, by name (or alias), else by position.

    Exports of one family disagree on names ('input' / 'input.1', 'x' / 'w'), so a name is tried
    first and the position in `wanted`'s order is the fallback; shape and dtype must always fit.
    """
    have = ports(session.get_inputs())
    if len(have) != len(wanted):
        raise _mismatch(model, wanted, have)
    by_name = {p.name: p for p in have}
    bound: dict[str, Port] = {}
    for i, (role, spec) in enumerate(wanted.items()):
        port = next((by_name[n] for n in (role, *aliases.get(role, ())) if n in by_name), None)
        if port is None:
            port = have[i]
        if not _fits(port, spec) or port in bound.values():
            raise _mismatch(model, wanted, have)
        bound[role] = port
    return bound


def check_outputs(session: SessionLike, model: str, count: int | Sequence[int]) -> list[Port]:
    outs = ports(session.get_outputs())
    allowed = (count,) if isinstance(count, int) else tuple(count)
    if len(outs) not in allowed:
        raise ModelCorrupt(
            f"{model}: the model has {len(outs)} output(s); this family has {' or '.join(map(str, allowed))}"
        )
    return outs


def _mismatch(model: str, wanted: Mapping[str, TensorSpec], have: Sequence[Port]) -> ModelCorrupt:
    want = ", ".join(f"{r} {_show(s.shape)} {_dtypes(s)}" for r, s in wanted.items())
    got = ", ".join(f"{p.name} {_show(p.shape)} {np.dtype(p.dtype).name}" for p in have) or "none"
    return ModelCorrupt(f"{model}: not a {model} model: it takes {got}; expected {want}")


def _dtypes(spec: TensorSpec) -> str:
    dtypes = spec.dtype if isinstance(spec.dtype, tuple) else (spec.dtype,)
    return "|".join(np.dtype(d).name for d in dtypes)


def last_initializer(path: Path, model: str = "model") -> np.ndarray:
    """The graph's last initializer as float32 (inswapper's emap), without loading external weights."""
    import onnx
    from onnx import numpy_helper

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError on a truncated file
        raise ModelCorrupt(f"{path}: not a readable ONNX file ({model}): {type(exc).__name__}") from exc
    if not proto.graph.initializer:
        raise ModelCorrupt(f"{path}: {model} has no initializers, so it carries no emap")
    return numpy_helper.to_array(proto.graph.initializer[-1]).astype(np.float32)
