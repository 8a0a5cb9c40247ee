"""Optimisers and learning-rate schedules built from the ``optim`` config group.

A method may replace some settings for one of its updates (``Method.optim_overrides``), e.g.
ADDA's adversarial stage uses the paper's Adam settings whatever ``optim`` says.
"""

from __future__ import annotations

import torch


def build_optimizer(params, settings: dict) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if settings["type"] == "adam":
        return torch.optim.Adam(params, lr=settings["lr"], betas=tuple(settings["betas"]),
                                weight_decay=settings["weight_decay"])
    return torch.optim.SGD(params, lr=settings["lr"], momentum=settings["momentum"],
                           weight_decay=settings["weight_decay"])


def lr_factor(settings: dict, steps: int):
    """Multiplier of the base lr at step ``t`` of a phase of ``steps`` steps.

    ``dann``: ``1 / (1 + alpha p)^beta`` with ``p = t / steps`` (DANN paper); ``constant``: 1.
    The base lr lives in the optimiser, so the factor is never applied twice.
    """
    if settings["schedule"] == "constant":
        return lambda t: 1.0
    alpha, beta = settings["anneal_alpha"], settings["anneal_beta"]
    return lambda t: 1.0 / (1.0 + alpha * t / steps) ** beta


def build_scheduler(optimizer, settings: dict, steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(settings, steps))
