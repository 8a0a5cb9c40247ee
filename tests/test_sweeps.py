"""Sweeps that scale out (issue 16): launchers, preemption, resumable sweeps, Optuna."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import EXE, da_train, da_train_env, small, start_da_train

from da_train import selection, sweeps


def quick(root, steps=4, method="dann"):
    return [*small(root, steps=steps, method=method), "trainer.embed_samples=0"]


def results(folder):
    return json.loads((folder / "results.json").read_text())


def accuracies(folder):
    r = results(folder)
    return r["steps"], r["source_acc"], r["target_acc"], r["target_confusion"]


def snapshot(folder):
    """Bytes and modification times of every file below ``folder``."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_for(path, proc, timeout=240):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < timeout, f"{path} never appeared"
        time.sleep(0.05)


def descendants(pid):
    """Process ids below ``pid`` (Linux /proc), to signal a submitit job as Slurm would."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


# ---------------------------------------------------------------------------- launchers
def test_joblib_runs_four_jobs_two_at_a_time(tiny_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = da_train(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     *quick(tiny_root), "method=source_only,dann", "seed=0,1",
                     f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["method=dann,seed=0", "method=dann,seed=1", "method=source_only,seed=0",
                    "method=source_only,seed=1"]
    for job in jobs:
        r = results(sweep / job)
        method, seed = (part.split("=")[1] for part in job.split(","))
        assert r["method"] == method and f"seed={seed}" in r["overrides"] and r["steps"] == 4
        # two jobs share the cores: each gets half of them (at least one thread)
        threads = max(1, sweeps.available_cores() // 2)
        omp = os.environ.get("OMP_NUM_THREADS", "")
        threads = min(threads, int(omp)) if omp.isdigit() and int(omp) > 0 else threads
        assert f"torch threads: {threads} " in (sweep / job / "cli.log").read_text()


def test_joblib_failing_job_exits_2_and_names_it(tiny_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = da_train(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     *quick(tiny_root, method="source_only"), "optim.lr=0.01,-1",
                     f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "1 of 2 jobs failed" in proc.stderr
    assert f"{sweep / 'optim.lr=-1'}: ConfigError: Invalid config value optim.lr" in proc.stderr
    assert results(sweep / "optim.lr=0.01")["steps"] == 4


def test_submitit_local_preempted_jobs_requeue_and_match_uninterrupted(tiny_root, tmp_path):
    """Both jobs get submitit's preemption signal mid-run: they checkpoint, are requeued
    by submitit, resume, and end exactly where an uninterrupted run ends."""
    args = [*quick(tiny_root, steps=40), "trainer.ckpt_every=5", "trainer.eval_every=20",
            "trainer.threads=1"]
    sweep = tmp_path / "sweep"
    proc = start_da_train(["-m", "hydra/launcher=submitit_local", *args, "seed=0,1",
                           f"hydra.sweep.dir={sweep}"], tmp_path)
    for seed in (0, 1):
        wait_for(sweep / f"seed={seed}" / "checkpoint.pt", proc)
    jobs = [pid for pid in descendants(proc.pid)
            if b"submitit.core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(jobs) == 2
    for pid in jobs:
        subprocess.run(["kill", "-USR2", str(pid)], check=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.err"))
    assert logs.count("requeueing the job") == 2 and logs.count("resuming") == 2
    reference = tmp_path / "reference"
    ref = da_train([*args, "seed=0", f"hydra.run.dir={reference}"], tmp_path)
    assert ref.returncode == 0, ref.stderr
    assert accuracies(sweep / "seed=0") == accuracies(reference)
    assert results(sweep / "seed=1")["steps"] == 40


def continue_command(stderr: str) -> list[str]:
    """The arguments of the "continue the whole sweep" command da-train printed."""
    import shlex

    text = stderr.split("To continue the whole sweep", 1)[1]
    return shlex.split(text.split("run `", 1)[1].split("`", 1)[0])


def test_submitit_local_job_killed_exits_143_and_says_how_to_continue(tiny_root, tmp_path):
    """SIGTERM to one submitit job: it checkpoints, the other job finishes, and the sweep
    exits 143 naming the job folder and the command that continues the sweep (no "has not
    produced any output" error about a result pickle, no --help hint)."""
    sweep = tmp_path / "sweep"
    proc = start_da_train(["-m", "hydra/launcher=submitit_local",
                           *quick(tiny_root, steps=300), "trainer.ckpt_every=5",
                           "trainer.eval_every=100", "trainer.threads=1", "seed=0,1",
                           f"hydra.sweep.dir={sweep}"], tmp_path)
    wait_for(sweep / "seed=0" / "checkpoint.pt", proc)
    jobs = [pid for pid in descendants(proc.pid)
            if b"submitit.core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(jobs) == 2
    os.kill(jobs[0], signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    states = {s: json.loads((sweep / f"seed={s}" / "status.json").read_text())["status"]
              for s in (0, 1)}
    assert sorted(states.values()) == ["completed", "interrupted"], states
    killed = sweep / next(f"seed={s}" for s, state in states.items() if state == "interrupted")
    assert f"job {killed} was stopped by SIGTERM" in err
    assert f"hydra.sweep.dir={sweep}" in " ".join(continue_command(err))
    assert "has not produced any output" not in err and "--help" not in err
    assert "Traceback" not in err and "_log.out" in err  # where the jobs' output goes


# ---------------------------------------------------------------------------- resumable
def test_rerun_skips_finished_jobs_byte_for_byte_and_resumes_the_killed_one(tiny_root,
                                                                          tmp_path):
    sweep = tmp_path / "sweep"
    command = ["-m", *quick(tiny_root, steps=40), "trainer.ckpt_every=5", "trainer.threads=1",
               "trainer.eval_every=20", "seed=0,1,2", f"hydra.sweep.dir={sweep}"]
    proc = start_da_train(command, tmp_path)
    wait_for(sweep / "seed=2" / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert json.loads((sweep / "seed=2" / "status.json").read_text())["status"] == "interrupted"
    # the message gives the command that continues the whole sweep, next to the one-job resume
    assert f"trainer.resume={sweep / 'seed=2'}" in err
    printed = continue_command(err)
    assert printed[:2] == ["da-train", "-m"] and f"hydra.sweep.dir={sweep}" in printed
    before = {seed: snapshot(sweep / f"seed={seed}") for seed in (0, 1)}
    again = da_train(printed[1:], tmp_path)  # the printed command, as the user would run it
    assert again.returncode == 0, again.stderr
    assert "skipped (completed) 2: seed=0, seed=1" in again.stderr
    assert "resumed (interrupted) 1: seed=2" in again.stderr
    assert {seed: snapshot(sweep / f"seed={seed}") for seed in (0, 1)} == before
    assert results(sweep / "seed=2")["steps"] == 40
    assert "resuming" in again.stderr


def test_failed_and_killed_jobs_are_rerun_in_a_clean_folder(tmp_path):
    plan = {"skipped": [], "resumed": [], "reran": []}
    failed, killed, done = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, status in ((failed, "failed"), (killed, "running"), (done, "completed")):
        folder.mkdir()
        (folder / "status.json").write_text(json.dumps({"status": status}))
        (folder / "metrics.jsonl").write_text("{}\n")
    assert sweeps.ResumableSweeperMixin._plan(failed, plan)
    assert sweeps.ResumableSweeperMixin._plan(killed, plan)  # killed before a checkpoint
    assert not sweeps.ResumableSweeperMixin._plan(done, plan)
    assert not failed.exists() and not killed.exists() and done.exists()
    assert plan == {"skipped": ["c"], "resumed": [], "reran": ["a", "b"]}


# ---------------------------------------------------------------------------- plugins
def test_missing_plugin_gives_the_install_command(tmp_path):
    """Simulate an install without the [parallel] extra by hiding the plugin's package."""
    code = ("import sys; sys.modules['hydra_plugins.hydra_joblib_launcher'] = None; "
            "sys.argv = ['da-train', '-m', 'hydra/launcher=joblib', 'seed=0,1']; "
            "from da_train.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=da_train_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert 'pip install "da-train[parallel]"' in proc.stderr
    assert "hydra-joblib-launcher" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_slurm_launcher_config_composes_with_documented_defaults(tmp_path):
    proc = subprocess.run([*EXE, "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                           "--cfg", "hydra", "-p", "hydra.launcher"], cwd=tmp_path,
                          env=da_train_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in text
    for line in ("partition: gpu", "timeout_min: 120", "gpus_per_node: 1", "cpus_per_task: 4",
                 "mem_gb: 16", "max_num_timeout: 20"):
        assert line in text


def test_optuna_study_maximises_the_label_free_objective(tiny_root, tmp_path):
    sweep = tmp_path / "study"
    proc = da_train(["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3",
                     *quick(tiny_root, method="source_only"), "optim.lr=interval(0.001,0.1)",
                     f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    trials = [results(p.parent) for p in sweep.glob("*/results.json")]
    assert len(trials) == 3
    names = sorted(p.parent.name for p in sweep.glob("*/results.json"))
    assert [n.split("=")[0] for n in names] == ["0_optim.lr", "1_optim.lr", "2_optim.lr"]
    assert {t["objective"]["name"] for t in trials} == {"source_acc"}
    assert all(t["objective"]["score"] == t["source_acc"] for t in trials)
    assert not any(t.get("oracle_selection") for t in trials)
    best = (sweep / "optimization_results.yaml").read_text()
    assert "direction: maximize" in (sweep / names[0] / ".hydra" / "hydra.yaml").read_text()
    assert f"best_value: {max(t['source_acc'] for t in trials)}" in best


def test_target_accuracy_objective_marks_oracle_selection(tiny_root, tmp_path):
    out = tmp_path / "run"
    proc = da_train([*quick(tiny_root, steps=2), "objective=target_acc",
                     f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    r = results(out)
    assert r["oracle_selection"] is True and r["objective"]["score"] == r["target_acc"]


# ---------------------------------------------------------------------------- units
def test_job_folder_name_keeps_only_swept_keys():
    job = ["data.download=false", "method=dann", "seed=3", "data.root=/x/y"]
    assert sweeps.job_folder_name(job, ["method", "seed"], 7) == "method=dann,seed=3"
    assert sweeps.job_folder_name(job, [], 7) == "job7"
    assert sweeps.job_folder_name(["experiment=a/b"], ["experiment"], 0) == "experiment=a_b"


def test_threads_share_cores_between_parallel_jobs(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(sweeps, "available_cores", lambda: 16)
    monkeypatch.setenv(sweeps.PARALLEL_ENV, "4")
    assert sweeps.torch_threads(0, None) == 4
    assert sweeps.torch_threads(3, None) == 3  # trainer.threads wins
    monkeypatch.delenv(sweeps.PARALLEL_ENV)
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.JoblibLauncher", "n_jobs": 8}
    assert sweeps.torch_threads(0, joblib) == 2
    assert sweeps.torch_threads(0, {**joblib, "n_jobs": -1}) == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert sweeps.torch_threads(0, None) == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's cap
    assert sweeps.torch_threads(0, None) == 2 and sweeps.torch_threads(5, None) == 5


def test_objective_is_maximised_and_lower_is_better_scores_are_negated():
    r = {"source_acc": 0.8, "target_acc": 0.5, "selection": {"dev_risk": 0.3, "snd": 1.5}}
    assert selection.objective(r, "source_acc") == (0.8, 0.8)
    assert selection.objective(r, "dev_risk") == (-0.3, 0.3)
    assert selection.objective(r, "snd") == (1.5, 1.5)
    from da_train.config import ConfigError
    with pytest.raises(ConfigError, match="objective=nope.*source_acc"):
        selection.objective(r, "nope")
    assert selection.is_oracle("target_acc") and not selection.is_oracle("source_acc")
