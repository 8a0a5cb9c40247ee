"""CDAN / CDAN+E: conditional adversarial domain adaptation (Long et al., NeurIPS 2018).

Like DANN, a domain discriminator behind a gradient reversal layer, but it sees the
*multilinear map* of the features f and the classifier's softmax predictions g (the flattened
outer product f (x) g), so that alignment matches the joint distribution of features and
predicted classes instead of the features alone (DANN can align a target "3" cluster with
source "8"s; CDAN's discriminator sees which class each feature is predicted as). Above
``max_dim`` dimensions (4,096 in the paper) the map is the randomized multilinear map
``(R_f f) * (R_g g) / sqrt(random_dim)`` with fixed Gaussian matrices (``random_dim`` 1,024,
the paper's). ``method.entropy=true`` is CDAN+E: each sample's domain loss is weighted by
``1 + exp(-H(g))`` (normalised within each domain), so confident, easy-to-transfer samples
count more. The maths lives in :mod:`da_train.losses.cdan`.

Published (target accuracy, CDAN / CDAN+E, Long et al. 2018): MNIST -> USPS
93.9 / 95.6, USPS -> MNIST 96.9 / 98.0, SVHN -> MNIST 88.5 / 89.2; no MNIST -> MNIST-M number.

Deviations from the paper's protocol, on purpose (so that the rows compare with DANN's):
the backbone is the DANN digit network (the paper: LeNet for MNIST <-> USPS, a larger DTN
network for SVHN -> MNIST) and the optimiser and schedules are DANN's (SGD momentum 0.9,
lr 0.01 / (1 + 10 p)^0.75, GRL coefficient ``weight (2 / (1 + exp(-gamma p)) - 1)``); the
discriminator is FC ``disc_hidden`` - ReLU - dropout 0.5 per hidden layer - FC 1 (default
500 - 500, sized for the 1,024-d randomized map). The predictions g enter the map without
gradient (the discriminator conditions on them, it does not train the label head), and the
CDAN+E weights carry no gradient either (they re-weight the loss; they are not a target).
With the DANN digit network (1,200-d features x 10 classes = 12,000 > 4,096) the randomized
map is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import NONNEG
from ..losses import DomainDiscriminator, grad_reverse, sigmoid_ramp
from ..losses.cdan import Conditioner, domain_loss, entropy_weights
from .base import Method, MethodConfig, StepOutput


@dataclass
class CdanConfig(MethodConfig):
    weight: float = 1.0  # final gradient-reversal coefficient
    gamma: float = 10.0  # steepness of the ramp of lam over training progress p
    entropy: bool = False  # CDAN+E: entropy-conditioned sample weights
    max_dim: int = 4096  # exact multilinear map up to this many dimensions, randomized above
    random_dim: int = 1024  # output width of the randomized map
    disc_hidden: list[int] = field(default_factory=lambda: [500, 500])
    disc_dropout: float = 0.5
    renamed = {"lam": "weight"}
    rules = {"weight": NONNEG, "gamma": NONNEG,
             "max_dim": (lambda v: v >= 1, "a whole number >= 1"),
             "random_dim": (lambda v: v >= 1, "a whole number >= 1"),
             "disc_hidden": (lambda v: len(v) >= 1 and all(h > 0 for h in v),
                             "a non-empty list of layer widths > 0, e.g. [500,500]"),
             "disc_dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)")}


class CDAN(Method):
    Config = CdanConfig
    capturable = True

    def __init__(self, cfg, backbone, num_classes):
        super().__init__(cfg, backbone, num_classes)
        self.conditioner = Conditioner(self.feature_dim, num_classes, cfg.max_dim,
                                       cfg.random_dim)
        self.domain_head = DomainDiscriminator(self.conditioner.out_dim, list(cfg.disc_hidden),
                                               cfg.disc_dropout)

    def training_step(self, update, batch, progress):
        xs, ys, xt = batch.xs, batch.ys, batch.xt
        feats = self.backbone.features(torch.cat([xs, xt]))
        logits = self.backbone.classifier(feats)
        source_logits = logits[: len(xs)]
        loss_cls = F.cross_entropy(source_logits, ys)
        probs = F.softmax(logits.detach().float(), dim=1).to(feats.dtype)
        lam = sigmoid_ramp(progress, self.cfg.weight, self.cfg.gamma)
        joint = self.conditioner(grad_reverse(feats, lam), probs)
        domain_logit = self.domain_head(joint).squeeze(1)
        is_source = torch.cat([torch.ones(len(xs), dtype=torch.bool, device=feats.device),
                               torch.zeros(len(xt), dtype=torch.bool, device=feats.device)])
        weights = entropy_weights(probs, is_source) if self.cfg.entropy else None
        loss_dom = domain_loss(domain_logit, is_source, weights)
        domain_acc = ((domain_logit > 0) == is_source).float().mean()
        return StepOutput(loss_cls + loss_dom, {
            "loss_cls": loss_cls.detach(), "loss_transfer": loss_dom.detach(),
            "domain_acc": domain_acc, "lam": lam,
            "feature_norm": feats.detach().norm(dim=1).mean()},
            source_logits=source_logits, target_logits=logits[len(xs):],
            target_features=feats[len(xs):])
