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


def build_optimizer(params, settings: dict, device_lr: bool = False) -> torch.optim.Optimizer:
    """SGD (momentum) or Adam over ``params``.

    ``device_lr=True`` (the CUDA-graph step, da_train/graph.py): every group's learning rate
    is a 0-d tensor on the parameters' device, updated in place by :class:`LrSchedule`, and
    the fused implementation is used (it takes a tensor lr without reading it back to the
    host, and keeps Adam's step count on the device), so one captured optimiser step is
    right at every replay. Eager steps keep Python floats and torch's default (foreach)
    implementation: the CPU numbers do not change."""
    groups = param_groups(params, settings)
    extra = {}
    if device_lr and groups:
        device = groups[0]["params"][0].device
        for group in groups:  # base_lr: the exact float the schedule multiplies
            group["base_lr"] = float(group["lr"])
            group["lr"] = torch.tensor(group["base_lr"], device=device)
        extra = {"fused": True}
    if settings["type"] == "adam":
        return torch.optim.Adam(groups, lr=settings["lr"], betas=tuple(settings["betas"]),
                                weight_decay=settings["weight_decay"], **extra)
    return torch.optim.SGD(groups, lr=settings["lr"], momentum=settings["momentum"],
                           weight_decay=settings["weight_decay"], **extra)


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


class LrSchedule:
    """Each group's lr = its base lr x ``factor(t)``, ``t`` = steps taken in the phase.

    What ``torch.optim.lr_scheduler.LambdaLR`` computes (the same float products, and its
    state-dict keys ``base_lrs`` / ``last_epoch``, so older checkpoints resume), written out
    because LambdaLR reads a tensor lr back to the host on every step (``.item()``) while the
    CUDA-graph step keeps the lr in a device tensor: here a tensor lr is updated in place with
    ``fill_`` from the host-side value, an asynchronous write, never a read."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor):
        self.optimizer, self.factor = optimizer, factor
        self.base_lrs = [float(group.get("base_lr", group["lr"]))
                         for group in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def lrs(self) -> list[float]:
        """The current learning rates as host floats (no device read)."""
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.lrs(), strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def state_dict(self) -> dict:
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        self.last_epoch = int(state["last_epoch"])
        self._apply()


def build_scheduler(optimizer, settings: dict, steps: int) -> LrSchedule:
    return LrSchedule(optimizer, lr_factor(settings, steps))
