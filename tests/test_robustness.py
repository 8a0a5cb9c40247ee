"""No run lost, every bad input answered with a clear message (issue: robustness)."""

import json
import signal
import time

import pytest
import torch
from cli_helpers import da_train, small, start_da_train
from conftest import make_tiny_root
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from toy import compose_config

from da_train.config import ConfigError, validate

# ---------------------------------------------------------------- validation
BAD_VALUES = [
    (["method.weight=-0.5"], "method.weight", ">= 0"),
    (["method=ddc", "method.kernel_num=0"], "method.kernel_num", ">= 1"),
    (["method=ddc", "method.kernel_mul=1.0"], "method.kernel_mul", "> 1"),
    (["method=ddc", "method.fix_sigma=-2"], "method.fix_sigma", "> 0"),
    (["method=ddc", "method.kernel=cosine"], "method.kernel", "rbf or linear"),
    (["method=ddc", "method.estimator=fast"], "method.estimator", "biased or unbiased"),
    (["method=ddc", "method.layer=conv1"], "method.layer", "features or logits"),
    (["method=dann_ent", "method.reg.entropy.weight=-0.1"], "method.reg.entropy", ">= 0"),
    (["method=self_training", "method.threshold=1.5"], "method.threshold", "[0, 1]"),
    (["method=dann_pl", "method.reg.pl.start=2"], "method.reg.pl", "[0, 1]"),
    (["method=dann_pl", "method.reg.pl.weight=-1"], "method.reg.pl", ">= 0"),
    (["reg=[vat]", "reg.vat.eps=0"], "reg.vat", "> 0"),
    (["method=adda", "method.adapt_steps=0"], "method.adapt_steps", "> 0"),
    (["method=adda", "method.disc_hidden=[]"], "method.disc_hidden", "non-empty"),
    (["method=adda", "method.beta1=1.0"], "method.beta1", "[0, 1)"),
    (["data.normalize=batch"], "data.normalize", "global or instance"),
    (["trainer.steps=0"], "trainer.steps", "> 0"),
    (["trainer.batch_size=1"], "trainer.batch_size", ">= 2"),
    (["trainer.ckpt_every=0"], "trainer.ckpt_every", "> 0"),
    (["trainer.device=tpu"], "trainer.device", "auto, cpu, cuda"),
    (["optim.lr=0"], "optim.lr", "> 0"),
    (["optim.momentum=1.0"], "optim.momentum", "[0, 1)"),
    (["data.mnistm=downloaded"], "data.mnistm", "released or build"),
]


@pytest.mark.parametrize("overrides,key,allowed", BAD_VALUES)
def test_each_validated_key_names_key_value_and_allowed(overrides, key, allowed):
    with pytest.raises(ConfigError) as err:
        validate(compose_config(overrides))
    message = str(err.value)
    bad_value = overrides[-1].split("=", 1)[1]
    assert key in message and allowed in message
    assert bad_value.strip("[]") in message


