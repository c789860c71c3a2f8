#!/usr/bin/env bash
# Quick start, step 2: lint, format check, and the test suite (installs what it needs first: the Debian
# packages in scripts/apt-packages.txt, a real Redis server and Chromium, and the Python environment).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_system.sh
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Signing keys made by tests go to a throwaway folder, never the user's config.
export FACEFUSE_CONFIG_DIR="${FACEFUSE_CONFIG_DIR:-$(mktemp -d)}"
.venv/bin/python -m pytest -q "$@"
