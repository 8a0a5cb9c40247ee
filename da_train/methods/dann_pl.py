"""DANN + entropy + confident pseudo-labels: ``dann_ent`` plus a self-training term.

``L = L_dann_ent + w(p) * CE(target, pseudo-labels)`` where the pseudo-labels are the model's
own argmax on the target batch wherever its softmax confidence is >= ``method.threshold``
(masked mean over the whole target batch, as in ``self_training``), and ``w(p)`` is 0 before
the fraction ``method.pl_start`` of training and ``method.pl_weight`` after it.

Why: DANN aligns the feature distributions and the entropy term moves the target decision
boundary into low-density regions, but both are soft signals; once the aligned classifier is
mostly right on its confident target samples, training on those samples as if labelled
(pseudo-labelling, the core of e.g. asymmetric tri-training, Saito et al. 2017) sharpens the
target clusters further. Starting late (``pl_start``, after DANN's coefficient has ramped up)
avoids locking in the source-only model's mistakes. threshold 0.95 and pl_start 0.3 are our
choices, not tuned on target labels. No target label is read; the quality of the
pseudo-labels is measured on the target *test* split and logged as ``val/pseudo_label_*``.

Measured: on MNIST -> MNIST-M it did not beat ``dann_ent`` in our one-seed pilots (the
model's confident target predictions were barely more accurate than the rest, so the
pseudo-labels mostly repeat its mistakes); see docs/results-absdiff.md ("What was tried").
It is kept as a documented, tested building block, not as a recommended preset.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import NONNEG, PROBABILITY
from ..losses import pseudo_label_loss, pseudo_label_quality
from .base import StepOutput
from .dann_ent import DannEntConfig, DannEntropy


@dataclass
class DannPLConfig(DannEntConfig):
    pl_weight: float = 1.0   # weight of the pseudo-label term once it is on
    threshold: float = 0.95  # minimum softmax confidence of a pseudo-label
    pl_start: float = 0.3    # fraction of training after which the term is on
    rules = {**DannEntConfig.rules, "pl_weight": NONNEG, "threshold": PROBABILITY,
             "pl_start": (PROBABILITY[0], "a fraction of training in [0, 1]")}


class DannPseudoLabel(DannEntropy):
    Config = DannPLConfig

    def training_step(self, update, batch, progress):
        out = self.dann_ent_step(batch, progress)
        loss_pl, share = pseudo_label_loss(out.target_logits, self.cfg.threshold)
        weight = self.cfg.pl_weight if progress >= self.cfg.pl_start else 0.0
        return StepOutput(out.loss + weight * loss_pl,
                          {**out.logs, "loss_pl": loss_pl.detach(), "pl_share": share,
                           "pl_weight": weight},
                          out.source_logits, out.target_logits, out.target_features)

    def eval_metrics(self, target_logits, target_labels):
        return pseudo_label_quality(target_logits, target_labels, self.cfg.threshold)
