"""End to end: the installed ``da-train`` command as a user runs it."""

import json
import os
import shutil
import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# the installed console script when on PATH, else the same entry point through the module
EXE = [shutil.which("da-train")] if shutil.which("da-train") else [sys.executable, "-m",
                                                                   "da_train.cli"]
TAGS = ["train/loss_cls", "train/loss_transfer", "train/domain_acc", "train/lam", "train/lr",
        "val/source_acc", "val/target_acc"]


def da_train(args, cwd, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([*EXE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def small(root):
    return [f"data.root={root}", "data.download=false", "trainer.steps=20",
            "trainer.eval_every=10", "trainer.log_every=5", "trainer.batch_size=8"]


def test_dann_run_writes_tensorboard_results_checkpoint(tiny_root, tmp_path):
    out = tmp_path / "run"
    proc = da_train(["method=dann", *small(tiny_root), f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 20 and 0 <= results["target_acc"] <= 1
    assert results["device"] == "cpu" and "torch" in results["versions"]
    assert "method=dann" in results["overrides"]
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [5, 10, 15, 20]
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert set(TAGS) <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("val/target_acc")] == [10, 20]
    import torch
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 20 and "domain_head.0.weight" in ckpt["method"]


def test_multirun_makes_one_folder_per_job(tiny_root, tmp_path):
    proc = da_train(["-m", "method=source_only,dann", *small(tiny_root),
                     f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(jobs) == 2 and jobs[0].startswith("0_") and "method=source_only" in jobs[0]
    for job in jobs:
        assert (tmp_path / "sweep" / job / "results.json").exists()


def test_bad_override_exits_nonzero_naming_key(tmp_path):
    proc = da_train(["method.lam=abc"], tmp_path)
    assert proc.returncode != 0 and "method.lam" in proc.stderr
    proc = da_train(["trainer.steps=0"], tmp_path)
    assert proc.returncode == 2 and "trainer.steps" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_data_gives_one_clear_message(tmp_path):
    proc = da_train([f"data.root={tmp_path / 'empty'}", "data.download=false"], tmp_path)
    assert proc.returncode == 2
    assert "train-images-idx3-ubyte" in proc.stderr and "data.download=true" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_real_data_dann_run(real_root, tmp_path):
    out = tmp_path / "real"
    proc = da_train(["method=dann", f"data.root={real_root}", "data.download=false",
                     f"data.cache_root={tmp_path}", "trainer.steps=30", "trainer.eval_every=30",
                     f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 30 and results["source_acc"] > 0.1
