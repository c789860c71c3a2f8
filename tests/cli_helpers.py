"""Running the CLI as a user would (a fresh process) and checking its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from facefuse.errors import ExitCode

CLI_TIMEOUT_S = 180


def cli_env(config: Path) -> dict[str, str]:
    """The test process's environment, with signing keys in `config` and no debug tracebacks."""
    env = {k: v for k, v in os.environ.items() if k != "FACEFUSE_DEBUG"}
    env["FACEFUSE_CONFIG_DIR"] = str(config)
    return env


def run_cli(config: Path, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facefuse", *map(str, args)],
        env=cli_env(config),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def assert_one_line_error(
    proc: subprocess.CompletedProcess[str], code: ExitCode, *mentions: str | Path
) -> str:
    """Exit `code`, stderr is one `facefuse: error:` line naming each of `mentions`, no traceback."""
    detail = f"rc={proc.returncode}\nstdout={proc.stdout!r}\nstderr={proc.stderr!r}"
    assert proc.returncode == int(code), detail
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, detail
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, detail
    assert lines[0].startswith("facefuse: error:"), detail
    for mention in mentions:
        assert str(mention) in lines[0], detail
    assert proc.stdout == "", detail
    return lines[0]
