"""The config schema of the groups every run has, and the value-rule machinery.

Hydra merges the YAML files of ``conf/`` onto these dataclasses, so a wrong type
(``trainer.steps=abc``) or a misspelt key (``trainer.step=5``) fails before training starts,
naming the key. A method's schema is not here: it lives in the method's own module
(``da_train/methods/<name>.py``, a dataclass with its defaults and ``rules``), and
:func:`register_schema` registers every method and preset as ``method_schema/<name>``; the
top-level ``conf/config.yaml`` attaches the chosen method's schema under ``method``. Range
checks that types cannot express are ``rules``: ``{key: (check, allowed-text)}``, checked once,
by :func:`validate`. Imports flow one way: this module gathers the registries (methods,
models, data schemas, regularisers, validators); none of them imports it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from .data.schemas import DATA_RULES, SCHEMAS
from .errors import (  # noqa: F401  (re-exported for user code written against 0.1)
    BETA,
    NONNEG,
    POSITIVE,
    PROBABILITY,
    WHOLE_NONNEG,
    WHOLE_POSITIVE,
    ConfigError,
    Rule,
    one_of,
    override_key,
)
from .methods import CHOICES, core_of, renamed_keys
from .methods.base import MethodConfig  # noqa: F401  (re-exported)
from .models import BACKBONE_SCHEMAS
from .regularizers import REGULARIZERS, build_regularizers
from .selection import DIRECTIONS

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- schemas
@dataclass
class OptimConfig:
    type: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: str = "dann"
    anneal_alpha: float = 10.0
    anneal_beta: float = 0.75
    # schedule=step: lr x step_factor every step_every steps (CDAN's digit code: 0.5 every 5 or
    # 6 epochs); 0 means "no step" and is refused when schedule=step
    step_every: int = 0
    step_factor: float = 0.5
    # learning rate of pretrained backbone layers relative to lr (the usual 0.1x of DA papers)
    pretrained_lr_mult: float = 0.1


@dataclass
class TrainerConfig:
    """``trainer.*``: the loop's settings, their defaults here (conf/trainer/default.yaml
    repeats none of them; a pair's own values: conf/trainer/pair/<data>.yaml)."""

    steps: int = 10000
    batch_size: int = 64  # per domain: each step sees batch_size source + batch_size target
    eval_every: int = 1000  # evaluate source and target test accuracy every N steps (and at
    # the end)
    log_every: int = 50
    ckpt_every: int = 1000  # atomic checkpoint every N steps (and at the end / on a signal)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the feature extractor and label head (CUDA)
    channels_last: bool = False  # channels_last memory format for conv nets (CUDA)
    # auto | true | false: the training step as one CUDA graph per phase (da_train/graph.py)
    cuda_graph: str = "auto"
    eval_batch_size: int = 256  # 256 avoids large short-lived buffers (page faults) on CPU
    # intermediate evaluations use the first N test images of each domain; the final one
    # (results.json) always the full test splits (0: always full)
    eval_samples: int = 2000
    tune_malloc: bool = True  # glibc: keep freed memory instead of returning it to the kernel
    # source + target test features for the TensorBoard projector, PCA to 32 dims (0: off)
    embed_samples: int = 1000
    resume: Any = False  # true: continue the run in hydra.run.dir | <run folder>: that run
    detect_anomaly: bool = False  # autograd anomaly detection (slow; finds where a NaN starts)
    threads: int = 0  # torch CPU threads (0: all cores / shared by parallel jobs)
    stop_on_collapse: bool = False  # stop the run (like a NaN) when the collapse detector fires
    figures: bool = False  # accuracy curves, confusion matrix, feature scatter in TensorBoard
    progress_every: float = 30.0  # seconds between progress lines when stdout is no terminal


@dataclass
class DebugConfig:
    """Developer switches for tests (``debug.*``), not listed in ``--help``."""

    # make the loss NaN at this step (0 = never): tests the NaN stop and the checkpoint kept
    inject_nan_at: int = 0


