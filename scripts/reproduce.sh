#!/usr/bin/env bash
# Reproduce the results table: every preset in conf/experiment/ with 3 seeds, then da-report.
# Usage: DA_DATA_ROOT=<data folder> bash scripts/reproduce.sh [pair ...]
#   pair: mnist01_23 and/or mnist_mnistm (default: both). Extra da-train overrides can be
#   passed in DA_TRAIN_ARGS (e.g. DA_TRAIN_ARGS="trainer.device=cuda").
# Output: outputs/reproduce/<pair>/ (run folders), docs/results.md and docs/results.csv.
set -euo pipefail
pairs=("${@:-mnist01_23 mnist_mnistm}")
read -r -a pairs <<< "${pairs[*]}"
seeds=${SEEDS:-0,1,2}
for pair in "${pairs[@]}"; do
  for preset in da_train/conf/experiment/*_"${pair}".yaml; do
    name=$(basename "${preset}" .yaml)
    method=${name%_"${pair}"}
    # shellcheck disable=SC2086
    da-train -m "experiment=${name}" "method=${method}" "seed=${seeds}" data.download=false \
      "hydra.sweep.dir=outputs/reproduce/${pair}/${name}" ${DA_TRAIN_ARGS:-} \
      || echo "reproduce.sh: some runs of ${name} failed (listed by da-report)" >&2
  done
done
da-report outputs/reproduce --md docs/results.md --csv docs/results.csv --notes docs/results-notes.md \
  --title "da-train results (3 seeds, final step)"
