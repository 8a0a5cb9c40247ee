"""Layers and schedules of adversarial alignment: gradient reversal, the sigmoid ramp and the
one domain discriminator (DANN, CDAN and ADDA configure it)."""

from __future__ import annotations

import math

import torch
from torch import nn


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-lam`` in the backward pass
    (DANN's gradient reversal layer, Ganin & Lempitsky 2015)."""
    return _ReverseGrad.apply(x, lam)


def sigmoid_ramp(progress, lam: float = 1.0, gamma: float = 10.0):
    """The DANN paper's ramp ``lam * (2 / (1 + exp(-gamma p)) - 1)`` from 0 (p=0) towards
    ``lam`` (p=1): DANN's GRL coefficient, and the weight ramp of target regularisers and of
    DDC's ``method.ramp``. Why ramp: early predictions and features are noise, so a full-weight
    alignment or confidence term from step 0 can wreck them.

    ``progress`` is a Python float (eager steps: a float result, as before) or a 0-d float64
    tensor on the device (the CUDA-graph step, where progress is updated in place between
    replays): then the same formula in float64 tensor ops, no read back to the host, returned
    as a float32 0-d tensor: the value a float32 loss or gradient is multiplied by in the
    eager step too (a float64 0-d tensor would promote a 0-d float32 loss to float64)."""
    if isinstance(progress, torch.Tensor):
        return (lam * (2.0 / (1.0 + torch.exp(-gamma * progress)) - 1.0)).float()
    return lam * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)


class DomainDiscriminator(nn.Sequential):
    """FC - ReLU (- dropout) per hidden width, then one logit (source = 1, target = 0).

    DANN: ``(features, [100])``; CDAN: ``(map width, [500, 500], dropout 0.5)``; ADDA:
    ``(features or class scores, [500, 500])``. Dropout layers exist only when ``dropout > 0``
    (the state-dict keys of the three former private discriminators are kept)."""

    def __init__(self, in_dim: int, hidden: list[int], dropout: float = 0.0):
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = width
        super().__init__(*layers, nn.Linear(in_dim, 1))
