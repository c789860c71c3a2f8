#!/usr/bin/env bash
# Create .venv (if needed) and install facefuse with its demo and test extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip "setuptools<82" wheel
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
