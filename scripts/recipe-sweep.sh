#!/usr/bin/env bash
# Train several recipes side by side (P at a time: on one GPU, small models leave it mostly
# idle, so 8 CIFAR-10 runs together take about as long as 2 alone) and tabulate their errors.
#
#   scripts/recipe-sweep.sh DATA RECIPES [OUTDIR]      (from the repository's root)
#
# DATA: a prepared directory, or what `alexnet prepare` takes (a folder of class folders),
# or a .tar.gz of one (unpacked and prepared into OUTDIR/data first).
# RECIPES: one run a line, "NAME ARGS..." (# starts a comment; no quoting: arguments are
# split at spaces); each run is `alexnet train $BASE --data DATA ARGS --out
# OUTDIR/runs/NAME`, BASE defaulting to --preset cifar10. Every run is stopped (SIGTERM:
# it saves its checkpoint) DEADLINE seconds after the sweep starts (default 3600); one
# not started by then is listed as such, and so is a NAME whose run folder exists (a rerun
# into the same OUTDIR starts only the new names). Writes OUTDIR/results.tsv (every NAME of
# RECIPES with a run folder: last validated epoch, its validation top-1 error, the
# summary's final error, seconds) and appends to OUTDIR/sweep.log (commit, device, each
# run's exit status). PYTHON defaults to .venv's.
set -u
[ $# -ge 2 ] || { sed -n 2,17p "$0" >&2; exit 2; }
DATA=$1 RECIPES=$2 OUTDIR=${3:-sweep}
P=${P:-8} DEADLINE=${DEADLINE:-3600}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
BASE=${BASE:---preset cifar10}
END=$(($(date +%s) + DEADLINE))
mkdir -p "$OUTDIR/runs"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
LOG=$OUTDIR/sweep.log
{
    echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown); BASE: $BASE"
    nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "no GPU"
} >>"$LOG"
if [ ! -f "$DATA/meta.json" ]; then
    src=$DATA
    if [[ $DATA == *.tar.gz ]]; then
        mkdir -p "$OUTDIR/src" && tar xzf "$DATA" -C "$OUTDIR/src" || exit 1
        src=$OUTDIR/src
        top=("$src"/*)  # one wrapper folder (cifar10-jpeg/): the dataset is inside it
        if [ ${#top[@]} = 1 ] && [ -d "${top[0]}" ]; then src=${top[0]}; fi
    fi
    "$PY" -m alexnet prepare "$src" "$OUTDIR/data" >"$OUTDIR/prepare.log" 2>&1 || {
        echo "prepare failed: see $OUTDIR/prepare.log" | tee -a "$LOG" >&2
        exit 1
    }
    DATA=$OUTDIR/data
fi

one() { # one NAME ARGS...: a run, stopped at END
    local name=$1 left=$((END - $(date +%s))) t0=$SECONDS rc
    shift
    if [ "$left" -lt 30 ]; then
        echo "$name not started: the deadline came" >>"$LOG"
        return
    fi
    # shellcheck disable=SC2086 # BASE is a list of arguments
    timeout -k 60 "$left" "$PY" -m alexnet train $BASE --data "$DATA" "$@" \
        --out "$OUTDIR/runs/$name" >"$OUTDIR/runs/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc $((SECONDS - t0))s: $*" >>"$LOG"
}
set -f # BASE and the recipes' arguments are words, never file patterns
names=()
while IFS= read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    read -r -a words <<<"$line"
    [ ${#words[@]} -gt 0 ] || continue
    name=${words[0]}
    if [[ " ${names[*]} " == *" $name "* ]]; then
        echo "$name not started: a second line with this name" >>"$LOG"
        continue
    fi
    names+=("$name")
    if [ -e "$OUTDIR/runs/$name" ]; then
        echo "$name not started: $OUTDIR/runs/$name exists" >>"$LOG"
        continue
    fi
    while [ "$(jobs -rp | wc -l)" -ge "$P" ]; do wait -n; done
    one "${words[@]}" </dev/null &
done <"$RECIPES"
wait

for name in "${names[@]}"; do
    [ -d "$OUTDIR/runs/$name" ] || continue
    "$PY" - "$OUTDIR/runs/$name" <<'PY'
import csv, json, sys
from pathlib import Path
d = Path(sys.argv[1])
rows = [r for r in csv.DictReader(open(d / "metrics.csv")) if r["val_top1_error"]] if (d / "metrics.csv").is_file() else []
last = rows[-1] if rows else {"epoch": "-", "val_top1_error": ""}
err = f"{100 * float(last['val_top1_error']):.2f}" if last["val_top1_error"] else "-"
try:
    s = json.loads((d / "summary.json").read_text())
    final, secs = f"{100 * s['final_val_top1_error']:.2f}", f"{s['wall_seconds']:.0f}"
except (OSError, ValueError, KeyError, TypeError):
    final, secs = "-", "-"
print(d.name, last["epoch"], err, final, secs, sep="\t")
PY
done >"$OUTDIR/results.tsv"
cat "$LOG" "$OUTDIR/results.tsv"
