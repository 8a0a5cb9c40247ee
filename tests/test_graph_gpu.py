"""The CUDA-graph step on a GPU (skipped without CUDA; CI has none): for every method the
graph run's training curves equal the eager run's within float tolerance, and a run killed
and resumed with graphs ends where an uninterrupted graph run does.
scripts/gpu_check.py runs this file on a GPU machine."""

import json

import pytest
import torch
from omegaconf import OmegaConf
from toy import moons_pair, toy_config

from da_train.methods import CHOICES, build_method
from da_train.models import build_backbone
from da_train.runtime import seed_everything
from da_train.trainer import Trainer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
STEPS = 200
CUDA = torch.device("cuda")


def cuda_trainer(cfg, run_dir, graph: str) -> Trainer:
    cfg = OmegaConf.merge(cfg, {"trainer": {"cuda_graph": graph, "log_every": 20,
                                            "eval_every": STEPS, "ckpt_every": STEPS}})
    seed_everything(cfg.seed)
    method = build_method(cfg.method, build_backbone("mlp", 2, (2,)), 2)
    return Trainer(cfg, method, moons_pair(), run_dir, CUDA)


def curves(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def graph_capable(name: str) -> bool:
    from da_train.methods import core_of

    return getattr(core_of(name), "capturable", False)


@pytest.mark.parametrize("name", CHOICES)
def test_graph_run_follows_the_eager_run(name, tmp_path):
    cfg = toy_config(name, steps=STEPS, lr=0.05)
    eager = cuda_trainer(cfg, tmp_path / "eager", "false")
    eager.fit()
    graph = cuda_trainer(cfg, tmp_path / "graph", "true" if graph_capable(name) else "auto")
    graph.fit()
    assert (graph.graph is not None) == graph_capable(name)
    a, b = curves(tmp_path / "eager"), curves(tmp_path / "graph")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key, value in ra.items():
            if key.startswith("train/") and key != "train/steps_per_s":
                assert rb[key] == pytest.approx(value, rel=2e-3, abs=2e-4), (name, key, ra["step"])
    assert b[-1]["val/target_acc"] == pytest.approx(a[-1]["val/target_acc"], abs=0.01)


@pytest.mark.parametrize("name", ["dann", "vada", "mcd", "mean_teacher"])
def test_graph_run_killed_and_resumed_ends_where_an_uninterrupted_one_does(name, tmp_path):
    cfg = toy_config(name, steps=STEPS, lr=0.05)
    whole = cuda_trainer(cfg, tmp_path / "whole", "true")
    whole.fit()
    first = cuda_trainer(OmegaConf.merge(cfg, {"trainer": {"steps": STEPS}}),
                         tmp_path / "part", "true")
    first.total_steps = STEPS // 2  # stop half way, after its checkpoint
    first.tcfg.ckpt_every = STEPS // 2
    first.fit()
    resumed = cuda_trainer(cfg, tmp_path / "part", "true")
    resumed.load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    resumed.fit()
    end_whole, end_resumed = curves(tmp_path / "whole")[-1], curves(tmp_path / "part")[-1]
    assert end_resumed["step"] == end_whole["step"] == STEPS
    assert end_resumed["train/loss"] == pytest.approx(end_whole["train/loss"], rel=1e-4)
    assert end_resumed["val/target_acc"] == end_whole["val/target_acc"]
