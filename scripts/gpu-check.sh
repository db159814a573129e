#!/usr/bin/env bash
# Every GPU check in one run (about 7 minutes on one H100): the gpu-marked tests and the
# GPU benchmarks: one JSON file per benchmark, gpu-check.log (everything printed) and
# status.txt in OUTDIR (default gpu-check/).
#
#   scripts/gpu-check.sh [OUTDIR]
#
# Needs: a CUDA GPU, PyTorch + torchvision, this checkout (run from its root; the package
# is used from src/, nothing is installed), and prepared ImageNet-format data for the data
# and end-to-end benchmarks: $PREPARED (default data/imagenet-samples; when it is missing
# it is made with `alexnet prepare` from $SAMPLES, default ../shared/data/imagenet-samples).
# Wheels in .whl/ (simplejpeg, where the machine lacks it) are installed into /tmp/site.
# Each step has its own time limit, so one that hangs cannot take the rest with it;
# OUTDIR/status.txt lists every step's exit status; SKIP="data e2e" leaves steps out. The
# script exits 1 when a step failed, 2 without a CUDA device.
set -u
OUTDIR=${1:-gpu-check}
PREPARED=${PREPARED:-data/imagenet-samples}
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
: >"$OUTDIR/status.txt"

if ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import simplejpeg" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

LOG=$OUTDIR/gpu-check.log
step() {  # step NAME SECONDS COMMAND...: output to the log and this script's output
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    if [[ " ${SKIP:-} " == *" $name "* ]]; then
        echo "$name skipped (SKIP)" | tee -a "$OUTDIR/status.txt"
        return
    fi
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$OUTDIR/status.txt"
    [ "$rc" = 0 ] || FAILED="$FAILED $name"
}
FAILED=

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu-check: no CUDA device visible to $PY; nothing to check" >&2
    exit 2
fi
{
    echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    git status --short 2>/dev/null | sed 's/^/  changed: /'
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
    nproc
} 2>&1 | tee "$LOG"

if [ ! -f "$PREPARED/meta.json" ]; then
    step prepare 120 "$PY" -m alexnet prepare "${SAMPLES:-../shared/data/imagenet-samples}" "$PREPARED"
fi
step tests 170 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
BENCH=("$PY" -m alexnet benchmark --device cuda)
step lrn 50 "${BENCH[@]}" lrn --repeats 20 -o "$OUTDIR/lrn.json"
step model 100 "${BENCH[@]}" model --precisions bf16 --layouts channels_last \
    --batch-size 128,512 --repeats 30 -o "$OUTDIR/model.json"
step profile 50 "$PY" scripts/profile-step.py --batch 512
step data 70 "${BENCH[@]}" data --prepared "$PREPARED" --copies 20 --steps 200 \
    --batch-size 256 -o "$OUTDIR/data.json"
step e2e 120 "${BENCH[@]}" e2e --prepared "$PREPARED" --copies 100 --steps 600 \
    --batch-size 256 -o "$OUTDIR/e2e.json"
cat "$OUTDIR/status.txt"
if [ -n "$FAILED" ]; then
    echo "gpu-check: failed:$FAILED" >&2
    exit 1
fi
