#!/usr/bin/env bash
# Every GPU check of the CUDA-graph step in one run (about 7 minutes on one H200), on a
# machine prepared by scripts/gpu_prepare.sh (carry gpu_carry/). Writes gpu_check.tar.gz
# into $OUT (or ./gpu_check_out): the test log, bench JSONs, main-job results, packing.
# What each step measures is what docs/performance.md's GPU section reports.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
R=$(mktemp -d)
export PYTHONPATH="$PWD:$PWD/gpu_carry/site${PYTHONPATH:+:$PYTHONPATH}"
export DA_DATA_ROOT="$PWD/gpu_carry/data" DA_CACHE_DIR="$R/cache"
DA="python3 -c 'import sys; from da_train.cli import main; sys.exit(main())'"
step() { echo "== $(date +%T) $*" | tee -a "$R/log.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$R/gpu.txt"
python3 -c "import torch; print(torch.__version__, torch.version.cuda)" | tee -a "$R/gpu.txt"

step "1. graph vs eager on every method, resume with graphs, the host-sync guard on CUDA"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_graph_gpu.py \
  tests/test_graph.py > "$R/tests.txt" 2>&1; echo "rc=$?" >> "$R/tests.txt"; tail -3 "$R/tests.txt"

step "2. bench: eager trainer, its eager bound, the graph bound; then the graph trainer"
for graph in false true; do
  timeout 100 python3 scripts/bench.py --device cuda --method dann --data mnist_mnistm \
    --steps 1000 --repeats 3 --workers 4 --override trainer.cuda_graph=$graph \
    --json "$R/bench_dann_graph_$graph.json" > "$R/bench_dann_graph_$graph.txt" 2>&1
  tail -12 "$R/bench_dann_graph_$graph.txt"
done

step "3. the README's main job with graphs, 3 seeds (wall time, accuracy)"
for seed in 0 1 2; do
  /usr/bin/time -f "wall %e s" timeout 60 bash -c "$DA method=dann data=mnist_mnistm \
    trainer.cuda_graph=true seed=$seed hydra.run.dir=$R/main/s$seed" > "$R/main_s$seed.txt" 2>&1
  tail -2 "$R/main_s$seed.txt"
done

step "4. bf16 autocast and channels_last on the digit net (graph trainer)"
for extra in "trainer.amp=true" "trainer.channels_last=true"; do
  timeout 60 python3 scripts/bench.py --device cuda --method dann --data mnist_mnistm \
    --steps 500 --repeats 3 --workers 0 --override trainer.cuda_graph=true --override $extra \
    --json "$R/bench_${extra//[.=]/_}.json" > "$R/bench_${extra//[.=]/_}.txt" 2>&1
  tail -4 "$R/bench_${extra//[.=]/_}.txt"
done

step "5. packing: 1, 2, 4, 8 graph jobs on the one GPU (joblib launcher), 5,000 steps each"
for n in 1 2 4 8; do
  seeds=$(seq -s, 0 $((n - 1)))
  /usr/bin/time -f "wall %e s" timeout 90 bash -c "$DA -m method=dann data=mnist_mnistm \
    trainer.cuda_graph=true trainer.steps=5000 seed=$seeds hydra/launcher=joblib \
    hydra.launcher.n_jobs=$n hydra.sweep.dir=$R/pack$n" > "$R/pack_$n.txt" 2>&1
  tail -1 "$R/pack_$n.txt"
done

step "done"
mkdir -p "$OUT"
tar -czf "$OUT/gpu_check.tar.gz" -C "$R" --exclude=cache --exclude='*.pt' --exclude='tb' .
ls -la "$OUT"
