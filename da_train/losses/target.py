"""Losses on unlabelled target predictions: entropy and confident pseudo-labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def entropy(probs: torch.Tensor | None = None, eps: float = 0.0, *,
            logits: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row Shannon entropy (nats). From ``probs``: ``-sum p log(p + eps)`` (the papers'
    epsilons: CDAN+E 1e-8, MCC 1e-5, the validators 1e-12); from ``logits``: exact, through
    log-softmax (no epsilon needed)."""
    if logits is not None:
        log_p = F.log_softmax(logits.float(), dim=1)
        return -(log_p.exp() * log_p).sum(1)
    return -(probs * torch.log(probs + eps)).sum(1)


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the Shannon entropy (nats) of softmax(logits): minimising it
    pushes the decision boundary away from dense target regions (Grandvalet & Bengio 2005)."""
    return entropy(logits=logits).mean()


def confident_pseudo_labels(logits: torch.Tensor, threshold: float):
    """(labels, mask) from detached logits: argmax, and max-probability >= threshold."""
    confidence, labels = logits.detach().float().softmax(1).max(1)
    return labels, (confidence >= threshold).float()


def pseudo_label_loss(logits: torch.Tensor, threshold: float):
    """Masked-mean cross-entropy against confident pseudo-labels, and the confident share.

    Averaged over the whole batch (as in FixMatch), so the term grows with the share of
    confident samples instead of jumping when only a few pass the threshold."""
    labels, mask = confident_pseudo_labels(logits, threshold)
    loss = (F.cross_entropy(logits, labels, reduction="none") * mask).mean()
    return loss, mask.mean()


def pseudo_label_quality(logits, labels, threshold: float) -> dict[str, torch.Tensor]:
    """Accuracy of the confident pseudo-labels and their share, on a labelled *test* split."""
    pseudo, mask = confident_pseudo_labels(logits, threshold)
    correct = ((pseudo == labels).float() * mask).sum()
    return {"pseudo_label_acc": correct / mask.sum().clamp_min(1),
            "pseudo_label_share": mask.mean()}
