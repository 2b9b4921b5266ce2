#!/usr/bin/env bash
# Open the playground on a running OpenAI-compatible server (default: `rustcoder serve` on 127.0.0.1:8000).
#   bash serve/playground.sh                                            # http://127.0.0.1:7860
#   COMPARE=http://127.0.0.1:8002/v1 bash serve/playground.sh           # side by side with a second server
#   ENDPOINT=http://gpu-box:8000/v1 RUSTCODER_API_KEY=... bash serve/playground.sh --port 7861
# Extra arguments go to `rustcoder playground` (see its --help). Needs: pip install 'rustcoder[playground]'.
set -euo pipefail
cd "$(dirname "$0")/.."
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1
VENV="${RUSTCODER_VENV:-.venv}"
RUSTCODER="$VENV/bin/rustcoder"
[ -x "$RUSTCODER" ] || RUSTCODER=rustcoder
args=(--endpoint "${ENDPOINT:-http://127.0.0.1:8000/v1}")
if [ -n "${COMPARE:-}" ]; then args+=(--compare "$COMPARE"); fi
exec "$RUSTCODER" playground "${args[@]}" "$@"
