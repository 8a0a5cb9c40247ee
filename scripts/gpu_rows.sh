#!/usr/bin/env bash
# The results rows of issue 33 that a 2-core CPU cannot carry (measured there, one thread per
# run, two runs side by side: DIRT-T's network 0.3 steps/s, i.e. 9 hours per 10,000-step run;
# MCD 4 steps/s and mean teacher 3.5-4.5 steps/s at batch 256, 40-50 minutes per run; the
# CDAN code's 46,850 steps, 73 minutes), as da-train sweeps on one GPU, several runs packed
# on it with the joblib launcher.
#
# On a machine prepared by scripts/gpu_prepare.sh (carry gpu_carry/), from the repo root:
#   bash scripts/gpu_rows.sh                       every group, in the order below
#   bash scripts/gpu_rows.sh dirtt_mnistm mcd      only these groups
# Environment: BUDGET_S (default 480): no group starts after this many seconds, and a running
# group is stopped at it (its finished runs are kept; its unfinished runs are lost, since
# checkpoints do not come back: run that group again); JOBS (default 8) runs at a time;
# STEPS (unset) overrides trainer.steps for a smoke test.
# Writes rows.tar.gz into $OUT (else ./gpu_check_out): each run folder's results.json,
# status.json, metrics.jsonl, cli.log and .hydra/ (no checkpoints, events or embeddings).
# Back on the CPU machine, unpack it and archive the finished runs into docs/runs:
#   tar -xzf rows.tar.gz -C outputs/gpu_rows
#   da-report docs/results.csv docs/runs outputs/gpu_rows --archive docs/runs ...
#   (the full command is in docs/results-notes.md, "How these numbers were produced").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
BUDGET_S=${BUDGET_S:-480}
JOBS=${JOBS:-8}
R=$(mktemp -d)
export PYTHONPATH="$PWD:$PWD/gpu_carry/site${PYTHONPATH:+:$PYTHONPATH}"
export DA_DATA_ROOT="$PWD/gpu_carry/data" DA_CACHE_DIR="$R/cache"
START=$(date +%s)

# group name -> the sweep's overrides (the commands of docs/results-notes.md's open rows; seed 0
# of mean teacher, MCD and the CDAN code protocol ran on the CPU and is archived)
declare -A ROWS=(
  [dirtt_mnistm]="experiment=dirtt_mnist_mnistm seed=0,1,2"
  [mean_teacher]="experiment=mean_teacher_mnist_usps,mean_teacher_usps_mnist,mean_teacher_mnist_mnistm seed=1,2"
  [mcd]="experiment=mcd_mnist_usps,mcd_usps_mnist,mcd_mnist_mnistm seed=1,2"
  [dirtt_usps]="experiment=dirtt_mnist_usps,dirtt_usps_mnist seed=0,1,2"
  [cdan_code]="experiment=cdan_code_mnist_usps,cdan_code_usps_mnist seed=1,2"
)
ORDER_ALL=(dirtt_mnistm mean_teacher mcd dirtt_usps cdan_code)
ORDER=("${ORDER_ALL[@]}")
[ $# -gt 0 ] && ORDER=("$@")

for group in "${ORDER[@]}"; do
  if [ -z "${ROWS[$group]:-}" ]; then
    echo "gpu_rows.sh: unknown group '$group'; the groups are: ${ORDER_ALL[*]}" >&2
    exit 2
  fi
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$R/gpu.txt"
for group in "${ORDER[@]}"; do
  overrides=${ROWS[$group]}
  left=$((BUDGET_S - ($(date +%s) - START)))
  if [ "$left" -le 30 ]; then
    echo "== budget spent: $group and later groups not started" | tee -a "$R/log.txt"
    break
  fi
  echo "== $(date +%T) $group ($left s left): $overrides" | tee -a "$R/log.txt"
  # shellcheck disable=SC2086  # the overrides are words on purpose
  timeout "$left" python3 -c 'import sys; from da_train.cli import main; sys.exit(main())' \
    -m $overrides ${STEPS:+trainer.steps=$STEPS} data.download=false \
    hydra/launcher=joblib hydra.launcher.n_jobs="$JOBS" hydra.sweep.dir="$R/rows/$group" \
    > "$R/$group.txt" 2>&1
  echo "rc=$? $(grep -l '"status": "completed"' "$R"/rows/"$group"/*/status.json 2>/dev/null \
    | wc -l) runs finished" | tee -a "$R/log.txt"
done

mkdir -p "$OUT"
tar -czf "$OUT/rows.tar.gz" -C "$R" --exclude=cache --exclude='*.pt' --exclude=tb \
  --exclude='embeddings.npz' .
ls -la "$OUT"
