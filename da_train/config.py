"""Structured config schema and value checks.

Hydra merges the YAML files of ``conf/`` onto these dataclasses, so a wrong type
(``method.lam=abc``) or a misspelt key (``trainer.step=5``) fails before training
starts with a message naming the key. Each method has its own schema (``conf/method/<name>.yaml``
starts from ``/method_schema/<name>``), so ``method.kernel_num`` exists for DDC and is
rejected for DANN. Range checks that types cannot express live in :data:`RULES` / :func:`validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value is impossible; the message names the key, the value and the fix."""


# ---------------------------------------------------------------------------- methods
@dataclass
class SourceOnlyConfig:
    name: str = "source_only"


@dataclass
class TargetOnlyConfig:
    name: str = "target_only"


@dataclass
class DannConfig:
    name: str = "dann"
    lam: float = 1.0
    gamma: float = 10.0


@dataclass
class DannEntConfig(DannConfig):
    name: str = "dann_ent"
    ent_weight: float = 0.1


@dataclass
class DannPLConfig(DannEntConfig):
    name: str = "dann_pl"
    pl_weight: float = 1.0
    threshold: float = 0.95
    pl_start: float = 0.3


@dataclass
class DdcConfig:
    name: str = "ddc"
    lam: float = 1.0
    kernel: str = "rbf"
    kernel_num: int = 5
    kernel_mul: float = 2.0
    fix_sigma: Optional[float] = None
    estimator: str = "biased"
    layer: str = "features"
    ramp: bool = False
    gamma: float = 10.0


@dataclass
class AddaConfig:
    name: str = "adda"
    pretrain_steps: int = 5000
    adapt_steps: int = 10000
    disc_hidden: list[int] = field(default_factory=lambda: [500, 500])
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999


@dataclass
class SelfTrainingConfig:
    name: str = "self_training"
    lam: float = 1.0
    threshold: float = 0.9
    warmup_steps: int = 1000


METHOD_SCHEMAS = {
    "source_only": SourceOnlyConfig, "target_only": TargetOnlyConfig, "dann": DannConfig,
    "dann_ent": DannEntConfig, "dann_pl": DannPLConfig,
    "ddc": DdcConfig, "adda": AddaConfig, "self_training": SelfTrainingConfig,
}


# ---------------------------------------------------------------------------- the rest
@dataclass
class DataConfig:
    name: str = MISSING
    root: str = "data"
    download: bool = True
    mnistm: str = "build"
    mnistm_dir: str = "data"
    cache_root: str = "data"
    build_seed: int = 0
    normalize: str = "global"


@dataclass
class BackboneConfig:
    name: str = MISSING


@dataclass
class OptimConfig:
    name: str = "sgd_dann"
    type: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: str = "dann"
    anneal_alpha: float = 10.0
    anneal_beta: float = 0.75
    # TEMP (h14): lr multiplier of pretrained backbone layers (resnet18/50, pretrained=true)
    pretrained_lr_mult: float = 0.1


@dataclass
class TrainerConfig:
    steps: int = 10000
    batch_size: int = 64
    eval_every: int = 1000
    log_every: int = 50
    ckpt_every: int = 1000
    device: str = "auto"
    amp: bool = False
    compile: bool = False
    channels_last: bool = False
    eval_batch_size: int = 256
    eval_samples: int = 2000
    tune_malloc: bool = True
    embed_samples: int = 2000
    resume: Any = False
    detect_anomaly: bool = False
    threads: int = 0
    stop_on_collapse: bool = False
    figures: bool = False
    # Test-only fault injection: make the loss NaN at this step (0 = never).
    inject_nan_at: int = 0


@dataclass
class Config:
    seed: int = 0
    objective: str = "source_acc"
    method: Any = MISSING
    data: Any = MISSING  # TEMP (h14): per-family schemas, data_schema/<name>
    backbone: Any = MISSING  # TEMP (h14): per-backbone schemas, backbone_schema/<name>
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register_schema() -> None:
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    for name, schema in METHOD_SCHEMAS.items():
        store.store(group="method_schema", name=name, node=schema)
    # TEMP (h14): data and backbone schemas; the lead's config.py replaces this.
    from .data.schemas import SCHEMAS
    from .models import BACKBONE_SCHEMAS
    for name, schema in SCHEMAS.items():
        store.store(group="data_schema", name=name, node=schema)
    for name, schema in BACKBONE_SCHEMAS.items():
        store.store(group="backbone_schema", name=name, node=schema)


