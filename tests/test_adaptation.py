"""A real adaptation test that can fail: DANN must beat source-only on rotated two moons."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from da_train.config import Config
from da_train.data import DomainPair, Split
from da_train.methods import build_method
from da_train.models import MLP
from da_train.trainer import Trainer, seed_everything


def two_moons(n, rng, angle_deg=0.0, noise=0.1):
    half = n // 2
    t1, t2 = rng.uniform(0, math.pi, half), rng.uniform(0, math.pi, n - half)
    x = np.concatenate([np.stack([np.cos(t1), np.sin(t1)], 1),
                        np.stack([1 - np.cos(t2), 0.5 - np.sin(t2)], 1)])
    x += rng.normal(0, noise, x.shape)
    x -= x.mean(0)
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    y = np.concatenate([np.zeros(half), np.ones(n - half)])
    return torch.tensor(x @ rot.T, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def moons_pair(angle=35.0):
    rng = np.random.default_rng(0)
    s_train, s_test = Split(*two_moons(600, rng)), Split(*two_moons(600, rng))
    t_train, t_test = Split(*two_moons(600, rng, angle)), Split(*two_moons(600, rng, angle))
    return DomainPair(s_train, t_train.images, s_test, t_test, 2)


def train(method_name, tmp_path, seed=0):
    cfg = OmegaConf.merge(OmegaConf.structured(Config), {
        "seed": seed, "method": {"name": method_name, "lam": 1.0},
        "data": {"name": "moons"}, "backbone": {"name": "mlp"},
        "optim": {"lr": 0.05},
        "trainer": {"steps": 1500, "batch_size": 64, "eval_every": 1500, "log_every": 500},
    })
    seed_everything(seed)
    method = build_method(cfg.method, MLP(2, hidden=32))
    trainer = Trainer(cfg, method, moons_pair(), tmp_path / method_name, torch.device("cpu"))
    return trainer.fit()


@pytest.mark.parametrize("seed", [0])
def test_dann_beats_source_only_on_rotated_moons(tmp_path, seed):
    base = train("source_only", tmp_path, seed)
    dann = train("dann", tmp_path, seed)
    assert base["source_acc"] > 0.95 and dann["source_acc"] > 0.9
    assert dann["target_acc"] > base["target_acc"] + 0.05, (base, dann)
