#!/usr/bin/env bash
# One-call GPU check of orch on the GPU machine (see ../shared/notes/gpu-anchors.md).
#
#   bash benchmarks/gpu_run.sh               # on the GPU machine: ~6-8 min on one H100
#   bash benchmarks/gpu_run.sh --compile     # also a torch.compile run at batch 128 (~1 min more)
#   bash benchmarks/gpu_run.sh --processes   # also a process per point vs long-lived processes (~2 min more)
#   bash benchmarks/gpu_run.sh --cpu-smoke   # here, without a GPU: the same steps, tiny, on the CPU
#
# Steps (GPU mode):
#   1. install .gpu/wheels (mlflow, optuna, ...) into .gpu/site; PYTHONPATH=.gpu/site:<repo>
#   2. extract CIFAR-10 (JPEG ImageFolder) into a temp dir; the decode cache goes there too
#   3. python3 -m orchestrator run on CIFAR-10 (40,000 train / 10,000 val), --device cuda,
#      batch 128 for 3 epochs and batch 8 for 2 epochs (+ batch 128 with train.compile=true
#      under --compile); seconds per epoch in steady state from the epoch/* metric
#      timestamps (epochs >= 2), beside the anchors of gpu-anchors.md
#   4. packed runs: benchmarks/sweep_parallel.py --gpu, --runs-per-gpu 1 vs 4, on a small
#      CIFAR grid (4 norms x 2 seeds, batch 128, 2 epochs)
#   4b. with --processes: the same grid at --runs-per-gpu 1 with a process per point vs
#      long-lived processes (benchmarks/sweep_parallel.py --processes)
#   5. benchmarks/norms.py --device cuda
#   6. a short summary table, last; copies of the reports under $OUT when it is set
#
# A time budget (ORCH_GPU_BUDGET_S, default 540 s) bounds the whole script: each step runs
# under `timeout` with what is left, and a step that would not fit is skipped and reported.
#
# Prepare once, on the machine that sends the working tree (the device tool carries .gpu):
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu
#   cp -r ../shared/wheels/gpu-py312 .gpu/wheels; cp ../shared/data/cifar10-jpeg.tar.xz .gpu/
# and run it with carry [".gpu"]:  bash benchmarks/gpu_run.sh
set -euo pipefail

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }

export ORCH_ARGS="$*"
MODE=gpu
COMPILE=0
PACKED=1
PROCESSES=0
NORMS=1
while (($#)); do
  case "$1" in
    --cpu-smoke) MODE=smoke ;;
    --compile) COMPILE=1 ;;
    --no-packed) PACKED=0 ;;
    --processes) PROCESSES=1 ;;
    --no-norms) NORMS=0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUDGET=${ORCH_GPU_BUDGET_S:-540}
RESERVE=25  # seconds kept for the summary
TMP=$(mktemp -d "${TMPDIR:-/tmp}/orch-gpu-run.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
RESULTS=$TMP/results.tsv
: >"$RESULTS"
export ORCH_CACHE_DIR=$TMP/cache  # decode cache: filled by the first run, read by the later ones
export MPLBACKEND=Agg
export PYTHONUNBUFFERED=1

say() { printf '\n=== [%4ds] %s\n' "$SECONDS" "$*"; }
left() { echo $((BUDGET - RESERVE - SECONDS)); }
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }  # check, result, reference

print_header() {
"$PY" - "$MODE" "$BUDGET" <<'EOF'
import datetime, os, platform, sys
import torch
cpu = platform.processor() or platform.machine()
try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except (OSError, StopIteration):
    pass
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"# orch GPU check ({sys.argv[1]} mode)\n")
print("- command: bash benchmarks/gpu_run.sh " + " ".join(os.environ.get("ORCH_ARGS", "").split()))
print(f"- machine: {cpu}, {os.cpu_count()} cores; GPU: {gpu}")
print(f"- torch {torch.__version__} (CUDA {torch.version.cuda}), Python {platform.python_version()}")
print(f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; budget {sys.argv[2]} s")
EOF
}