@dataclass
class Config:
    seed: int = 0
    objective: str = "source_acc"
    method: Any = MISSING
    data: Any = MISSING      # schema per data family: da_train/data/schemas.py
    backbone: Any = MISSING  # schema per backbone: da_train/models.py
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    # target regularisers by name (conf/reg/<name>.yaml; schemas in da_train/regularizers.py)
    reg: dict[str, Any] = field(default_factory=dict)


def method_schema(name: str):
    """The schema of ``method=name``: its core method's dataclass (a preset has its core's),
    plus an optional field for each key renamed in this release (see :func:`migrate`)."""
    schema = core_of(name).Config
    old = [key for key in renamed_keys(name) if key not in
           {f.name for f in dataclasses.fields(schema)}]
    if old:
        schema = dataclasses.make_dataclass(
            schema.__name__, [(key, Optional[Any], None) for key in old], bases=(schema,))
    return schema(name=name, core=CHOICES[name])


def register_schema() -> None:
    """Put the top-level schema and the schemas of every method and preset, regulariser, data
    family and backbone into Hydra's store (``method_schema/<name>``, ``reg_schema/<name>``,
    ``data_schema/<name>``, ``backbone_schema/<name>``)."""
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    for name in CHOICES:
        store.store(group="method_schema", name=name, node=method_schema(name))
    for name, (schema, _, _) in REGULARIZERS.items():
        store.store(group="reg_schema", name=name, node=schema)
    for name, schema in SCHEMAS.items():
        store.store(group="data_schema", name=name, node=schema)
    for name, schema in BACKBONE_SCHEMAS.items():
        store.store(group="backbone_schema", name=name, node=schema)


def migrate(cfg: DictConfig) -> list[str]:
    """Move values given under a key renamed in this release to its new key (in place) and
    return one deprecation line per key moved (the old name wins when both are given). A key
    that counted steps and became a fraction of training (the method schema's
    ``renamed_steps_to_fraction``, e.g. self-training's ``warmup_steps`` -> ``start``) moves
    as its value divided by ``trainer.steps``."""
    lines = []
    name = OmegaConf.select(cfg, "method.name")
    to_fraction = getattr(core_of(name).Config, "renamed_steps_to_fraction", ()) \
        if name in CHOICES else ()
    with open_dict(cfg):
        for old, new in renamed_keys(name).items():
            value = OmegaConf.select(cfg, f"method.{old}")
            if value is None:
                continue
            if old in to_fraction:
                value, moved = _steps_to_fraction(cfg, old, value)
                lines.append(f"method.{old} is deprecated: it is now method.{new}, a fraction "
                             f"of training (moved {moved} there); the old name works until "
                             "da-train 0.3.")
            else:
                lines.append(f"method.{old} is deprecated: it is now method.{new} (moved the "
                             f"value {value!r} there); the old name works until da-train 0.3.")
            OmegaConf.update(cfg, f"method.{new}", value, merge=True)
            cfg.method[old] = None
        ramp = OmegaConf.select(cfg, "method.ramp")
        if ramp in (True, False, "True", "False", "true", "false"):
            new = "sigmoid" if ramp in (True, "True", "true") else "none"
            lines.append(f"method.ramp={ramp} is deprecated: write method.ramp={new} (ramp is "
                         "none or sigmoid, like the regularisers'); the old value works until "
                         "da-train 0.3.")
            cfg.method.ramp = new
    return lines


def _steps_to_fraction(cfg: DictConfig, old: str, value) -> tuple[float, str]:
    """``method.<old>`` (a number of steps) as a fraction of ``trainer.steps``, and the words
    for the deprecation line; ConfigError when it is not a whole number >= 0."""
    steps = OmegaConf.select(cfg, "trainer.steps")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"Invalid config value method.{old}={value!r}: it must be a whole "
                          "number of steps >= 0 (or give the new key, a fraction of training).")
    fraction = value / steps
    return fraction, f"{value} / trainer.steps {steps} = {fraction!r}"


