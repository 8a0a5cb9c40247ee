"""Batch Nuclear-norm Maximization (Cui et al., CVPR 2020).

For a batch of target softmax predictions A (B x K), the nuclear norm ``||A||_*`` (sum of
singular values) is large when the predictions are both confident (low entropy; the Frobenius
norm bounds it) and diverse (high rank: many classes are predicted), so maximising it fights
the collapse onto a few majority classes that plain entropy minimisation invites. The loss to
*minimise* is ``-||A||_* / B``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nuclear_norm(probs: torch.Tensor) -> torch.Tensor:
    """``||A||_* / B`` of a B x K prediction matrix (BNM's term; the BNM validator)."""
    return torch.linalg.matrix_norm(probs, ord="nuc") / len(probs)


def bnm_loss(logits: torch.Tensor) -> torch.Tensor:
    """``-||softmax(logits)||_* / B``; between ``-sqrt(min(B, K) / B)`` and 0."""
    return -nuclear_norm(F.softmax(logits.float(), dim=1))
