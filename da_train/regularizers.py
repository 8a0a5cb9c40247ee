"""Composable target-side regularisers: terms any method's loss can be given on top.

Selected with the ``reg`` config group, e.g. ``da-train method=dann 'reg=[entropy,vat]'`` or
``method=cdan 'reg=[mcc]'``; each choice is a YAML file ``conf/reg/<name>.yaml`` placed at
``reg.<name>``, with its own ``weight`` and ramp (override e.g. ``reg.vat.weight=0.1``).

After each ``method.training_step`` of the update that trains the classifier, the trainer
replaces ``out.loss`` with ``apply_regularizers(...)``'s loss (``out.loss`` plus the terms).
The terms read the step's own predictions (``out.target_logits`` or the label head on
``out.target_features``, ``out.source_logits``: no extra forward pass; the method's
``predict_target`` / ``predict`` when a method returns neither) and, for VAT, the same
functions on the batch's images. No target label is ever read.

Weight of a term at training progress p in [0, 1): 0 before ``start``; then ``weight`` with
``ramp: none``, or ``weight * (2 / (1 + exp(-gamma p)) - 1)`` with ``ramp: sigmoid`` (DANN's
GRL ramp, as dann_ent used for its entropy term, so early, unaligned predictions are not made
confident).

| name | term | from |
|---|---|---|
| entropy | mean Shannon entropy of target predictions | Grandvalet & Bengio 2005; dann_ent |
| vat | KL(p(x) || p(x + r_adv)) on target (and source) | Miyato et al. 2018; VADA |
| mcc | minimum class confusion of target predictions | Jin et al., ECCV 2020 |
| bnm | minus the batch nuclear norm of target predictions / B | Cui et al., CVPR 2020 |
| pl | cross-entropy on confident target pseudo-labels | self-training; dann_pl |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .losses import mean_entropy, pseudo_label_loss, pseudo_label_quality, sigmoid_ramp
from .losses.bnm import bnm_loss
from .losses.mcc import mcc_loss
from .losses.vat import vat_loss


@dataclass
class RegConfig:
    """What every regulariser has: its final weight and how it gets there."""

    weight: float = 1.0
    ramp: str = "none"  # none | sigmoid
    gamma: float = 10.0  # steepness of the sigmoid ramp
    start: float = 0.0  # fraction of training before which the term is off


@dataclass
class EntropyConfig(RegConfig):
    weight: float = 0.1
    ramp: str = "sigmoid"


@dataclass
class VatConfig(RegConfig):
    source_weight: float = 0.0  # VAT on the source batch too (VADA: 1.0)
    eps: float = 3.5  # radius of the perturbation (L2 over the whole input)
    xi: float = 1e-2  # probe distance of the power iteration
    iterations: int = 1


@dataclass
class MccConfig(RegConfig):
    temperature: float = 2.5


@dataclass
class PlConfig(RegConfig):
    threshold: float = 0.95
    start: float = 0.3


# Each term returns (parts, logs): parts are (value, final weight) pairs, added to the loss one
# by one, each weight following the regulariser's ramp and start.
def _entropy(cfg, ctx):
    value = mean_entropy(ctx.target_logits())
    return [(value, cfg.weight)], {"entropy": value.detach()}


def _vat(cfg, ctx):
    """Target VAT (weight ``weight``) and, with ``source_weight`` > 0, source VAT (weight
    ``source_weight``, on the same ramp): VADA's ``tw L_t + sw L_s``."""
    method, batch = ctx.method, ctx.batch
    value = vat_loss(method.predict_target, batch.xt, ctx.target_logits(), cfg.eps, cfg.xi,
                     cfg.iterations)
    parts, logs = [(value, cfg.weight)], {"loss_vat_target": value.detach()}
    if cfg.source_weight > 0 and cfg.weight > 0 and batch.xs is not None:
        loss_s = vat_loss(method.predict, batch.xs, ctx.source_logits(), cfg.eps, cfg.xi,
                          cfg.iterations)
        logs["loss_vat_source"] = loss_s.detach()
        parts.append((loss_s, cfg.source_weight))
    return parts, logs