# ---------------------------------------------------------------------------- ranges
def _positive(v):
    return v > 0


def _nonneg(v):
    return v >= 0


def _prob(v):
    return 0 <= v <= 1


RULES = [
    ("seed", _nonneg, "a whole number >= 0"),
    ("trainer.steps", _positive, "a whole number > 0"),
    ("trainer.batch_size", lambda v: v >= 2, "a whole number >= 2"),
    ("trainer.eval_every", _positive, "a whole number > 0"),
    ("trainer.log_every", _positive, "a whole number > 0"),
    ("trainer.ckpt_every", _positive, "a whole number > 0"),
    ("trainer.eval_batch_size", _positive, "a whole number > 0"),
    ("trainer.eval_samples", _nonneg, "a whole number >= 0 (0: always the full test splits)"),
    ("trainer.embed_samples", _nonneg, "a whole number >= 0 (0 turns the projector off)"),
    ("trainer.inject_nan_at", _nonneg, "a whole number >= 0"),
    ("trainer.device", lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"),
     "one of auto, cpu, cuda, cuda:N"),
    ("method.lam", _nonneg, "a number >= 0"),
    ("method.gamma", _nonneg, "a number >= 0"),
    ("method.ent_weight", _nonneg, "a number >= 0"),
    ("method.pl_weight", _nonneg, "a number >= 0"),
    ("method.pl_start", _prob, "a fraction of training in [0, 1]"),
    ("method.kernel", lambda v: v in ("rbf", "linear"), "rbf or linear"),
    ("method.kernel_num", lambda v: v >= 1, "a whole number >= 1"),
    ("method.kernel_mul", lambda v: v > 1, "a number > 1"),
    ("method.fix_sigma", _positive, "a number > 0, or null for the mean-distance bandwidth"),
    ("method.estimator", lambda v: v in ("biased", "unbiased"), "biased or unbiased"),
    ("method.layer", lambda v: v in ("features", "logits"), "features or logits"),
    ("method.pretrain_steps", _nonneg, "a whole number >= 0"),
    ("method.adapt_steps", _positive, "a whole number > 0"),
    ("method.disc_hidden", lambda v: len(v) >= 1 and all(h > 0 for h in v),
     "a non-empty list of layer widths > 0, e.g. [500,500]"),
    ("method.lr", _positive, "a number > 0"),
    ("method.beta1", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("method.beta2", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("method.threshold", _prob, "a probability in [0, 1]"),
    ("method.warmup_steps", _nonneg, "a whole number >= 0"),
    ("optim.type", lambda v: v in ("sgd", "adam"), "sgd or adam"),
    ("optim.lr", _positive, "a number > 0"),
    ("optim.momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("optim.betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
     "two numbers in [0, 1), e.g. [0.9,0.999]"),
    ("optim.weight_decay", _nonneg, "a number >= 0"),
    ("optim.schedule", lambda v: v in ("dann", "constant"), "dann or constant"),
    ("optim.anneal_alpha", _nonneg, "a number >= 0"),
    ("optim.anneal_beta", _nonneg, "a number >= 0"),
    ("data.mnistm", lambda v: v in ("released", "build"), "released or build"),
    ("optim.pretrained_lr_mult", _nonneg, "a number >= 0 (0.1: the usual 0.1x)"),
]


def validate(cfg: DictConfig) -> None:
    """Check ranges the schema's types cannot express; raise ConfigError on the first bad one."""
    from .data.schemas import DATA_RULES  # TEMP (h14)

    for key, ok, allowed in RULES + DATA_RULES:
        value = OmegaConf.select(cfg, key)
        if value is not None and not ok(value):
            raise ConfigError(
                f"Invalid config value {key}={value!r}: it must be {allowed}. "
                f"Fix it on the command line, e.g. `da-train {key}=<value>`."
            )
