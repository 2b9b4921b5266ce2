#!/usr/bin/env bash
# Download, pinned as in constraints.txt, the wheels an offline GPU box lacks into a wheelhouse (.whl/), and
# write .whl/setup.sh, which the box sources first. Run it here, where the package index is reachable, in a
# checkout; then carry the checkout with .whl/ to the box (docs/gpu.md):
#
#   bash scripts/gpu_wheelhouse.sh                  # the training stack + the GPU tests' serve stack
#   bash scripts/gpu_wheelhouse.sh --list           # print the pinned wheels, download nothing
#   source .whl/setup.sh && python3 scripts/gpu_checks.py --out "$OUT"     # on the box
#
# The box: a CUDA build of torch already installed (never carried: it is GBs), Python $WHEEL_PYTHON (3.12),
# numpy, pyarrow, pandas and PyYAML present; no network. Settings: WHEELHOUSE (.whl), WHEEL_PYTHON (3.12),
# EXTRA_PKGS (more names, e.g. "trackio gradio-client orjson" for live metrics), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELHOUSE="${WHEELHOUSE:-.whl}"
WHEEL_PYTHON="${WHEEL_PYTHON:-3.12}"
PY="${PYTHON:-python3}"

# What the box lacks or holds in other versions: the training stack, and (scripts/gpu_checks.py --extra-pkgs)
# what the GPU tests' serve step needs. Each name is spelled as constraints.txt spells it.
TRAINING="transformers peft trl datasets huggingface_hub tokenizers dill multiprocess accelerate safetensors
          httpx2 httpcore2 click fsspec regex truststore idna sacrebleu"
SERVE="$("$PY" scripts/gpu_checks.py --extra-pkgs)"
PKGS="$TRAINING $SERVE ${EXTRA_PKGS:-}"

specs=()
for p in $PKGS; do
    pin=$(grep -i "^${p}==" constraints.txt | head -1 || true)
    if [ -z "$pin" ]; then
        echo "error: $p is not pinned in constraints.txt; pin it there (name==version) so the box gets what CI tested" >&2
        exit 1
    fi
    specs+=("$pin")
done

if [ "${1:-}" = "--list" ]; then
    printf '%s\n' "${specs[@]}"
    exit 0
fi
if [ -n "${1:-}" ]; then
    echo "usage: bash scripts/gpu_wheelhouse.sh [--list]" >&2
    exit 2
fi

mkdir -p "$WHEELHOUSE"
# --no-deps: exactly the pinned set (the box has the rest); binary wheels for the box's Python and platform.
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$WHEEL_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELHOUSE" "${specs[@]}"

cat > "$WHEELHOUSE/setup.sh" <<EOS
# Sourced on the GPU box from the project root: installs the carried wheels into /tmp/site and imports
# rustcoder from the checkout (python3 -m rustcoder ...; nothing is installed into the box's Python).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $WHEELHOUSE/*.whl \\
  || { echo "wheel install failed"; return 1; }
export PYTHONPATH=/tmp/site:\$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, peft, trl; print('gpu:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none', '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| trl', trl.__version__)"
EOS
echo "wheels in $WHEELHOUSE/: $(ls "$WHEELHOUSE"/*.whl | wc -l) ($(du -sh "$WHEELHOUSE" | cut -f1)); carry the checkout with" \
     "$WHEELHOUSE/ and start each command on the box with: source $WHEELHOUSE/setup.sh &&"
