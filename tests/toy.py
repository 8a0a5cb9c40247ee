"""Helpers the tests share: the rotated two-moons toy shift, configs composed like the CLI's,
and driving the real Trainer step by step."""

import math

import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from da_train.config import Config, register_schema
from da_train.data import DomainPair, Split
from da_train.methods import Batch, build_method
from da_train.models import build_backbone
from da_train.regularizers import apply_regularizers, build_regularizers, merged_reg_config
from da_train.runtime import seed_everything
from da_train.trainer import Trainer

register_schema()


def compose_config(overrides=()):
    """The config the CLI would compose for ``overrides`` (no run, no output folder)."""
    with initialize_config_module(config_module="da_train.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


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
    """Two moons (source) -> the same moons rotated by ``angle`` degrees (target)."""
    rng = np.random.default_rng(0)
    s_train, s_test = Split(*two_moons(600, rng)), Split(*two_moons(600, rng))
    t_train, t_test = Split(*two_moons(600, rng, angle)), Split(*two_moons(600, rng, angle))
    return DomainPair(s_train, t_train.images, s_test, t_test, 2)


def _options(options: dict) -> dict:
    """Keyword options -> a nested dict; ``reg__vat__eps=1`` is ``reg.vat.eps``."""
    out: dict = {}
    for key, value in options.items():
        *path, last = key.split("__")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def method_config(name: str, **options):
    """The ``method`` node the CLI composes for ``method=name`` (a module or a preset, with
    its YAML), with ``options`` set (``reg__entropy__weight=0.5`` for nested keys)."""
    return OmegaConf.merge(compose_config([f"method={name}"]).method, _options(options))


def toy_config(method: str, steps=1500, lr=0.05, seed=0, **method_options):
    """A full config for the toy problem (the same schema the CLI uses)."""
    base = OmegaConf.merge(OmegaConf.structured(Config),
                           {"method": method_config(method, **method_options)})
    return OmegaConf.merge(base, {
        "seed": seed,
        "data": {"name": "moons", "source_val": 0.0}, "backbone": {"name": "mlp"},
        "optim": {"lr": lr},
        "trainer": {"steps": steps, "batch_size": 64, "eval_every": steps, "log_every": 500,
                    "embed_samples": 0},
    })


def full_step(method, batch, progress: float):
    """``method``'s loss with its built-in regularisers (``method.reg``, how presets such as
    dann_ent and vada are made), as the trainer computes it: a StepOutput."""
    regs = build_regularizers(merged_reg_config({"method": method.cfg}))
    method.target_outputs = bool(regs)
    out = method.training_step("model", batch, progress)
    if regs:
        out.loss, logs = apply_regularizers(regs, out, batch, method, progress)
        out.logs.update(logs)
    return out


def toy_batch(seed=0, n=12, m=9, in_dim=2, num_classes=2, target_scale=1.0, target_shift=1.0):
    """A random labelled source batch and an unlabelled, shifted target batch."""
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, in_dim, generator=g),
                 torch.randint(0, num_classes, (n,), generator=g),
                 target_scale * torch.randn(m, in_dim, generator=g) + target_shift)


def toy_trainer(cfg, run_dir, pair=None) -> Trainer:
    seed_everything(cfg.seed)
    method = build_method(cfg.method, build_backbone("mlp", 2, (2,)), 2)
    return Trainer(cfg, method, pair or moons_pair(), run_dir, torch.device("cpu"))


def train(cfg, run_dir):
    """Train on the toy problem to the end; the results dict."""
    return toy_trainer(cfg, run_dir).fit()


def run_steps(trainer: Trainer, n: int) -> None:
    """``n`` calls of the trainer's own step (what fit runs), without logging or saving."""
    for _ in range(n):
        trainer.train_step()
