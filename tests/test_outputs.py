"""What a run leaves behind: progress in logs when nobody watches a terminal, a light run
folder, compact results (issue: a new user's first hour), and a sensible accuracy on real
data for the steps it ran."""

import json
import re

import pytest
from cli_helpers import da_train, small


def folder_bytes(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_progress_lines_reach_stdout_and_cli_log_without_a_terminal(tiny_root, tmp_path):
    out = tmp_path / "run"
    proc = da_train([*small(tiny_root, steps=20), "trainer.progress_every=0",
                     f"hydra.run.dir={out}"], tmp_path)  # stdout is a pipe, not a terminal
    assert proc.returncode == 0, proc.stderr
    pattern = r"step (\d+)/20 \([\d.]+ steps/s, ETA [\dhms]+\) loss=[\d.]+"
    printed = [int(s) for s in re.findall(pattern, proc.stdout)]
    assert printed[-1] == 20 and len(printed) >= 4 and printed == sorted(printed)
    assert "target_acc=" in proc.stdout
    logged = list(out.glob("*.log"))
    assert logged and re.search(pattern, logged[0].read_text())


def test_a_100_step_run_folder_is_light_and_results_are_compact(tiny_root, tmp_path):
    out = tmp_path / "run"
    args = [a for a in small(tiny_root, steps=100) if not a.startswith("trainer.embed")]
    proc = da_train([*args, f"hydra.run.dir={out}"], tmp_path)  # default projector size
    assert proc.returncode == 0, proc.stderr
    assert folder_bytes(out) < 5 * 2**20, folder_bytes(out)
    text = (out / "results.json").read_text()
    results = json.loads(text)
    assert len(text.splitlines()) == len(results) + 2  # one line per key, braces
    assert results["sizes"] == {"source_train": 64, "source_test": 32, "target_train": 64,
                                "target_test": 32}
    assert results["class_names"] == [str(d) for d in range(10)]


def test_source_only_learns_real_mnist_in_a_few_hundred_steps(real_root, tmp_path):
    """A smoke run with a sensible accuracy range for its length, not just 0 <= acc <= 1:
    200 steps of 0-vs-1 on real MNIST separate the source almost perfectly, while the
    2/3 target stays near chance (docs/results.md explains why)."""
    out = tmp_path / "run"
    proc = da_train(["method=source_only", "data=mnist01_23", f"data.root={real_root}",
                     "data.download=false", "trainer.steps=200", "trainer.embed_samples=0",
                     f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["source_acc"] > 0.98
    assert 0.2 < results["target_acc"] < 0.8
    assert results["sizes"]["source_train"] == 12665 and results["sizes"]["target_test"] == 2042


@pytest.mark.parametrize("key", ["source_acc", "target_acc"])
def test_results_report_the_final_full_evaluation(tiny_root, tmp_path, key):
    out = tmp_path / "run"
    assert da_train([*small(tiny_root, steps=10), f"hydra.run.dir={out}"],
                    tmp_path).returncode == 0
    results = json.loads((out / "results.json").read_text())
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 10 and last[f"val/{key}"] == results[key]


def test_validators_split_proxy_distance_and_figures_reach_results_and_tensorboard(
        tiny_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    proc = da_train([*small(tiny_root, steps=10), "data.source_val=0.25", "trainer.figures=true",
                     f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results["selection"]) == {"source_val_acc", "entropy", "im", "snd", "dev", "bnm"}
    assert results["source_val"] == 0.25 and results["sizes"]["source_val"] == 16
    assert results["sizes"]["source_train"] == 48  # the held-out images are not trained on
    assert -2.01 <= results["proxy_a_distance"] <= 2.01
    acc = EventAccumulator(str(out / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert {f"select/{k}" for k in results["selection"]} <= set(acc.Tags()["scalars"])
    assert {"figures/accuracy", "figures/target_confusion", "figures/features"} <= set(
        acc.Tags()["images"])
    assert (out / "embeddings.npz").is_file()