# ------------------------------------------------------------------ environment
if [[ $MODE == gpu ]]; then
  missing=0
  compgen -G ".gpu/wheels/*.whl" >/dev/null || { echo "missing: .gpu/wheels/*.whl" >&2; missing=1; }
  [[ -f .gpu/cifar10-jpeg.tar.xz ]] || { echo "missing: .gpu/cifar10-jpeg.tar.xz" >&2; missing=1; }
  if ((missing)); then
    cat >&2 <<'EOF'
Prepare them in the project root (on the machine that sends the working tree), then carry .gpu:
  echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu
  cp -r ../shared/wheels/gpu-py312 .gpu/wheels
  cp ../shared/data/cifar10-jpeg.tar.xz .gpu/
EOF
    exit 2
  fi
  PY=python3
  print_header
  say "installing .gpu/wheels into .gpu/site"
  if [[ ! -d .gpu/site/mlflow ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wheels/*.whl
  fi
  export PYTHONPATH=$ROOT/.gpu/site:$ROOT
  nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv || true
  DEVICE=cuda
  say "extracting CIFAR-10 into $TMP"
  tar -xJf .gpu/cifar10-jpeg.tar.xz -C "$TMP"
  DATA=(--set data.name=imagefolder --set "data.root=$TMP/cifar10" --set data.val_size=10000)
  N_TRAIN=40000
  BIG_EPOCHS=3 SMALL_EPOCHS=2 PACK_EPOCHS=2
  PACK_NORMS="[bn_torch, bn, gn, ln]" PACK_SEEDS="[0, 1]"
  PACK_ARGS=(--gpu --runs-per-gpu 4)
  NORMS_ARGS=(--device cuda)
else
  PY=$ROOT/.venv/bin/python
  [[ -x $PY ]] || PY=python3
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  print_header
  DEVICE=cpu
  TARBALL=""
  for t in .gpu/cifar10-jpeg.tar.xz ../shared/data/cifar10-jpeg.tar.xz; do
    [[ -f $t ]] && { TARBALL=$t; break; }
  done
  if [[ -n $TARBALL ]]; then
    say "smoke: extracting a CIFAR-10 subset (50 images per class and split) from $TARBALL"
    tar -xJf "$TARBALL" -C "$TMP" --wildcards 'cifar10/train/*/00[0-4]?.jpg' 'cifar10/test/*/00[0-4]?.jpg'
    DATA=(--set data.name=imagefolder --set "data.root=$TMP/cifar10" --set data.val_size=100)
    N_TRAIN=400
  else
    say "smoke: no cifar10-jpeg.tar.xz found; using the digits dataset"
    DATA=(--set data.name=digits)
    N_TRAIN=1077  # digits: 1797 - 20% test - 20% val
  fi
  BIG_EPOCHS=3 SMALL_EPOCHS=2 PACK_EPOCHS=1
  PACK_NORMS="[bn_torch, gn]" PACK_SEEDS="[0]"
  PACK_ARGS=(--workers 2)
  NORMS_ARGS=(--device cpu --no-compile --repeats 4 --warmup 1)
fi
DB=$TMP/mlflow.db
URI=sqlite:///$DB

# Steady-state seconds per epoch of one run, read back from the store.
cat >"$TMP/epochs.py" <<'EOF'
"""epochs.py DB RUN_NAME N_TRAIN -> 'steady_s first_s loop_s epochs status' (tab-separated).

steady_s: median gap between consecutive epoch/train_loss timestamps, i.e. the wall time of
epochs 2.. (training + validation + probe + logging); first_s: run start to epoch 1's log
(data loading, CUDA start-up, compilation); loop_s: N_TRAIN / images_per_second, the
synchronised training loop alone, averaged over every epoch including the first."""
import sqlite3, statistics, sys

db, name, n_train = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
row = con.execute("SELECT run_uuid, start_time, status FROM runs WHERE name = ? ORDER BY start_time DESC LIMIT 1",
                  (name,)).fetchone()
if row is None:
    print("-\t-\t-\t0\tMISSING")
    sys.exit(0)
run, start, status = row
ts = [t for _, t in con.execute("SELECT step, MAX(timestamp) FROM metrics WHERE run_uuid = ? "
                                "AND key = 'epoch/train_loss' GROUP BY step ORDER BY step", (run,))]
ips = con.execute("SELECT value FROM metrics WHERE run_uuid = ? AND key = 'images_per_second'", (run,)).fetchone()
gaps = [(b - a) / 1000 for a, b in zip(ts, ts[1:])]
steady = f"{statistics.median(gaps):.2f}" if gaps else "-"
first = f"{(ts[0] - start) / 1000:.2f}" if ts else "-"
loop = f"{n_train / ips[0]:.2f}" if ips and ips[0] else "-"
print(f"{steady}\t{first}\t{loop}\t{len(ts)}\t{status}")
EOF

# ------------------------------------------------------------------ single runs
# run_one NAME BATCH EPOCHS REFERENCE [extra orch args...]
run_one() {
  local name=$1 batch=$2 epochs=$3 ref=$4
  shift 4
  local t
  t=$(left)
  if ((t < 30)); then
    say "SKIPPED $name: only ${t}s of the budget left"
    record "$name" "skipped (time budget)" "$ref"
    return 0
  fi
  say "$name: orch run, batch $batch, $epochs epochs, --device $DEVICE (timeout ${t}s)"
  local cmd=("$PY" -m orchestrator run "${DATA[@]}" --set "train.max_epochs=$epochs" --set "train.patience=$epochs"
    --set "data.batch_size=$batch" "$@" --device "$DEVICE" --tracking-uri "$URI" --experiment gpu-run
    --run-name "$name")
  echo "+ ${cmd[*]}"
  local rc=0
  timeout "$t" "${cmd[@]}" || rc=$?
  local steady=- first=- loop=- n=0 status=MISSING
  IFS=$'\t' read -r steady first loop n status < <("$PY" "$TMP/epochs.py" "$DB" "$name" "$N_TRAIN" || true) || true
  echo "$name: exit $rc, $status, $n epochs logged; steady s/epoch $steady (epochs >= 2, wall incl. validation);" \
    "first epoch $first s; training loop $loop s/epoch (avg, all epochs)"
  if ((rc != 0)); then
    record "$name" "FAILED (exit $rc, $status)" "$ref"
  else
    record "$name" "$steady s/epoch steady (first epoch $first s; train loop $loop s/epoch avg incl. epoch 1)" "$ref"
  fi
}

if [[ $MODE == gpu ]]; then
  REF128="seed-style 5.5 (12.2 first); tuned eager 2.05"
  REF8="seed-style 41; tuned eager 26"
  REFC="tuned+compile 2.61 (16-30 s compile in epoch 1)"
else
  REF128="(CPU smoke: no reference)" REF8=$REF128 REFC=$REF128
fi
run_one bs128-eager 128 "$BIG_EPOCHS" "$REF128"
run_one bs8-eager 8 "$SMALL_EPOCHS" "$REF8"
if ((COMPILE)); then
  run_one bs128-compile 128 "$BIG_EPOCHS" "$REFC" --set train.compile=true
fi

# ------------------------------------------------------------------ packed runs
if ((PACKED)); then
  t=$(left)
  if ((t < 90)); then
    say "SKIPPED packed runs: only ${t}s of the budget left"
    record "packed runs" "skipped (time budget)" "-"
  else
    GRID=$TMP/packed.yaml
    cat >"$GRID" <<EOF
name: packed
base:
  data:
    batch_size: 128
  train:
    max_epochs: $PACK_EPOCHS
    patience: $PACK_EPOCHS
grid:
  model.norm: $PACK_NORMS
seeds: $PACK_SEEDS
EOF
    say "packed runs: benchmarks/sweep_parallel.py ${PACK_ARGS[*]} (timeout ${t}s)"
    if [[ $MODE == smoke ]]; then  # the GPU-mode commands, printed only: no GPU here
      "$PY" benchmarks/sweep_parallel.py --gpu --runs-per-gpu 4 --dry-run --grid "$GRID" "${DATA[@]}"
    fi
    rc=0
    timeout "$t" "$PY" benchmarks/sweep_parallel.py "${PACK_ARGS[@]}" --grid "$GRID" "${DATA[@]}" \
      --python "$PY" --out "$TMP/sweep_parallel.md" || rc=$?
    if ((rc == 0)); then
      speedup=$(grep -o 'speedup = .*' "$TMP/sweep_parallel.md" | sed 's/\*//g')
      if [[ $MODE == gpu ]]; then ref="anchors: 4 processes 4.0x aggregate epochs/s"; else ref="-"; fi
      record "packed runs (${PACK_ARGS[*]})" "$speedup" "$ref"
    else
      record "packed runs (${PACK_ARGS[*]})" "FAILED (exit $rc)" "-"
    fi
  fi
fi

# ------------------------------------------------------------------ long-lived processes
if ((PROCESSES && PACKED)); then
  t=$(left)
  if ((t < 90)); then
    say "SKIPPED long-lived processes: only ${t}s of the budget left"
    record "long-lived processes" "skipped (time budget)" "-"
  else
    if [[ $MODE == gpu ]]; then PROC_ARGS=(--gpu --runs-per-gpu 1); else PROC_ARGS=(--workers 1); fi
    say "long-lived processes: benchmarks/sweep_parallel.py --processes ${PROC_ARGS[*]} (timeout ${t}s)"
    rc=0
    timeout "$t" "$PY" benchmarks/sweep_parallel.py --processes "${PROC_ARGS[@]}" --grid "$GRID" "${DATA[@]}" \
      --python "$PY" --out "$TMP/sweep_processes.md" || rc=$?
    if ((rc == 0)); then
      record "long-lived processes (${PROC_ARGS[*]})" "$(grep -o 'speedup = .*' "$TMP/sweep_processes.md" | sed 's/\*//g')" "-"
    else
      record "long-lived processes (${PROC_ARGS[*]})" "FAILED (exit $rc)" "-"
    fi
  fi
fi

# ------------------------------------------------------------------ norm layers
if ((NORMS)); then
  t=$(left)
  if ((t < 40)); then
    say "SKIPPED norms.py: only ${t}s of the budget left"
    record "norms.py" "skipped (time budget)" "-"
  else
    if [[ $MODE == gpu ]] && ((t < 180)); then NORMS_ARGS+=(--no-compile); fi
    say "benchmarks/norms.py ${NORMS_ARGS[*]} (timeout ${t}s)"
    rc=0
    timeout "$t" "$PY" benchmarks/norms.py "${NORMS_ARGS[@]}" | tee "$TMP/norms.md" || rc=$?
    # "layer mode ratio" for every row that was printed
    ratios=$(awk -F'|' '$5 ~ /(cpu|cuda)/ {gsub(/ /, "", $2); gsub(/ /, "", $4); gsub(/ /, "", $8);
      printf "%s%s %s %s", sep, $2, $4, $8; sep = "; "}' "$TMP/norms.md")
    if ((rc == 0)); then
      record "norms.py ours/torch" "${ratios:-no rows}" "anchors: hand-written BN 2.7x eager, ~1x compiled"
    else
      record "norms.py ours/torch" "FAILED or cut (exit $rc): ${ratios:-no rows}" "-"
    fi
  fi
fi

# ------------------------------------------------------------------ summary
if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then
  cp "$RESULTS" "$OUT/gpu_run_results.tsv"
  for f in sweep_parallel.md sweep_processes.md norms.md; do
    if [[ -f $TMP/$f ]]; then cp "$TMP/$f" "$OUT/$f"; fi
  done
  if [[ -f $DB ]]; then cp "$DB" "$OUT/gpu_run_mlflow.db"; fi
fi
say "summary ($MODE mode, ${SECONDS}s in all)"
echo "| check | result | reference (gpu-anchors.md) |"
echo "|---|---|---|"
while IFS=$'\t' read -r check result ref; do
  echo "| $check | $result | $ref |"
done <"$RESULTS"
if grep -q "FAILED" "$RESULTS"; then exit 1; fi