def _mcc(cfg, ctx):
    value = mcc_loss(ctx.target_logits(), cfg.temperature)
    return [(value, cfg.weight)], {"loss_mcc": value.detach()}


def _bnm(cfg, ctx):
    value = bnm_loss(ctx.target_logits())
    return [(value, cfg.weight)], {"loss_bnm": value.detach()}


def _pl(cfg, ctx):
    value, share = pseudo_label_loss(ctx.target_logits(), cfg.threshold)
    return [(value, cfg.weight)], {"loss_pl": value.detach(), "pl_share": share}


#: name -> (schema, term function, log key of its current weight)
REGULARIZERS = {
    "entropy": (EntropyConfig, _entropy, "ent_weight"),
    "vat": (VatConfig, _vat, "vat_weight"),
    "mcc": (MccConfig, _mcc, "mcc_weight"),
    "bnm": (RegConfig, _bnm, "bnm_weight"),
    "pl": (PlConfig, _pl, "pl_weight"),
}


#: name -> extra target metrics at each evaluation (logged under ``val/``, never used for
#: training or selection): the pseudo-label term reports how often its confident target
#: predictions are right (``pseudo_label_acc``) and how many there are (``pseudo_label_share``),
#: as ``method=dann_pl`` and ``self_training`` do.
EVAL_METRICS = {
    "pl": lambda cfg, logits, labels: pseudo_label_quality(logits, labels, cfg.threshold),
}


@dataclass
class Regularizer:
    name: str
    cfg: object

    def weight(self, progress, final: float | None = None):
        """The weight at ``progress`` of a part whose final weight is ``final`` (default: the
        term's ``weight``): 0 before ``start``, then the ramp. A Python float for a float
        ``progress``; for a device-tensor ``progress`` (the CUDA-graph step) the same value as
        a tensor, computed without reading back to the host."""
        final = self.cfg.weight if final is None else final
        if isinstance(progress, torch.Tensor):  # float32, as sigmoid_ramp's
            ramped = (sigmoid_ramp(progress, final, self.cfg.gamma)
                      if self.cfg.ramp == "sigmoid"
                      else torch.full_like(progress, final, dtype=torch.float32))
            return torch.where(progress < self.cfg.start, torch.zeros_like(ramped), ramped)
        if progress < self.cfg.start:
            return 0.0
        if self.cfg.ramp == "sigmoid":
            return sigmoid_ramp(progress, final, self.cfg.gamma)
        return final

    def term(self, ctx) -> tuple[list, dict]:
        return REGULARIZERS[self.name][1](self.cfg, ctx)


class _Context:
    """The step's predictions, computed at most once and only if a term asks for them:
    ``out.target_logits`` if the method returned them, else the label head on
    ``out.target_features`` (what dann_ent computed), else ``method.predict_target(xt)``."""

    def __init__(self, out, batch, method):
        self.out, self.batch, self.method = out, batch, method
        self._target = getattr(out, "target_logits", None)
        self._source = getattr(out, "source_logits", None)

    def target_logits(self) -> torch.Tensor:
        if self._target is None:
            features = getattr(self.out, "target_features", None)
            self._target = (self.method.backbone.classifier(features) if features is not None
                            else self.method.predict_target(self.batch.xt))
        return self._target

    def source_logits(self) -> torch.Tensor:
        if self._source is None:  # only asked for when the batch has a source part
            self._source = self.method.predict(self.batch.xs)
        return self._source


def _error(name: str, detail: str, prefix: str = "reg") -> ConfigError:
    return ConfigError(
        f"Invalid regulariser config {prefix}.{name}: {detail}. Regularisers are chosen with "
        f"'reg=[name,...]' (choices: {', '.join(REGULARIZERS)}) and tuned with "
        f"{prefix}.<name>.<key>=<value>, e.g. {prefix}.{name}.weight=0.1.")


