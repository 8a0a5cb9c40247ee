"""A new user's first hour (issue 17, CLI parts): typos, --help, --version, no litter."""

import json
from pathlib import Path

import pytest
from cli_helpers import da_train, small

CONF = Path(__file__).resolve().parents[1] / "da_train" / "conf"


@pytest.mark.parametrize("override,key,suggestion", [
    ("+trainer.step=5", "trainer.step", "trainer.steps"),
    ("trainer.step=5", "trainer.step", "trainer.steps"),
    ("+data.source=/path/src", "data.source", "Did you mean data."),
    ("++optim.lrr=0.1", "optim.lrr", "optim.lr"),
])
def test_unknown_key_is_rejected_with_or_without_plus(tmp_path, override, key, suggestion):
    proc = da_train([override, "trainer.steps=2"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr and suggestion in proc.stderr
    assert "append" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("da-train: error") == 1
    assert not (tmp_path / "outputs").exists()  # rejected before Hydra made any folder


def test_added_key_of_another_method_is_rejected_and_leaves_no_folder(tiny_root, tmp_path):
    """method.kernel is a DDC key: `+method.kernel=linear` with DANN would be ignored."""
    out = tmp_path / "run"
    proc = da_train([*small(tiny_root, steps=2), "+method.kernel=linear",
                     f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "method.kernel" in proc.stderr and "append" not in proc.stderr
    assert not out.exists()


def test_hydra_keys_keep_working(tiny_root, tmp_path):
    out = tmp_path / "run"
    proc = da_train([*small(tiny_root, steps=2), "trainer.embed_samples=0",
                     f"hydra.run.dir={out}", "hydra.job.name=first_hour",
                     "hydra.verbose=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "results.json").is_file() and not (out / "cli.log").exists()
    assert (out / "first_hour.log").is_file()  # hydra.job.name names the job log


def test_rejected_config_leaves_no_run_folder(tiny_root, tmp_path):
    out = tmp_path / "run"
    proc = da_train([*small(tiny_root, steps=2), "method.weight=-1", f"hydra.run.dir={out}"],
                    tmp_path)
    assert proc.returncode == 2
    assert "method.weight=-1" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
    from da_train.report import find_run_folders
    assert find_run_folders([tmp_path]) == []


def test_missing_data_leaves_no_run_folder(tmp_path):
    out = tmp_path / "run"
    proc = da_train(["data=mnist01_23", f"data.root={tmp_path / 'empty'}",
                     "data.download=false", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 2 and "train-images-idx3-ubyte" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_help_describes_commands_and_user_groups_only(tmp_path):
    proc = da_train(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("da-train trains and evaluates unsupervised domain adaptation")
    assert "powered by Hydra" not in text
    for command in ("run ", "sweep ", "resume ", "report ", "offline "):
        assert f"\n{command}" in text
    assert "hydra/launcher=joblib hydra.launcher.n_jobs=2" in text
    assert "data.download=false" in text and "20,000 on MNIST -> MNIST-M" in text
    for hidden in ("method_schema", "schema:", "inject_nan_at"):
        assert hidden not in text
    # every choice a user can pick is listed, as the registries know it (experiments by the
    # pattern and examples); each registered choice also has its conf file
    import importlib

    importlib.import_module("da_train.cli")  # registers everything, as the command does
    from da_train.data.pairs import PAIRS
    from da_train.methods import CHOICES  # method modules and their presets
    from da_train.models import BACKBONES

    registries = {"method": set(CHOICES), "data": set(PAIRS), "backbone": set(BACKBONES),
                  "optim": {p.stem for p in (CONF / "optim").glob("*.yaml")}}
    lines = text.splitlines()
    for group, registered in registries.items():
        i = next(k for k, x in enumerate(lines) if x.startswith(f"{group}:"))
        listed = lines[i].split(":", 1)[1]
        for more in lines[i + 1:]:  # continuation lines of a long list
            if not more.startswith(" " * 12) or not more.strip():
                break
            listed += "," + more
        assert {c.strip() for c in listed.split(",") if c.strip()} == registered, group
        assert registered == {p.stem for p in (CONF / group).glob("*.yaml")}, group
    assert "experiment: <method>_<data>" in text


def test_version_names_da_train_torch_and_hydra(tmp_path):
    import hydra
    import torch
    proc = da_train(["--version"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("da-train 0.")
    assert f"torch {torch.__version__}" in proc.stdout
    assert f"hydra {hydra.__version__}" in proc.stdout


def test_sweep_folders_lead_with_swept_keys(tiny_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = da_train(["-m", *small(tiny_root, steps=2, method="source_only"),
                     "trainer.embed_samples=0", "seed=3,4", f"hydra.sweep.dir={sweep}"],
                    tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert names == ["seed=3", "seed=4"]  # no constants such as data.download=False
    results = json.loads((sweep / "seed=4" / "results.json").read_text())
    assert "seed=4" in results["overrides"] and results["objective"]["name"] == "source_acc"
