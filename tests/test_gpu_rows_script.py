"""scripts/gpu_rows.sh: the sweeps it starts on a GPU machine (python3 and nvidia-smi are
replaced by stubs that print their arguments, so nothing trains)."""

import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {p.stem for p in (ROOT / "da_train/conf/experiment").glob("*.yaml")}


def _run(tmp_path, *groups, **env):
    if shutil.which("bash") is None:
        pytest.skip("bash not available")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python3", "nvidia-smi"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*"\n')
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    return subprocess.run(
        ["bash", "scripts/gpu_rows.sh", *groups], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             "OUT": str(out), **env}), out


def test_every_group_sweeps_existing_presets_packed_with_joblib(tmp_path):
    proc, out = _run(tmp_path, STEPS="3")
    assert proc.returncode == 0, proc.stderr
    groups = [line for line in proc.stdout.splitlines() if line.startswith("== ")]
    assert [g.split()[2] for g in groups] == \
        ["dirtt_mnistm", "mean_teacher", "mcd", "dirtt_usps", "cdan_code"]
    with tarfile.open(out / "rows.tar.gz") as tar:
        logs = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()
                if m.name.endswith(".txt") and m.isfile()}
    # each group's stub output is the python3 command line the group ran
    for name in ("dirtt_mnistm", "mean_teacher", "mcd", "dirtt_usps", "cdan_code"):
        [cmd] = logs[f"./{name}.txt"].splitlines()
        assert " -m experiment=" in cmd and "trainer.steps=3" in cmd
        assert "hydra/launcher=joblib hydra.launcher.n_jobs=8" in cmd
        presets = cmd.split(" -m experiment=")[1].split()[0].split(",")
        assert presets and set(presets) <= PRESETS, presets
    for name in ("mean_teacher", "mcd", "cdan_code"):  # seed 0 of these rows is archived
        assert " seed=1,2 " in logs[f"./{name}.txt"], name
    assert " seed=0,1,2 " in logs["./dirtt_mnistm.txt"] + " "


def test_an_unknown_group_is_refused_before_anything_runs(tmp_path):
    proc, out = _run(tmp_path, "mcd", "dirt")
    assert proc.returncode == 2
    assert "unknown group 'dirt'" in proc.stderr and "dirtt_mnistm" in proc.stderr
    assert "python3" not in proc.stdout and not out.exists()


def test_a_spent_budget_starts_no_group_and_still_writes_the_archive(tmp_path):
    proc, out = _run(tmp_path, "mcd", BUDGET_S="10")
    assert proc.returncode == 0
    assert "budget spent: mcd" in proc.stdout
    assert (out / "rows.tar.gz").is_file()
