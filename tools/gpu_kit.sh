#!/usr/bin/env bash
# Packs, here, what a lent GPU machine needs to run distillctl, into .gpu/ (ignored by git, carried by the device
# tool): wheels of the libraries its image lacks, at the versions `make setup` installed here (those the tests pass
# with), and the CIFAR-10 copy from ../shared, which does not travel. The image has Python 3.12 with torch, timm,
# onnx, rich and matplotlib, but not Hydra, OmegaConf, datasets or torch-pruning.
#
#   make setup && bash tools/gpu_kit.sh
#   then, with the device tool: run(command="bash benchmarks/gpu_session.sh", carry=[".gpu"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."

# Only distillctl's own needs the image lacks (and datasets' newer pins): optuna and the trackers are not needed by
# the GPU checks. antlr4-python3-runtime is published as a source archive only, so it is built into a wheel here.
NEEDED=(hydra-core omegaconf antlr4-python3-runtime datasets dill multiprocess huggingface_hub fsspec torch-pruning hydra-joblib-launcher)
VENV_PYTHON=${VENV_PYTHON:-.venv/bin/python}
[ -x "$VENV_PYTHON" ] || { echo "run 'make setup' first: the kit takes its versions from .venv" >&2; exit 2; }
[ -d ../shared/data/cifar10 ] || { echo "../shared/data/cifar10 is missing: the GPU checks train on it" >&2; exit 2; }

mapfile -t PINS < <("$VENV_PYTHON" - "${NEEDED[@]}" <<'EOF'
import sys
from importlib import metadata
for name in sys.argv[1:]:
    print(f"{name}=={metadata.version(name)}")
EOF
)

grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/wheels
BINARY=() SOURCE=()
for pin in "${PINS[@]}"; do
    case $pin in antlr4-python3-runtime==*) SOURCE+=("$pin") ;; *) BINARY+=("$pin") ;; esac
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels "${BINARY[@]}"
python3 -m pip wheel --quiet --no-deps -w .gpu/wheels "${SOURCE[@]}"
cp -r ../shared/data/cifar10 .gpu/cifar10

# The device tool carries at most 64 MiB: the tracked tree, untracked files git does not ignore, and .gpu/.
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
kit=$(du -sb .gpu | cut -f1)
total=$((tree + kit))
printf '%s\n' "${PINS[@]}" > .gpu/wheels/PINS
ls .gpu/wheels
echo "kit: $((kit / 1048576)) MiB, with the tree $((total / 1048576)) MiB of the 64 MiB the device tool carries"
[ "$total" -le $((64 * 1048576)) ] || { echo "too big to carry: leave untracked files out of the tree" >&2; exit 1; }
