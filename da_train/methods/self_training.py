"""Self-training with confident pseudo-labels.

``L = CE(source) + weight * CE(target, pseudo-labels)``: the model's own argmax on the target
batch is the label wherever its softmax confidence is >= ``method.threshold``; below the
threshold a sample contributes nothing. The target term is averaged over the whole target
batch (masked mean, as in FixMatch), so it grows with the share of confident samples
instead of jumping when only a few pass. Before ``method.start`` (a fraction of training, as
the regularisers' ``start``) the model trains on source only, so early pseudo-labels are not
pure noise.

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
    weight: float = 1.0  # weight of the pseudo-label term from start on
    threshold: float = 0.9  # minimum softmax confidence of a pseudo-label
    start: float = 0.1  # fraction of training on source only, before pseudo-labels are used
    renamed = {"lam": "weight", "warmup_steps": "start"}
    #: renamed keys whose old value counted steps and whose new one is a fraction of training:
    #: config.migrate divides the old value by trainer.steps when it moves it
    renamed_steps_to_fraction = ("warmup_steps",)
    rules = {"weight": NONNEG, "threshold": PROBABILITY,
             "start": (lambda v: 0 <= v <= 1, "a fraction of training in [0, 1] (0.1: source "
                       "only for the first 10% of the steps)")}


class SelfTraining(Method):
    Config = SelfTrainingConfig
    capturable = True

    def training_step(self, update, batch, progress):
        logits = self.predict(torch.cat([batch.xs, batch.xt]))
        source, target = logits[: len(batch.xs)], logits[len(batch.xs):]
        loss_cls = F.cross_entropy(source, batch.ys)
        loss_pl, share = pseudo_label_loss(target, self.cfg.threshold)
        on = progress >= self.cfg.start  # a device tensor when progress is one (graph capture)
        weight = (on.float() if isinstance(on, torch.Tensor) else float(on)) * self.cfg.weight
        return StepOutput(loss_cls + weight * loss_pl, {
            "loss_cls": loss_cls.detach(), "loss_transfer": loss_pl.detach(),
            "pl_share": share, "pl_weight": weight}, source_logits=source, target_logits=target)

    def eval_metrics(self, target_logits, target_labels):
        return pseudo_label_quality(target_logits, target_labels, self.cfg.threshold)
