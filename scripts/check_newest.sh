#!/usr/bin/env bash
# Does rustcoder survive the newest releases of the stacks whose internals it touches? Installs the newest
# transformers, TRL, PEFT and accelerate (torch pinned to the CPU wheel) into a throwaway venv, everything else
# as constraints.txt pins it, and runs the fast test layer (pytest -m "not slow"). Run it in CI on a schedule
# and before raising the upper bounds in pyproject.toml; a private name that moved fails in
# tests/test_compat.py, by name.
#
#   bash scripts/check_newest.sh                     # exit status: pytest's (0: the newest releases pass)
#   RUSTCODER_NEWEST_VENV=/tmp/newest bash scripts/check_newest.sh -k compat   # keep the venv; pytest args
#
# The venv is deleted at the end unless RUSTCODER_NEWEST_VENV names one. Needs the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
TORCH="${RUSTCODER_TORCH:-torch==2.13.0}"   # the CPU wheel; an unpinned torch pulls several GB of CUDA
UNDER_TEST=(transformers trl peft accelerate)
if [ -n "${RUSTCODER_NEWEST_VENV:-}" ]; then
    VENV="$RUSTCODER_NEWEST_VENV"
else
    TMP="$(mktemp -d -t rustcoder-newest.XXXXXX)"
    VENV="$TMP/venv"
    trap 'rm -rf "$TMP"' EXIT
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip install --upgrade pip
pip install "$TORCH"
# 1. rustcoder with its test extras, pinned as CI pins them (the packages under test float: they come next)
pattern="$(IFS='|'; echo "${UNDER_TEST[*]}")"
grep -v -i -E "^(${pattern})==" constraints.txt > "$VENV/constraints-others.txt"
pip install -c "$VENV/constraints-others.txt" -e ".[dev,serve,playground,trackio,plots]"
# 2. the newest releases of the packages under test, past pyproject's upper bounds (what a user's upgrade gets);
#    anything they need newer than the pins moves too, torch excepted
pip install --upgrade "$TORCH" "${UNDER_TEST[@]}"
echo "newest releases under test:"
"$VENV/bin/python" - "${UNDER_TEST[@]}" <<'EOF'
import sys
from importlib.metadata import version
print("  " + ", ".join(f"{name} {version(name)}" for name in ["torch", *sys.argv[1:]]))
EOF
# rustcoder's own upper bounds are expected to complain here; anything else is a real conflict
"$VENV/bin/python" -m pip check | grep -v "^rustcoder " || true

export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false
export PATH="$HOME/.cargo/bin:$PATH"
status=0
"$VENV/bin/python" -m pytest -m "not slow" -q -p no:cacheprovider "$@" || status=$?
if [ "$status" = 0 ]; then
    echo "newest releases: the fast layer passes; the upper bounds in pyproject.toml can move past them"
else
    echo "newest releases: the fast layer FAILS (pytest exit $status); see tests/test_compat.py's failures first"
fi
exit "$status"
