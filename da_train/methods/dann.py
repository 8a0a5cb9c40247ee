"""DANN: a domain classifier behind a gradient reversal layer (Ganin & Lempitsky 2015).

The feature extractor is trained to classify source digits while making the domain
classifier fail; the reversal coefficient (``method.weight``: the weight of the adversarial
term in the features' gradient) is ramped ``weight * (2 / (1 + exp(-gamma p)) - 1)``
so the noisy early domain signal does not wreck the features. Published: 0.7666 target
accuracy on MNIST -> MNIST-M (Ganin et al., JMLR 2016, table 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import NONNEG
from ..losses import DomainDiscriminator, grad_reverse, sigmoid_ramp
from .base import Method, MethodConfig, StepOutput


@dataclass
class DannConfig(MethodConfig):
    weight: float = 1.0     # final gradient-reversal coefficient
    gamma: float = 10.0  # steepness of the ramp of lam over training progress p
    rules = {"weight": NONNEG, "gamma": NONNEG}
    renamed = {"lam": "weight"}


class DANN(Method):
    Config = DannConfig
    capturable = True

    def __init__(self, cfg, backbone, num_classes):
        super().__init__(cfg, backbone, num_classes)
        self.domain_head = DomainDiscriminator(self.feature_dim, [100])

    def training_step(self, update, batch, progress):
        return self.dann_step(batch, progress)

    def dann_step(self, batch, progress) -> StepOutput:
        """The DANN loss and logs, with the source logits and the target features."""
        xs, ys, xt = batch.xs, batch.ys, batch.xt
        feats = self.backbone.features(torch.cat([xs, xt]))
        source_logits = self.backbone.classifier(feats[: len(xs)])
        loss_cls = F.cross_entropy(source_logits, ys)
        lam = sigmoid_ramp(progress, self.cfg.weight, self.cfg.gamma)
        domain_logit = self.domain_head(grad_reverse(feats, lam)).squeeze(1)
        domain = torch.cat([feats.new_ones(len(xs)), feats.new_zeros(len(xt))])
        loss_dom = F.binary_cross_entropy_with_logits(domain_logit, domain)
        domain_acc = ((domain_logit > 0).float() == domain).float().mean()
        # feature_norm: the reversed gradient maximises an unbounded loss, so the features
        # can grow without limit; a steep rise warns of the dead-ReLU collapse described in
        # docs/results-notes.md before the accuracy shows it.
        return StepOutput(loss_cls + loss_dom, {
            "loss_cls": loss_cls.detach(), "loss_transfer": loss_dom.detach(),
            "domain_acc": domain_acc, "lam": lam,
            "feature_norm": feats.detach().norm(dim=1).mean()},
            source_logits=source_logits, target_features=feats[len(xs):])
