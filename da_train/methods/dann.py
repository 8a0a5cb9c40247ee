"""DANN: a domain classifier behind a gradient reversal layer (Ganin & Lempitsky 2015).

The feature extractor is trained to classify source digits while making the domain
classifier fail; the reversal coefficient is ramped ``lam * (2 / (1 + exp(-gamma p)) - 1)``
so the noisy early domain signal does not wreck the features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method, StepOutput


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-lam`` in the backward pass."""
    return _ReverseGrad.apply(x, lam)


def sigmoid_ramp(progress: float, lam: float = 1.0, gamma: float = 10.0) -> float:
    """The DANN paper's ramp ``lam * (2 / (1 + exp(-gamma p)) - 1)`` from 0 (p=0) towards
    ``lam`` (p=1): DANN's GRL coefficient, and the weight ramp that dann_ent's entropy term and
    DDC's ``method.ramp`` reuse."""
    return lam * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)


class DANN(Method):
    def __init__(self, cfg, backbone):
        super().__init__(cfg, backbone)
        self.domain_head = nn.Sequential(
            nn.Linear(backbone.feature_dim, 100), nn.ReLU(), nn.Linear(100, 1))

    def training_step(self, update, batch, progress):
        return self.dann_step(batch, progress)[0]

    def dann_step(self, batch, progress) -> tuple[StepOutput, torch.Tensor]:
        """The DANN loss and logs, plus the target features (for methods built on DANN)."""
        xs, ys, xt = batch.xs, batch.ys, batch.xt
        feats = self.backbone.features(torch.cat([xs, xt]))
        fs = feats[: len(xs)]
        loss_cls = F.cross_entropy(self.backbone.classifier(fs), ys)
        lam = sigmoid_ramp(progress, self.cfg.lam, self.cfg.gamma)
        domain_logit = self.domain_head(grad_reverse(feats, lam)).squeeze(1)
        domain = torch.cat([feats.new_ones(len(xs)), feats.new_zeros(len(xt))])
        loss_dom = F.binary_cross_entropy_with_logits(domain_logit, domain)
        domain_acc = ((domain_logit > 0).float() == domain).float().mean()
        # feature_norm: the reversed gradient maximises an unbounded loss, so the features
        # can grow without limit; a steep rise warns of the dead-ReLU collapse described in
        # docs/results.md before the accuracy shows it.
        out = StepOutput(loss_cls + loss_dom, {
            "loss_cls": loss_cls.detach(), "loss_transfer": loss_dom.detach(),
            "domain_acc": domain_acc, "lam": lam,
            "feature_norm": feats.detach().norm(dim=1).mean()})
        return out, feats[len(xs):]
