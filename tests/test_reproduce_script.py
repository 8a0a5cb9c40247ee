"""scripts/reproduce.sh: which da-train commands it issues (da-train and da-report are
replaced by stubs that only print their arguments, so nothing trains)."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def commands(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("da-train", "da-report"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*"\n')
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)

    def run(*pairs, **env):
        if shutil.which("bash") is None:
            pytest.skip("bash not available")
        proc = subprocess.run(
            ["bash", "scripts/reproduce.sh", *pairs], cwd=ROOT, capture_output=True, text=True,
            env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()
    return run


def test_every_preset_of_the_pair_runs_with_three_seeds_and_the_report_follows(commands):
    lines = commands("mnist01_23")
    presets = sorted(p.stem for p in (ROOT / "da_train/conf/experiment").glob("*_mnist01_23.yaml"))
    runs = [line for line in lines if line.startswith("da-train")]
    assert len(runs) == len(presets)  # no variant row is for mnist01_23
    for preset in presets:
        method = preset.removesuffix("_mnist01_23")
        [line] = [r for r in runs if f"experiment={preset} " in r]
        assert f"experiment={preset} method={method} seed=0,1,2 data.download=false" in line
        assert f"hydra.sweep.dir=outputs/reproduce/mnist01_23/{preset}" in line
        assert "data.cache_root" not in line
    assert lines[-1].startswith("da-report outputs/reproduce --md docs/results.md")
    assert lines[-1].endswith("--archive docs/runs")  # the records to commit


def test_mnistm_runs_cache_the_built_dataset_and_include_the_variant_rows(commands):
    runs = [line for line in commands("mnist_mnistm", SEEDS="0") if line.startswith("da-train")]
    assert all("data.cache_root=data" in line and "seed=0 " in line for line in runs)
    variant = [line for line in runs if "dann_mnist_mnistm_main" in line]
    assert len(variant) == 1
    assert "experiment=dann_mnist_mnistm method=dann seed=0 data.normalize=instance " \
           "trainer.steps=20000" in variant[0]
    assert not [line for line in commands("mnist_mnistm", VARIANTS="0")
                if "data.normalize=instance" in line]


def test_usps_pairs_include_cdan_e_on_the_full_training_sets(commands):
    for pair in ("mnist_usps", "usps_mnist"):
        runs = [line for line in commands(pair, METHODS="cdan") if line.startswith("da-train")]
        [full] = [line for line in runs if f"cdan_{pair}_cdane_full" in line]
        assert "method.entropy=true data.source.limit=0 data.target.limit=0" in full
        # the CDAN code's protocol is a preset of its own, run as one (it trains method=cdan)
        [code] = [line for line in runs if f"experiment=cdan_code_{pair} " in line]
        assert f"experiment=cdan_code_{pair} method=cdan seed=0,1,2 data.download=false" in code
        assert f"hydra.sweep.dir=outputs/reproduce/{pair}/cdan_code_{pair} " in code + " "
        assert len(runs) == 3  # the preset, its full-set CDAN+E and the code's protocol


def test_each_preset_runs_the_method_its_file_names(commands):
    lines = [line for line in commands("mnist_usps", VARIANTS="0") if line.startswith("da-train")]
    presets = sorted((ROOT / "da_train/conf/experiment").glob("*_mnist_usps.yaml"))
    assert len(lines) == len(presets)
    for path in presets:
        method = next(line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
                      if line.strip().startswith("- override /method:"))
        [line] = [r for r in lines if f"experiment={path.stem} " in r]
        assert f"experiment={path.stem} method={method} seed=0,1,2 " in line
        assert line.endswith(f"hydra.sweep.dir=outputs/reproduce/mnist_usps/{path.stem}")


def test_methods_and_out_choose_the_presets_and_the_folder(commands):
    lines = commands("usps_mnist", "mnist_usps", METHODS="source_only dann", OUT="outputs/results")
    runs = [line for line in lines if line.startswith("da-train")]
    assert sorted(r.split()[2] for r in runs) == [  # DANN twice: its instance-input variant
        "experiment=dann_mnist_usps", "experiment=dann_mnist_usps",
        "experiment=dann_usps_mnist", "experiment=dann_usps_mnist",
        "experiment=source_only_mnist_usps", "experiment=source_only_mnist_usps",
        "experiment=source_only_usps_mnist", "experiment=source_only_usps_mnist"]
    full = [r for r in runs if "_full" in r]  # source-only on the full sets: CDAN+E's reference
    assert len(full) == 2 and all("data.source.limit=0 data.target.limit=0" in r for r in full)
    assert "hydra.sweep.dir=outputs/results/usps_mnist/dann_usps_mnist" in " ".join(runs)
    assert lines[-1].startswith("da-report outputs/results --md docs/results.md")
    mnistm = [line for line in commands("mnist_mnistm", METHODS="adda")
              if line.startswith("da-train")]
    assert len(mnistm) == 1 and "experiment=adda_mnist_mnistm" in mnistm[0]
