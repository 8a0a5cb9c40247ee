"""Deep CORAL (Sun & Saenko, ECCV workshops 2016).

``loss = CE(source) + weight x ||C_S - C_T||_F^2 / (4 d^2)``: the covariance matrices of a
source and a target batch of a layer's activations are pulled together (second-order
statistics; :mod:`da_train.losses.coral`). The paper applies it to the last layer (the
classifier's outputs, ``layer: logits``); ``layer: features`` aligns the backbone's feature
vector instead. ``log_euclidean: true`` compares matrix logarithms (Log D-CORAL, Wang et al.
2017; an eigen-decomposition per step, so meant for ``layer: logits``).

Published (AlexNet, Office-31): 72.1 mean accuracy; no digit numbers. The paper picks the
weight so that the CORAL and classification losses are of similar size at the end of
training; on 10 logits ``/ (4 d^2)`` makes the term small, so the default here is larger
(``weight: 10`` on the logits, our choice from the two-moons test and the source loss, not from
target labels). Deviations: the DANN digit network and DANN's SGD schedule (rows comparable
with DANN's), and an optional ramp of the weight (``ramp: sigmoid``, DANN's schedule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import NONNEG, one_of
from ..losses import sigmoid_ramp
from ..losses.coral import coral_loss
from .base import Method, MethodConfig, StepOutput


@dataclass
class CoralConfig(MethodConfig):
    weight: float = 10.0  # weight of the CORAL distance
    layer: str = "logits"  # logits (the paper: last layer) | features
    log_euclidean: bool = False  # Log D-CORAL: compare matrix logarithms
    ramp: str = "none"  # sigmoid: raise the weight from 0 with DANN's schedule
    gamma: float = 10.0  # steepness of that ramp
    rules = {"weight": NONNEG, "gamma": NONNEG, "layer": one_of("logits", "features"),
             "ramp": one_of("none", "sigmoid")}
    renamed = {"lam": "weight"}


class CORAL(Method):
    Config = CoralConfig
    capturable = True

    def training_step(self, update, batch, progress):
        feats, source_logits, target_logits = self.joint_forward(batch)
        loss_cls = F.cross_entropy(source_logits, batch.ys)
        n = len(batch.xs)
        aligned = torch.cat([source_logits, target_logits]) if self.cfg.layer == "logits" \
            else feats
        loss_coral = coral_loss(aligned[:n], aligned[n:], self.cfg.log_euclidean)
        lam = (sigmoid_ramp(progress, self.cfg.weight, self.cfg.gamma)
               if self.cfg.ramp == "sigmoid"
               else self.cfg.weight)
        return StepOutput(loss_cls + lam * loss_coral, {
            "loss_cls": loss_cls.detach(), "loss_transfer": loss_coral.detach(), "lam": lam,
            "feature_norm": feats.detach().norm(dim=1).mean()},
            source_logits=source_logits, target_logits=target_logits,
            target_features=feats[n:])
