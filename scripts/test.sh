#!/usr/bin/env bash
# Set up the environment from scratch (pinned) and run the whole test suite, offline, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false
export PATH="$HOME/.cargo/bin:$PATH"
VENV="${RUSTCODER_VENV:-.venv}"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
