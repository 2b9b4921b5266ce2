#!/usr/bin/env bash
# Set up, then run the whole loop on the built-in tiny Qwen2 and Strandset sample: train the small-batch
# preset, evaluate base vs adapter with rustc, merge and verify, serve and ask. Offline, CPU, minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTCODER_EXTRAS="${RUSTCODER_EXTRAS:-serve,playground}" bash scripts/setup.sh
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
export PATH="$HOME/.cargo/bin:$PATH"
VENV="${RUSTCODER_VENV:-.venv}"
exec "$VENV/bin/rustcoder" demo "$@"