# ---------------------------------------------------------------------------- ranges

RULES: dict[str, Rule] = {
    "seed": WHOLE_NONNEG,
    "trainer.steps": WHOLE_POSITIVE,
    "trainer.batch_size": (lambda v: v >= 2, "a whole number >= 2"),
    "trainer.eval_every": WHOLE_POSITIVE,
    "trainer.log_every": WHOLE_POSITIVE,
    "trainer.ckpt_every": WHOLE_POSITIVE,
    "trainer.eval_batch_size": WHOLE_POSITIVE,
    "trainer.eval_samples": (lambda v: v >= 0,
                             "a whole number >= 0 (0: always the full test splits)"),
    "trainer.embed_samples": (lambda v: v >= 0,
                              "a whole number >= 0 (0 turns the projector off)"),
    "trainer.threads": (lambda v: v >= 0, "a whole number >= 0 (0: automatic)"),
    "trainer.progress_every": NONNEG,
    "trainer.device": (lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"),
                       "one of auto, cpu, cuda, cuda:N"),
    "trainer.cuda_graph": (lambda v: str(v).lower() in ("auto", "true", "false"),
                           "one of auto, true, false"),
    "debug.inject_nan_at": WHOLE_NONNEG,
    "optim.type": one_of("sgd", "adam"),
    "optim.lr": POSITIVE,
    "optim.momentum": BETA,
    "optim.betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
                    "two numbers in [0, 1), e.g. [0.9,0.999]"),
    "optim.weight_decay": NONNEG,
    "optim.schedule": one_of("dann", "constant", "step"),
    "optim.step_every": WHOLE_NONNEG,
    "optim.step_factor": (lambda v: 0 < v <= 1, "a number in (0, 1], e.g. 0.5"),
    "optim.anneal_alpha": NONNEG,
    "optim.anneal_beta": NONNEG,
    "optim.pretrained_lr_mult": (lambda v: v >= 0, "a number >= 0 (0.1: the usual 0.1x)"),
}


def all_rules(cfg: DictConfig) -> dict[str, Rule]:
    """The general rules, the data families' and those of the chosen method."""
    name = OmegaConf.select(cfg, "method.name")
    method = core_of(name) if name in CHOICES else None
    extra = {f"method.{k}": r for k, r in method.Config.rules.items()} if method else {}
    objectives = ("source_acc", *DIRECTIONS, "target_acc")
    extra["objective"] = (lambda v: v in objectives, " or ".join(objectives) + " (target_acc "
                          "reads target labels: the run is marked as an oracle selection)")
    return {**RULES, **DATA_RULES, **extra}


def validate(cfg: DictConfig) -> None:
    """Move renamed keys to their new names (one warning line each), then check ranges the
    schema's types cannot express; raise ConfigError on the first bad one."""
    for line in migrate(cfg):
        log.warning(line)
    for key, (ok, allowed) in all_rules(cfg).items():
        value = OmegaConf.select(cfg, key)
        if value is not None and not ok(value):
            raise ConfigError(
                f"Invalid config value {key}={value!r}: it must be {allowed}. "
                f"Fix it on the command line, e.g. `da-train {key}=<value>`."
            )
    build_regularizers(OmegaConf.select(cfg, "method.reg", default=None), "method.reg")
    build_regularizers(OmegaConf.select(cfg, "reg", default=None), "reg")
    if OmegaConf.select(cfg, "optim.schedule") == "step" and not OmegaConf.select(
            cfg, "optim.step_every"):
        raise ConfigError(
            "optim.schedule=step multiplies the lr by optim.step_factor every optim.step_every "
            "steps, but optim.step_every is 0. Give it the steps between cuts, e.g. "
            "`da-train optim.schedule=step optim.step_every=4685` (5 epochs of 937 steps)."
        )
