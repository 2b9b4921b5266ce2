#!/usr/bin/env bash
# Set up, then train the small-batch preset on the built-in tiny Qwen2 and Strandset sample: offline, CPU, minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
VENV="${RUSTCODER_VENV:-.venv}"
exec "$VENV/bin/rustcoder" train --preset small-batch --model tiny-qwen2 --dataset sample "$@"
