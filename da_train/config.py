"""Structured config schema.

Hydra merges the YAML files of ``conf/`` onto these dataclasses, so a wrong type
(``method.lam=abc``) or a misspelt key (``trainer.step=5``) fails before training
starts with a message naming the key. Range checks that types cannot express live in
:func:`validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig


class ConfigError(ValueError):
    """A config value is impossible; the message names the key, the value and the fix."""


@dataclass
class MethodConfig:
    name: str = MISSING
    lam: float = 1.0
    gamma: float = 10.0


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = "data"
    download: bool = True
    mnistm: str = "build"
    mnistm_dir: str = "data"
    cache_root: str = "data"
    build_seed: int = 0


@dataclass
class BackboneConfig:
    name: str = MISSING


@dataclass
class OptimConfig:
    name: str = "sgd_dann"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    anneal_alpha: float = 10.0
    anneal_beta: float = 0.75


@dataclass
class TrainerConfig:
    steps: int = 10000
    batch_size: int = 64
    eval_every: int = 1000
    log_every: int = 50
    device: str = "auto"
    amp: bool = False
    eval_batch_size: int = 1024


@dataclass
class Config:
    seed: int = 0
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register_schema() -> None:
    ConfigStore.instance().store(name="schema", node=Config)


_RULES = [
    ("trainer.steps", lambda v: v > 0, "a whole number > 0"),
    ("trainer.batch_size", lambda v: v >= 2, "a whole number >= 2"),
    ("trainer.eval_every", lambda v: v > 0, "a whole number > 0"),
    ("trainer.log_every", lambda v: v > 0, "a whole number > 0"),
    ("trainer.eval_batch_size", lambda v: v > 0, "a whole number > 0"),
    ("trainer.device", lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"),
     "one of auto, cpu, cuda, cuda:N"),
    ("method.lam", lambda v: v >= 0, "a number >= 0"),
    ("method.gamma", lambda v: v >= 0, "a number >= 0"),
    ("optim.lr", lambda v: v > 0, "a number > 0"),
    ("optim.momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("data.mnistm", lambda v: v in ("released", "build"), "released or build"),
]


def validate(cfg: DictConfig) -> None:
    """Check ranges the schema's types cannot express; raise ConfigError on the first bad one."""
    from omegaconf import OmegaConf

    for key, ok, allowed in _RULES:
        value = OmegaConf.select(cfg, key)
        if value is not None and not ok(value):
            raise ConfigError(
                f"Invalid config value {key}={value!r}: it must be {allowed}. "
                f"Fix it on the command line, e.g. `da-train {key}=<value>`."
            )
