#!/usr/bin/env bash
# Create .venv (or $RUSTCODER_VENV) with rustcoder and its pinned dependencies. CPU torch, no CUDA download.
# Extras: RUSTCODER_EXTRAS (default dev,serve,playground,trackio,plots: everything the tests use).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RUSTCODER_VENV:-.venv}"
EXTRAS="${RUSTCODER_EXTRAS:-dev,serve,playground,trackio,plots}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
# torch first, pinned: the CPU wheel; an unpinned torch would pull several GB of CUDA.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$EXTRAS]"
echo "rustcoder installed in $VENV"
