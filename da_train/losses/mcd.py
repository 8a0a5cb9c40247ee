"""MCD's classifier discrepancy (Saito et al., CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classifier_discrepancy(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """Mean over the batch and the classes of ``|softmax(logits1) - softmax(logits2)|`` (the
    paper's L1 discrepancy divided by the number of classes, as the authors' code)."""
    p1 = F.softmax(logits1.float(), dim=1)
    p2 = F.softmax(logits2.float(), dim=1)
    return (p1 - p2).abs().mean()
