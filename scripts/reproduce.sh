#!/usr/bin/env bash
# Reproduce the results table: every preset in conf/experiment/ with 3 seeds, then da-report.
# Usage: DA_DATA_ROOT=<data folder> bash scripts/reproduce.sh [pair ...]
# The built MNIST-M is cached in ./data (data.cache_root), so a read-only DA_DATA_ROOT works
# and only the first run builds it.
#   pair: mnist01_23, mnist_mnistm, mnist_usps, usps_mnist (default: all four). SEEDS=0,1 changes the seeds;
#   METHODS="source_only dann" runs only those methods' presets (default: every preset of the pair);
#   OUT=<folder> changes the output folder (default outputs/reproduce); extra da-train overrides
#   can be passed in DA_TRAIN_ARGS (e.g. DA_TRAIN_ARGS="trainer.device=cuda").
# Output: $OUT/<pair>/<preset>/ (run folders), docs/results.md and docs/results.csv, and the
# runs' records in docs/runs/ (da-report --archive: a few KB per run, to commit, so the page can
# be rebuilt after the run folders are gone).
# Rerunning continues: finished jobs of a sweep folder are skipped, interrupted ones resume.
set -euo pipefail
pairs=("${@:-mnist01_23 mnist_mnistm mnist_usps usps_mnist}")
read -r -a pairs <<< "${pairs[*]}"
seeds=${SEEDS:-0,1,2}
out=${OUT:-outputs/reproduce}
wanted() { [ -z "${METHODS:-}" ] || [[ " ${METHODS} " == *" $1 "* ]]; }

for pair in "${pairs[@]}"; do
  for preset in da_train/conf/experiment/*_"${pair}".yaml; do
    name=$(basename "${preset}" .yaml)
    # the method the preset trains (cdan_code_mnist_usps trains cdan)
    method=$(sed -n 's|^ *- override /method: *||p' "${preset}")
    wanted "${method}" || continue
    cache=(); [ "${pair}" = mnist_mnistm ] && cache=(data.cache_root=data)
    # shellcheck disable=SC2086
    da-train -m "experiment=${name}" "method=${method}" "seed=${seeds}" data.download=false "${cache[@]}" \
      "hydra.sweep.dir=${out}/${pair}/${name}" ${DA_TRAIN_ARGS:-} \
      || echo "reproduce.sh: some runs of ${name} failed (listed by da-report)" >&2
  done
done
# Variant rows of docs/results.md: "<pair> <preset> <folder suffix> <override>..." (a preset
# run with extra overrides, e.g. another input normalisation). VARIANTS=0 skips them.
# "cdane_full" is CDAN+E on the full training sets, the data the CDAN paper trains on; the
# "full" source-only rows are its reference (how much the data alone gives). (CDAN+E with the
# CDAN digit code's own protocol is a preset of its own, experiment=cdan_code_<pair>, run by the
# loop above: about 70 minutes a run on one CPU core.) The "instance" DANN rows of the USPS
# pairs are VADA's input.
# "main" is the README's main command, `da-train method=dann data=mnist_mnistm`, written as the
# preset plus what the pair's defaults change (tests/test_config.py checks they are equal).
variants=(
  "mnist_mnistm dann_mnist_mnistm main data.normalize=instance trainer.steps=20000"
  "mnist_mnistm dann_mnist_mnistm instance data.normalize=instance"
  "mnist_mnistm source_only_mnist_mnistm instance data.normalize=instance"
  "mnist_mnistm dann_ent_mnist_mnistm instance data.normalize=instance"
  "mnist_usps cdan_mnist_usps cdane_full method.entropy=true data.source.limit=0 data.target.limit=0"
  "usps_mnist cdan_usps_mnist cdane_full method.entropy=true data.source.limit=0 data.target.limit=0"
  "mnist_usps dann_mnist_usps instance data.normalize=instance"
  "usps_mnist dann_usps_mnist instance data.normalize=instance"
  "mnist_usps source_only_mnist_usps full data.source.limit=0 data.target.limit=0"
  "usps_mnist source_only_usps_mnist full data.source.limit=0 data.target.limit=0"
)
if [ "${VARIANTS:-1}" != 0 ]; then
  for variant in "${variants[@]}"; do
    read -r pair name suffix overrides <<< "${variant}"
    [[ " ${pairs[*]} " == *" ${pair} "* ]] && wanted "${name%_"${pair}"}" || continue
    # shellcheck disable=SC2086
    da-train -m "experiment=${name}" "method=${name%_"${pair}"}" "seed=${seeds}" ${overrides} \
      data.download=false data.cache_root=data "hydra.sweep.dir=${out}/${pair}/${name}_${suffix}" \
      ${DA_TRAIN_ARGS:-} || echo "reproduce.sh: some runs of ${name} ${overrides} failed" >&2
  done
fi
da-report "${out}" --md docs/results.md --csv docs/results.csv --notes docs/results-notes.md \
  --title "da-train results (3 seeds, final step)" --archive docs/runs
