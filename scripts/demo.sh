#!/usr/bin/env bash
# Quick start, step 1: install, then swap Grace Hopper (matplotlib) onto the astronaut (scikit-image).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/facefuse demo --output "${1:-facefuse-demo.png}"
.venv/bin/facefuse inspect "${1:-facefuse-demo.png}"
