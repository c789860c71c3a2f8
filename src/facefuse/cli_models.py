"""`facefuse models list|download|verify|path`, and the model options any subcommand can take."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facefuse.errors import (
    ExitCode,
    FacefuseError,
    ModelCorrupt,
    ModelHashMismatch,
    ModelMissing,
)
from facefuse.models.registry import Registry, default_registry
from facefuse.models.sessions import PROVIDERS, SessionPool
from facefuse.models.store import MODELS_DIR_ENV, ModelStore, VerifyResult, default_models_dir


class ModelUsageError(FacefuseError):
    exit_code = ExitCode.USAGE


EXAMPLES = """\
examples:
  facefuse models list                         every model, its size, licence and whether it is here
  facefuse models download inswapper_128 arcface_w600k_r50
  facefuse models verify                       re-hash every installed model
  facefuse models path gfpgan_1.4              print the checked local path
  facefuse models verify inswapper_128 --model inswapper_128=~/Downloads/inswapper_128.onnx
"""


def add_models_folder_arguments(parser: Any, purpose: str = "models folder") -> None:
    """--models-dir and --no-verify, on a parser or an argument group; `purpose` opens the folder's help."""
    parser.add_argument(
        "--models-dir",
        type=Path,
        metavar="DIR",
        help=f"{purpose} (default: ${MODELS_DIR_ENV}, else ~/.cache/facefuse/models; see `facefuse models`)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip size and SHA-256 checks of model files (they must still load as ONNX)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--models-dir, --model NAME=PATH, --no-verify, --execution-provider, --threads."""
    group = parser.add_argument_group("models")
    add_models_folder_arguments(group)
    group.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="use a local file for model NAME (checked against the registry hash); repeatable",
    )
    group.add_argument(
        "--execution-provider",
        action="append",
        choices=list(PROVIDERS),
        metavar="PROVIDER",
        help=f"onnxruntime provider, in order of preference ({', '.join(PROVIDERS)}); "
        "an unavailable one falls back to cpu with a warning; repeatable (default: cpu)",
    )
    group.add_argument("--threads", type=int, metavar="N", help="CPU threads per model session")


def parse_model_overrides(items: Sequence[str]) -> dict[str, Path]:
    overrides: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ModelUsageError(f"--model expects NAME=PATH, got {item!r}")
        overrides[name.strip()] = Path(path).expanduser()
    return overrides


def store_from_args(args: argparse.Namespace, registry: Registry | None = None) -> ModelStore:
    models_dir = args.models_dir.expanduser() if args.models_dir else default_models_dir()
    return ModelStore(
        registry or default_registry(),
        models_dir,
        overrides=parse_model_overrides(args.model),
        verify=not args.no_verify,
    )


def _print_warning(message: str) -> None:
    print(f"facefuse: warning: {message}", file=sys.stderr)


def store_and_pool_from_args(
    args: argparse.Namespace, registry: Registry | None = None
) -> tuple[ModelStore, SessionPool]:
    if args.threads is not None and args.threads < 1:
        raise ModelUsageError("--threads must be at least 1")
    store = store_from_args(args, registry)
    providers = args.execution_provider or ["cpu"]
    return store, SessionPool(store, providers=providers, threads=args.threads, warn=_print_warning)


def add_parser(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    models = sub.add_parser(
        "models",
        help="list, download, verify and locate the learned models (ONNX)",
        description="Manage the learned models. Nothing is downloaded except by `facefuse models download`.",
        epilog=EXAMPLES,
        formatter_class=fmt,
    )
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    p_list = msub.add_parser("list", help="every model in the registry and whether it is installed")
    p_list.add_argument("--purpose", help="only models of this purpose (detector, swapper, ...)")
    p_list.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_model_arguments(p_list)
    p_list.set_defaults(func=cmd_models_list)

    p_dl = msub.add_parser("download", help="download models (resumable, size- and hash-checked)")
    p_dl.add_argument("names", nargs="*", metavar="NAME")
    p_dl.add_argument("--all", action="store_true", help="download every model in the registry")
    add_model_arguments(p_dl)
    p_dl.set_defaults(func=cmd_models_download)

    p_verify = msub.add_parser("verify", help="re-check installed models against their hashes")
    p_verify.add_argument("names", nargs="*", metavar="NAME", help="default: every installed model")
    add_model_arguments(p_verify)
    p_verify.set_defaults(func=cmd_models_verify)

    p_path = msub.add_parser("path", help="print the checked local path of a model")
    p_path.add_argument("name", metavar="NAME")
    add_model_arguments(p_path)
    p_path.set_defaults(func=cmd_models_path)


def _size_text(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e6:.1f} MB"


def cmd_models_list(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    names = store.registry.names(args.purpose)
    if args.purpose and not names:
        raise ModelUsageError(f"no models of purpose {args.purpose!r}")
    rows = []
    for name in names:
        spec = store.registry.get(name)
        target = store.target(name)
        rows.append(
            {
                "name": spec.name,
                "purpose": spec.purpose,
                "family": spec.family,
                "file": spec.filename,
                "size": spec.size,
                "sha256": spec.sha256,
                "pinned": spec.sha256 is not None,
                "installed": target.is_file(),
                "path": str(target),
                "url": spec.url,
                "licence": spec.licence,
            }
        )
    if args.json:
        print(json.dumps({"models_dir": str(store.models_dir), "models": rows}))
        return ExitCode.OK
    print(f"models folder: {store.models_dir}")
    for r in rows:
        mark = "installed" if r["installed"] else "-"
        pin = "pinned" if r["pinned"] else "unpinned"
        size = _size_text(r["size"])
        print(f"  {r['name']:<20} {r['purpose']:<10} {size:>9}  {pin:<8}  {mark:<9}  {r['licence']}")
    return ExitCode.OK


def _progress_bar(name: str):
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=total,
                initial=done,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=name,
                file=sys.stderr,
                disable=not sys.stderr.isatty(),
                leave=True,
            )
        bar.update(done - bar.n)

    def close() -> None:
        if bar is not None:
            bar.close()

    return update, close


def cmd_models_download(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    names = store.registry.names() if args.all else list(dict.fromkeys(args.names))
    if not names:
        raise ModelUsageError("name at least one model to download, or pass --all")
    for name in names:
        store.registry.get(name)  # an unknown name fails before anything is fetched
    for name in names:
        update, close = _progress_bar(name)
        try:
            path = store.download(name, progress=update)
        finally:
            close()
        print(path)
    return ExitCode.OK


def cmd_models_verify(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    if args.names:
        names = list(dict.fromkeys(args.names))
        for name in names:
            store.registry.get(name)
    else:
        names = [n for n in store.registry.names() if store.target(n).is_file()]
        if not names:
            print(f"no models installed in {store.models_dir}")
            return ExitCode.OK
    results = [store.check(name) for name in names]
    failures = [r for r in results if not r.ok]
    for r in results:
        if r.ok:
            print(f"{r.name}: {r.status}: {r.detail} ({r.path})")
    if failures:
        raise _verify_error(failures)
    return ExitCode.OK


def _verify_error(failures: list[VerifyResult]) -> FacefuseError:
    first = failures[0]
    kind = {"missing": ModelMissing, "corrupt": ModelCorrupt, "mismatch": ModelHashMismatch}[first.status]
    more = ""
    if len(failures) > 1:
        more = f" (and {len(failures) - 1} more: {', '.join(f.name for f in failures[1:])})"
    return kind(first.detail + more)


def cmd_models_path(args: argparse.Namespace) -> int:
    store = store_from_args(args)
    print(store.path(args.name))
    return ExitCode.OK
