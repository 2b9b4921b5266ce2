#!/usr/bin/env bash
# Set up, then run the whole loop on the built-in tiny Qwen2 and Strandset sample: train the small-batch
# preset, evaluate base vs adapter with rustc, merge and verify, serve and ask. Offline, CPU, minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "rustcoder needs Python 3.10 or newer; '$PY' is $("$PY" --version 2>/dev/null || echo 'not found')." >&2
    echo "Install one and point PYTHON at it: PYTHON=python3.11 bash scripts/quickstart.sh" >&2
    exit 1
fi
RUSTCODER_EXTRAS="${RUSTCODER_EXTRAS:-serve,playground}" bash scripts/setup.sh
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
export PATH="$HOME/.cargo/bin:$PATH"
VENV="${RUSTCODER_VENV:-.venv}"
exec "$VENV/bin/rustcoder" demo "$@"