@pytest.mark.parametrize("args,needle", [
    (["trainer.batch_size=1"], "trainer.batch_size"),  # our validation
    (["method.weight=abc"], "method.weight"),          # Hydra: wrong type
    (["trainer.step=5"], "step"),                      # Hydra: misspelt key
    (["method=nope"], "dann"),                         # Hydra: unknown choice lists choices
    (["method=dann", "method.kernel_num=3"], "kernel_num"),  # key of another method
])
def test_bad_config_exits_2_without_stack_trace(tmp_path, args, needle):
    proc = da_train([*args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder should go")
    proc = da_train([f"hydra.run.dir={blocker / 'run'}"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "not_a_folder" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    proc = da_train([f"trainer.resume={tmp_path / 'nothing'}"], tmp_path)
    assert proc.returncode == 2
    assert "checkpoint.pt" in proc.stderr and str(tmp_path / "nothing") in proc.stderr


# ---------------------------------------------------------------- numerical faults
def test_nan_stops_run_keeps_last_good_checkpoint(tiny_root, tmp_path):
    out = tmp_path / "run"
    proc = da_train([*small(tiny_root, steps=40), "trainer.ckpt_every=10",
                     "debug.inject_nan_at=15", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 2
    assert "train/loss became NaN or inf at step 15" in proc.stderr
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and "step 15" in status["error"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 10
    assert all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())
    assert not (out / "results.json").exists()


# ---------------------------------------------------------------- sweeps
def test_sweep_continues_after_a_failing_job(tiny_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = da_train(["-m", *small(tiny_root), "debug.inject_nan_at=0,3", "seed=0,1,2",
                     f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 2
    assert "3 of 6 jobs failed" in proc.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    statuses = [json.loads((j / "status.json").read_text())["status"] for j in jobs]
    assert len(jobs) == 6 and statuses.count("completed") == 3 and statuses.count("failed") == 3
    for job in jobs:
        assert (job / "results.json").exists() == ("inject_nan_at=3" not in job.name)


def test_runs_started_together_get_distinct_folders(tiny_root, tmp_path):
    procs = [start_da_train(small(tiny_root, steps=2), tmp_path) for _ in range(3)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    runs = list((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(runs) == 3


# ---------------------------------------------------------------- signals and resume
def _wait_for_step(metrics, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists():
            lines = metrics.read_text().splitlines()
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError("run did not reach the step in time")


STEPS = 150


@pytest.fixture(scope="module")
def resume_setup(tmp_path_factory):
    """One uninterrupted reference run, shared by the kill-and-resume tests."""
    root = make_tiny_root(tmp_path_factory.mktemp("data"))
    args = [*small(root, steps=STEPS), "trainer.ckpt_every=50", "trainer.log_every=5",
            "trainer.eval_every=50"]
    reference = tmp_path_factory.mktemp("reference") / "run"
    assert da_train([*args, f"hydra.run.dir={reference}"], reference.parent).returncode == 0
    return args, reference


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_killed_run_resumes_to_identical_results(resume_setup, tmp_path, sig, code):
    args, reference = resume_setup
    run = tmp_path / "killed"
    proc = start_da_train([*args, f"hydra.run.dir={run}"], tmp_path)
    _wait_for_step(run / "metrics.jsonl", 20, proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] < STEPS
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    assert saved["step"] == status["step"]
    assert saved["wall_seconds"] > 0
    # pretend the killed process ran 1,000 s: the resumed run's wall time must include them
    torch.save({**saved, "wall_seconds": 1000.0}, run / "checkpoint.pt")
    assert "trainer.resume=" in proc.stderr.read()

    started = time.time()
    resumed = da_train([f"trainer.resume={run}", f"hydra.run.dir={tmp_path / 'fresh'}"],
                       tmp_path)
    resumed_s = time.time() - started
    assert resumed.returncode == 0, resumed.stderr
    assert not (tmp_path / "fresh").exists()  # the empty new folder is not left behind
    want = json.loads((reference / "results.json").read_text())
    got = json.loads((run / "results.json").read_text())
    for key in ("source_acc", "target_acc", "steps"):
        assert got[key] == want[key], key
    # the wall time counts the killed process up to its checkpoint, not only the resumed one
    assert 1000.0 < got["wall_time_s"] < 1000.0 + resumed_s
    assert json.loads((run / "status.json").read_text())["status"] == "completed"

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # no duplicate steps
    ref = {json.loads(x)["step"]: json.loads(x) for x in
           (reference / "metrics.jsonl").read_text().splitlines()}
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["train/loss"] == ref[STEPS]["train/loss"]  # bit-identical training after resume


def test_same_seed_is_bit_identical_on_cpu(tiny_root, tmp_path):
    results = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert da_train([*small(tiny_root, steps=30), f"hydra.run.dir={out}"],
                        tmp_path).returncode == 0
        results.append((out / "metrics.jsonl").read_text().splitlines())
    strip = [[{k: v for k, v in json.loads(x).items() if k != "train/steps_per_s"}
              for x in lines] for lines in results]
    assert strip[0] == strip[1]
