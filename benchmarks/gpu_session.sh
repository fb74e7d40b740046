#!/usr/bin/env bash
# One lent GPU session's checks for issues 11 and 12, in one call of the device tool: a session gets 15 minutes of
# device time, a machine takes one or two to start, and one call runs at most 10, so everything goes in one
# command. Checks run in the order given (default: the taps, then several runs sharing the GPU), each under its
# own time cap; one that would not end inside the session's budget is left out, and says so. Logs go to $OUT.
#
#   here:  make setup && bash tools/gpu_kit.sh           # wheels and CIFAR-10 into .gpu/ (60 of the 64 MiB carried)
#   then:  run(command="bash benchmarks/gpu_session.sh", carry=[".gpu"], timeout_s=600)
#          run(command="bash benchmarks/gpu_session.sh feed taps", carry=[".gpu"], timeout_s=600)   # others first
#   plumbing on a CPU, with the .venv's libraries:  GPU_SESSION_DEVICE=cpu .venv/bin/python ... see DRY below
#
# Checks (docs/performance.md says what each figure decides):
#   taps    benchmarks/taps_compile.py under CUDA graphs: KD, AT with features as outputs of a traced forward, AT with
#           forward hooks; images/s and the recompile / CUDA-graph logs (issue 12 item 1). About 3 minutes.
#   shared  benchmarks/shared_gpu.py: total images/s of 1, 2 and 4 cifar_resnet seeds side by side (item 3). ~5 min.
#   feed    benchmarks/gpu_feed.py: the streaming loader against resident tensors at 224 px (issue 9's figure). ~4 min.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=${GPU_SESSION_DEVICE:-cuda}
BUDGET=${GPU_SESSION_BUDGET:-570}   # seconds this command may take: under the call's 600
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
START=$(date +%s)
CHECKS=("$@")
[ ${#CHECKS[@]} -gt 0 ] || CHECKS=(taps shared)

say() { echo "$*" | tee -a "$OUT/session.log"; }

if [ "$DEVICE" = cuda ]; then
    # The image's own Python (3.12, torch, timm) plus the kit's wheels; its data beside the checkout, where the
    # benchmarks look for it.
    [ -d .gpu/wheels ] || { say "no .gpu/wheels: run tools/gpu_kit.sh here first and carry .gpu"; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl \
        || { say "installing the kit's wheels failed"; exit 2; }
    export PYTHONPATH=/tmp/site:$PWD
    mkdir -p ../shared/data && ln -sfn "$PWD/.gpu/cifar10" ../shared/data/cifar10
    PYTHON=python3
else
    PYTHON=${PYTHON:-python3}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
DRY=$([ "$DEVICE" = cuda ] && echo 0 || echo 1)

{
    date -Is
    git log -1 --format='distillctl %h %s' 2>/dev/null || echo "distillctl (no git)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PYTHON" -c "import torch, timm, hydra, datasets; print('torch', torch.__version__, 'timm', timm.__version__, 'hydra', hydra.__version__, 'datasets', datasets.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee -a "$OUT/session.log"

# A check's cap in seconds and its arguments: full size on the GPU, or its plumbing at the smallest sizes on a CPU.
plan() {
    case $1 in
    taps) cap=240
        full=(benchmarks/taps_compile.py --device cuda --mode reduce-overhead --steps 30 --variants none outputs hooks --why)
        dry=(benchmarks/taps_compile.py --device cpu --mode aot_eager --steps 2 --warmup 1 --batch 16 --threads 1) ;;
    shared) cap=330
        full=(benchmarks/shared_gpu.py --concurrency 1 2 4 --steps 200 --rounds 1 --json "$OUT/shared.json")
        dry=(benchmarks/shared_gpu.py --device cpu --concurrency 1 2 --steps 2 --rounds 1 --train-limit 512 --json "$OUT/shared.json") ;;
    feed) cap=270
        full=(benchmarks/gpu_feed.py --images 20000 --workers 12 --rounds 2 --json "$OUT/feed.json")
        dry=(benchmarks/gpu_feed.py --device cpu --images 400 --steps 2 --batch 8 --rounds 1 --threads 1 --teacher resnet18 --json "$OUT/feed.json") ;;
    *) return 1 ;;
    esac
    if [ "$DRY" = 1 ]; then args=("${dry[@]}"); else args=("${full[@]}"); fi
}

for name in "${CHECKS[@]}"; do
    if ! plan "$name"; then
        say "== $name: no such check (taps, shared, feed)"
        continue
    fi
    left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt "$cap" ]; then
        say "== $name: left out, ${left}s left of the session's ${BUDGET}s and it may take ${cap}s"
        continue
    fi
    say "== $name (at most ${cap}s): $PYTHON ${args[*]}"
    t0=$(date +%s)
    timeout -k 10 "$cap" "$PYTHON" "${args[@]}" > "$OUT/$name.log" 2>&1
    rc=$?
    say "== $name: exit $rc$([ $rc = 124 ] && echo ' (its cap ran out)') after $(($(date +%s) - t0))s"
    # The figures are in the last lines; --why logs can run long, and the tool returns files of 16 MiB at most.
    grep -v -E '^\s*$' "$OUT/$name.log" | tail -8 | tee -a "$OUT/session.log"
    if [ "$(stat -c %s "$OUT/$name.log")" -gt 15000000 ]; then
        { head -c 7000000 "$OUT/$name.log"; echo "... cut ..."; tail -c 7000000 "$OUT/$name.log"; } > "$OUT/$name.cut" && mv "$OUT/$name.cut" "$OUT/$name.log"
    fi
done
say "session: $(($(date +%s) - START))s"
