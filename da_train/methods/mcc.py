"""MCC: minimum class confusion (Jin et al., ECCV 2020), used alone.

``loss = CE(source) + weight x MCC(target logits)``: no domain discriminator and no
distribution distance; the target predictions are made to stop spreading their mass over
pairs of classes at once (the row-normalised, entropy-weighted class-correlation matrix of
temperature-scaled target predictions should be diagonal; :mod:`da_train.losses.mcc`). As a
regulariser on top of any other method: ``'reg=[mcc]'``.

Published: on Office-31, Office-Home, VisDA-2017 and DomainNet with ResNet backbones (see the
paper's tables); no digit numbers. SKADA-bench (2024; small CNN, realistic validation)
reports MCC as the best method on MNIST -> USPS, about 0.98. The paper's settings:
temperature 2.5 (2.5-3 in its ablation), weight 1, no ramp.
Deviations: the DANN digit network and DANN's SGD schedule (for rows comparable with DANN's)
instead of the paper's ResNet-50 with its own schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..config import NONNEG, POSITIVE, MethodConfig
from ..losses.mcc import mcc_loss
from .base import Method, StepOutput


@dataclass
class MccConfig(MethodConfig):
    weight: float = 1.0  # weight of the MCC term
    temperature: float = 2.5  # softmax temperature of the target predictions
    rules = {"weight": NONNEG, "temperature": POSITIVE}


class MCC(Method):
    Config = MccConfig

    def training_step(self, update, batch, progress):
        feats, source_logits, target_logits = self.joint_forward(batch)
        loss_cls = F.cross_entropy(source_logits, batch.ys)
        loss_mcc = mcc_loss(target_logits, self.cfg.temperature)
        return StepOutput(loss_cls + self.cfg.weight * loss_mcc, {
            "loss_cls": loss_cls.detach(), "loss_transfer": loss_mcc.detach(),
            "feature_norm": feats.detach().norm(dim=1).mean()},
            source_logits=source_logits, target_logits=target_logits,
            target_features=feats[len(batch.xs):])
