#!/usr/bin/env bash
# Prepare the folder the GPU check carries to a bare GPU machine (../shared does not travel,
# and that machine has torch, torchvision, tensorboard, tqdm, scipy but not hydra-core,
# omegaconf or antlr4): pure-Python packages from this venv + the data the check reads.
# Writes gpu_carry/ (git-ignored, about 35 MB). Then, on the GPU machine, from the repo root:
#   bash scripts/gpu_check.sh            (results tarred into $OUT, else ./gpu_check_out)
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DA_DATA_ROOT:-../shared/data}
SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf gpu_carry && mkdir -p gpu_carry/site gpu_carry/data/MNIST/raw gpu_carry/data/BSDS500 \
  gpu_carry/data/USPS
# + pytest (the GPU tests) and what it imports, where the venv has them
for pkg in hydra omegaconf antlr4 hydra_plugins joblib yaml pytest _pytest pluggy iniconfig \
           packaging py.py; do
  [ -e "$SITE/$pkg" ] && cp -r "$SITE/$pkg" gpu_carry/site/
done
find gpu_carry/site -name __pycache__ -prune -exec rm -rf {} +
cp "$DATA"/MNIST/raw/*.gz gpu_carry/data/MNIST/raw/
cp -r "$DATA"/BSDS500/train gpu_carry/data/BSDS500/
cp "$DATA"/USPS/usps.bz2 "$DATA"/USPS/usps.t.bz2 gpu_carry/data/USPS/
du -sh gpu_carry
