"""MDD: margin disparity discrepancy (Zhang, Liu, Long & Jordan, "Bridging Theory and
Algorithm for Domain Adaptation", ICML 2019).

Besides the label head f, an auxiliary (adversarial) classifier f' of the same shape sits
behind a gradient reversal layer on the features. With ``y_hat = argmax f`` (no gradient),
the transfer loss (:func:`da_train.losses.mdd.margin_disparity_loss`) is

``margin * CE(f'(psi(xs)), y_hat_s) - mean_t log(1 - softmax(f'(psi(xt)))_{y_hat_t})``:

f' minimises it (agree with f on the source, disagree on the target), the features psi,
through the reversal, maximise it; the total loss is ``CE(f(psi(xs)), ys) + transfer``. The
margin factor ``method.margin`` is the paper's gamma (the authors' code: 4 on Office-31, 2 on
Office-Home). The reversal coefficient ramps ``weight * (2 / (1 + exp(-gamma_ramp p)) - 1)``
(``method.weight`` 0.1, ``method.gamma`` 10, as DANN's): the authors' code ramps to 0.1 as
``2 / (1 + exp(-iteration / 1000)) - 1``, which over a 10,000-step run is gamma 10.
``log(1 - p)`` is ``log(1 - p + 1e-6)`` (as TLlib's ``shift_log``; the authors' code has no
offset): finite where ``1 - p`` rounds to 0, and bounded, so the features cannot drive the
term to infinity through the reversal.

Published: no digit results (the paper reports Office-31, Office-Home and VisDA-2017).

Network (the authors' code): the backbone's features go through a bottleneck (Linear
``method.bottleneck`` + BatchNorm + ReLU + dropout 0.5); the label head f and the adversary
f' are each Linear ``method.width`` + ReLU + dropout 0.5 + Linear to the classes, on the
bottleneck's output, and the reversal sits between the bottleneck and f'. The backbone's own
label head is replaced. The BatchNorm matters: with the backbone's features feeding f'
directly (tried first), the features, maximising ``margin * CE`` through the reversal, grew
without bound on MNIST -> USPS and the loss became NaN (docs/results-notes.md).

Digit protocol chosen here (documented, not the paper's): bottleneck 256 and width 256 (the
code: 1,024 for ResNet-50 features), margin 4 (the code's Office-31 value), the DANN SGD
schedule (lr 0.01 / (1 + 10 p)^0.75, momentum 0.9) with weight decay 5e-4 (the code's),
batch 64 + 64, 10,000 steps, the repository's pair protocols. MNIST -> USPS, one seed:
docs/results.md. The paper's ResNet-50 protocol (lr 0.004, Nesterov,
100,000 iterations, batch 32 + 32) is for photos.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NONNEG, WHOLE_POSITIVE
from ..losses import grad_reverse, sigmoid_ramp
from ..losses.mdd import margin_disparity_loss
from .base import Method, MethodConfig, StepOutput


@dataclass
class MddConfig(MethodConfig):
    margin: float = 4.0  # the margin factor gamma (the code's srcweight)
    weight: float = 0.1  # final gradient-reversal coefficient
    gamma: float = 10.0  # steepness of the ramp of lam over training progress p
    bottleneck: int = 256  # width of the bottleneck (Linear + BatchNorm + ReLU + dropout)
    width: int = 256  # hidden width of the label head and of the adversary
    rules = {"margin": NONNEG, "weight": NONNEG, "gamma": NONNEG,
             "bottleneck": WHOLE_POSITIVE, "width": WHOLE_POSITIVE}


def _head(width: int, hidden: int, num_classes: int) -> nn.Sequential:
    """Linear + ReLU + dropout 0.5 + Linear: f and f' of the authors' code."""
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
                         nn.Linear(hidden, num_classes))


class MDD(Method):
    Config = MddConfig
    capturable = True

    def __init__(self, cfg, backbone, num_classes):
        super().__init__(cfg, backbone, num_classes)
        bottleneck = nn.Sequential(nn.Linear(self.feature_dim, cfg.bottleneck),
                                   nn.BatchNorm1d(cfg.bottleneck), nn.ReLU(inplace=True),
                                   nn.Dropout(0.5))
        # predict() and embed() see bottleneck -> f through the backbone's label-head slot
        backbone.classifier = nn.Sequential(bottleneck, _head(cfg.bottleneck, cfg.width,
                                                              num_classes))
        self.adversary = _head(cfg.bottleneck, cfg.width, num_classes)

    def training_step(self, update, batch, progress):
        xs, ys, xt = batch.xs, batch.ys, batch.xt
        n = len(xs)
        bottleneck, head = self.backbone.classifier
        feats = bottleneck(self.backbone.features(torch.cat([xs, xt])))
        logits = head(feats)
        loss_cls = F.cross_entropy(logits[:n], ys)
        lam = sigmoid_ramp(progress, self.cfg.weight, self.cfg.gamma)
        adv = self.adversary(grad_reverse(feats, lam))
        predicted = logits.detach().argmax(1)
        transfer = margin_disparity_loss(adv[:n], adv[n:], predicted[:n], predicted[n:],
                                         self.cfg.margin)
        agree = (adv.detach().argmax(1) == predicted).float()
        return StepOutput(loss_cls + transfer, {
            "loss_cls": loss_cls.detach(), "loss_transfer": transfer.detach(), "lam": lam,
            "adv_agree_source": agree[:n].mean(), "adv_agree_target": agree[n:].mean(),
            "feature_norm": feats.detach().norm(dim=1).mean()},
            source_logits=logits[:n], target_logits=logits[n:], target_features=feats[n:])

    def embed(self, x, domain):
        """The bottleneck's output: the features both heads and the reversal see."""
        return self.backbone.classifier[0](self.backbone.features(x))