def _check(name: str, cfg, prefix: str = "reg") -> None:
    """Value rules the schema's types cannot express (the one place they are checked)."""

    if not (cfg.weight >= 0 and math.isfinite(cfg.weight)):
        raise _error(name, f"weight={cfg.weight!r} must be a number >= 0", prefix)
    if cfg.ramp not in ("none", "sigmoid"):
        raise _error(name, f"ramp={cfg.ramp!r} must be none or sigmoid", prefix)
    if not 0 <= cfg.start <= 1:
        raise _error(name, f"start={cfg.start!r} must be a fraction of training in [0, 1]", prefix)
    if cfg.gamma < 0:
        raise _error(name, f"gamma={cfg.gamma!r} must be >= 0", prefix)
    for key in ("eps", "xi", "temperature"):
        if key in cfg and not cfg[key] > 0:
            raise _error(name, f"{key}={cfg[key]!r} must be > 0", prefix)
    if "iterations" in cfg and cfg.iterations < 1:
        raise _error(name, f"iterations={cfg.iterations!r} must be >= 1", prefix)
    if "source_weight" in cfg and cfg.source_weight < 0:
        raise _error(name, f"source_weight={cfg.source_weight!r} must be >= 0", prefix)
    if "threshold" in cfg and not 0 <= cfg.threshold <= 1:
        raise _error(name, f"threshold={cfg.threshold!r} must be a probability in [0, 1]", prefix)


def build_regularizers(reg_cfg, prefix: str = "reg") -> list[Regularizer]:
    """The regularisers of a ``reg`` config node (name -> settings), in a fixed order (the
    order of the table above, so ``reg=[vat,entropy]`` and ``reg=[entropy,vat]`` give the
    same run). Unknown names, keys and bad values raise ConfigError naming ``prefix``
    (``reg`` or ``method.reg``)."""
    if not reg_cfg:
        return []
    unknown = [n for n in reg_cfg if n not in REGULARIZERS]
    if unknown:
        raise ConfigError(
            f"Unknown regulariser {unknown[0]!r} in the reg config; choices: "
            f"{', '.join(REGULARIZERS)}. Select regularisers with 'reg=[entropy,vat]'.")
    regs = []
    for name in REGULARIZERS:
        if name not in reg_cfg:
            continue
        node = reg_cfg[name] if reg_cfg[name] is not None else {}
        try:
            cfg = OmegaConf.merge(OmegaConf.structured(REGULARIZERS[name][0]), node)
        except OmegaConfBaseException as err:
            raise _error(name, str(err).splitlines()[0], prefix) from err
        _check(name, cfg, prefix)
        regs.append(Regularizer(name, cfg))
    return regs


def apply_regularizers(regs: list[Regularizer], out, batch, method,
                       progress: float) -> tuple[torch.Tensor, dict]:
    """The step's loss with the terms added, ``out.loss + w_1(p) term_1 + ...`` (added one by
    one, in this order, so DANN + entropy computes exactly what dann_ent did), and their logs
    (term values and weights; no host sync). ``(out.loss, {})`` when there are none. The
    trainer back-propagates the first and logs the second with ``out.logs``."""
    loss = out.loss
    logs: dict = {}
    ctx = _Context(out, batch, method)
    for reg in regs:
        parts, term_logs = reg.term(ctx)
        for value, final in parts:
            loss = loss + reg.weight(progress, final) * value
        logs.update(term_logs)
        logs[REGULARIZERS[reg.name][2]] = reg.weight(progress)
    return loss, logs


def merged_reg_config(cfg) -> dict:
    """The regularisers a run trains with: the method's own (``method.reg``, how presets such
    as ``method=vada`` = DANN + entropy + VAT are built) and the command line's ``reg=[...]``;
    a top-level ``reg.<name>`` replaces the method's term of the same name."""
    method = cfg.get("method") or {}
    return {**(method.get("reg") or {}), **(cfg.get("reg") or {})}


def regularizer_eval_metrics(regs: list[Regularizer], target_logits: torch.Tensor,
                             target_labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The regularisers' extra evaluation metrics (``EVAL_METRICS``), merged; {} if none."""
    metrics: dict = {}
    for reg in regs:
        if reg.name in EVAL_METRICS:
            metrics.update(EVAL_METRICS[reg.name](reg.cfg, target_logits, target_labels))
    return metrics
