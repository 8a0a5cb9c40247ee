"""Self-training with confident pseudo-labels.

``L = CE(source) + weight * CE(target, pseudo-labels)``: the model's own argmax on the target
batch is the label wherever its softmax confidence is >= ``method.threshold``; below the
threshold a sample contributes nothing. The target term is averaged over the whole target
batch (masked mean, as in FixMatch), so it grows with the share of confident samples
instead of jumping when only a few pass. For the first ``method.warmup_steps`` steps the
model trains on source only, so early pseudo-labels are not pure noise.

Logged: ``train/pl_share`` (share of the target batch above the threshold) and, at every
evaluation, ``val/pseudo_label_acc`` / ``val/pseudo_label_share`` measured on the target
*test* split: no target training label is ever read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import NONNEG, PROBABILITY
from ..losses import pseudo_label_loss, pseudo_label_quality
from .base import Method, MethodConfig, StepOutput


@dataclass
class SelfTrainingConfig(MethodConfig):
    weight: float = 1.0         # weight of the pseudo-label term after the warm-up
    threshold: float = 0.9   # minimum softmax confidence of a pseudo-label
    warmup_steps: int = 1000  # source-only steps before pseudo-labels are used
    renamed = {"lam": "weight"}
    rules = {"weight": NONNEG, "threshold": PROBABILITY,
             "warmup_steps": (lambda v: v >= 0, "a whole number >= 0")}


class SelfTraining(Method):
    Config = SelfTrainingConfig

    def phases(self, steps):
        self.total_steps = steps
        return super().phases(steps)

    def training_step(self, update, batch, progress):
        logits = self.predict(torch.cat([batch.xs, batch.xt]))
        source, target = logits[: len(batch.xs)], logits[len(batch.xs):]
        loss_cls = F.cross_entropy(source, batch.ys)
        loss_pl, share = pseudo_label_loss(target, self.cfg.threshold)
        weight = self.cfg.weight if progress * self.total_steps >= self.cfg.warmup_steps else 0.0
        return StepOutput(loss_cls + weight * loss_pl, {
            "loss_cls": loss_cls.detach(), "loss_transfer": loss_pl.detach(),
            "pl_share": share, "pl_weight": weight}, source_logits=source, target_logits=target)

    def eval_metrics(self, target_logits, target_labels):
        return pseudo_label_quality(target_logits, target_labels, self.cfg.threshold)
