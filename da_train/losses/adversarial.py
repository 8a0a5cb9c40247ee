"""Layers and schedules of adversarial alignment: gradient reversal and the sigmoid ramp."""

from __future__ import annotations

import math

import torch


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


def sigmoid_ramp(progress: float, lam: float = 1.0, gamma: float = 10.0) -> float:
    """The DANN paper's ramp ``lam * (2 / (1 + exp(-gamma p)) - 1)`` from 0 (p=0) towards
    ``lam`` (p=1): DANN's GRL coefficient, and the weight ramp of target regularisers and of
    DDC's ``method.ramp``. Why ramp: early predictions and features are noise, so a full-weight
    alignment or confidence term from step 0 can wreck them."""
    return lam * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)
