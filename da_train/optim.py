"""Optimisers and learning-rate schedules built from the ``optim`` config group.

A method may replace some settings for one of its updates (``Method.optim_overrides``), e.g.
ADDA's adversarial stage uses the paper's Adam settings whatever ``optim`` says.
"""

from __future__ import annotations

import torch
from torch import nn


class PretrainedParameter(nn.Parameter):
    """A parameter loaded from pretrained weights (e.g. ImageNet): the optimiser gives it
    ``optim.pretrained_lr_mult`` times the base learning rate.

    A Parameter subclass rather than an attribute because the mark must survive
    ``copy.deepcopy`` (ADDA copies the encoder) and checkpoint loading, which both keep the
    parameter's type but drop attributes.
    """


def mark_pretrained(module: nn.Module) -> None:
    """Mark every parameter of ``module`` as pretrained (in place)."""
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            setattr(sub, name, PretrainedParameter(p.data, p.requires_grad))


def param_groups(params, settings: dict) -> list[dict]:
    """Trainable ``params`` as optimiser groups: new layers at the base lr, pretrained ones
    at ``pretrained_lr_mult`` x lr (the usual 0.1x when fine-tuning ImageNet backbones)."""
    params = [p for p in params if p.requires_grad]
    mult = settings.get("pretrained_lr_mult", 1.0)
    new = [p for p in params if not isinstance(p, PretrainedParameter)]
    old = [p for p in params if isinstance(p, PretrainedParameter)]
    groups = [{"params": new, "lr": settings["lr"]}] if new else []
    if old:
        groups.append({"params": old, "lr": settings["lr"] * mult})
    return groups


def build_optimizer(params, settings: dict) -> torch.optim.Optimizer:
    groups = param_groups(params, settings)
    if settings["type"] == "adam":
        return torch.optim.Adam(groups, lr=settings["lr"], betas=tuple(settings["betas"]),
                                weight_decay=settings["weight_decay"])
    return torch.optim.SGD(groups, lr=settings["lr"], momentum=settings["momentum"],
                           weight_decay=settings["weight_decay"])


def lr_factor(settings: dict, steps: int):
    """Multiplier of the base lr at step ``t`` of a phase of ``steps`` steps.

    ``dann``: ``1 / (1 + alpha p)^beta`` with ``p = t / steps`` (DANN paper); ``constant``: 1;
    ``step``: ``step_factor ** (t // step_every)`` (CDAN's digit code halves the lr every 5 or
    6 epochs). The base lr lives in the optimiser, so the factor is never applied twice.
    """
    if settings["schedule"] == "constant":
        return lambda t: 1.0
    if settings["schedule"] == "step":
        every, factor = settings["step_every"], settings["step_factor"]
        return lambda t: factor ** (t // every)
    alpha, beta = settings["anneal_alpha"], settings["anneal_beta"]
    return lambda t: 1.0 / (1.0 + alpha * t / steps) ** beta


def build_scheduler(optimizer, settings: dict, steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(settings, steps))
