"""Self-training with confident pseudo-labels.

``L = CE(source) + lam * CE(target, pseudo-labels)``: the model's own argmax on the target
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

import torch
import torch.nn.functional as F

from .base import Method, StepOutput


def confident_pseudo_labels(logits: torch.Tensor, threshold: float):
    """(labels, mask) from detached logits: argmax, and max-probability >= threshold."""
    confidence, labels = logits.detach().float().softmax(1).max(1)
    return labels, (confidence >= threshold).float()


def pseudo_label_loss(logits: torch.Tensor, threshold: float):
    """Masked-mean cross-entropy against confident pseudo-labels, and the confident share."""
    labels, mask = confident_pseudo_labels(logits, threshold)
    loss = (F.cross_entropy(logits, labels, reduction="none") * mask).mean()
    return loss, mask.mean()


def pseudo_label_quality(logits, labels, threshold: float) -> dict[str, torch.Tensor]:
    """Accuracy of the confident pseudo-labels and their share, on a labelled *test* split."""
    pseudo, mask = confident_pseudo_labels(logits, threshold)
    correct = ((pseudo == labels).float() * mask).sum()
    return {"pseudo_label_acc": correct / mask.sum().clamp_min(1),
            "pseudo_label_share": mask.mean()}


class SelfTraining(Method):
    def phases(self, steps):
        self.total_steps = steps
        return super().phases(steps)

    def training_step(self, update, batch, progress):
        logits = self.predict(torch.cat([batch.xs, batch.xt]))
        source, target = logits[: len(batch.xs)], logits[len(batch.xs):]
        loss_cls = F.cross_entropy(source, batch.ys)
        loss_pl, share = pseudo_label_loss(target, self.cfg.threshold)
        weight = self.cfg.lam if progress * self.total_steps >= self.cfg.warmup_steps else 0.0
        return StepOutput(loss_cls + weight * loss_pl, {
            "loss_cls": loss_cls.detach(), "loss_transfer": loss_pl.detach(),
            "pl_share": share, "pl_weight": weight})

    def eval_metrics(self, target_logits, target_labels):
        return pseudo_label_quality(target_logits, target_labels, self.cfg.threshold)
