"""BNM: batch nuclear-norm maximisation (Cui et al., CVPR 2020), used alone.

``loss = CE(source) - weight x ||softmax(target logits)||_* / B``: the nuclear norm of the
batch of target predictions grows when they are both confident and diverse, so BNM sharpens
the target predictions without letting them collapse onto a few classes (which plain entropy
minimisation invites). :mod:`da_train.losses.bnm`. As a regulariser on any other method:
``'reg=[bnm]'``.

Published: on Office-31, Office-Home and VisDA-2017 with ResNet backbones (see the paper's
tables); no digit numbers. Weight 1 here (our choice). Deviations: the DANN digit network
and DANN's SGD schedule (for rows comparable with DANN's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..config import NONNEG, MethodConfig
from ..losses.bnm import bnm_loss
from .base import Method, StepOutput


@dataclass
class BnmConfig(MethodConfig):
    weight: float = 1.0  # weight of -||A||_* / B
    rules = {"weight": NONNEG}


class BNM(Method):
    Config = BnmConfig

    def training_step(self, update, batch, progress):
        feats, source_logits, target_logits = self.joint_forward(batch)
        loss_cls = F.cross_entropy(source_logits, batch.ys)
        loss_bnm = bnm_loss(target_logits)
        return StepOutput(loss_cls + self.cfg.weight * loss_bnm, {
            "loss_cls": loss_cls.detach(), "loss_transfer": loss_bnm.detach(),
            "feature_norm": feats.detach().norm(dim=1).mean()},
            source_logits=source_logits, target_logits=target_logits,
            target_features=feats[len(batch.xs):])
