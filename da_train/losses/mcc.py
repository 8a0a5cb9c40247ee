"""Minimum Class Confusion (Jin et al., ECCV 2020).

On a target batch, the classifier should not spread probability mass over pairs of classes at
once ("confusing" them). MCC measures this on temperature-scaled predictions ``Y = softmax(z /
T)`` (B x K): each sample is weighted by ``1 + exp(-H(Y_i))`` (confident samples say more about
the class structure), rescaled to sum to B; the class-correlation matrix ``C = Y^T W Y`` is
row-normalised (each class's row sums to 1, so frequent classes do not dominate), and the loss
is the mean off-diagonal mass ``(sum(C) - trace(C)) / K``. The weights carry no gradient, as
in the paper's code: they re-weight the loss, they are not a target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .target import entropy


def class_confusion(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """The row-normalised, entropy-weighted class-correlation matrix (K x K)."""
    probs = F.softmax(logits.float() / temperature, dim=1)
    with torch.no_grad():
        h = entropy(probs, 1e-5)
        w = 1.0 + torch.exp(-h)
        w = len(probs) * w / w.sum()
    conf = (probs * w.unsqueeze(1)).t() @ probs
    return conf / conf.sum(1, keepdim=True)


def mcc_loss(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """``(sum(C) - trace(C)) / K``: 0 when no two classes are predicted together."""
    conf = class_confusion(logits, temperature)
    return (conf.sum() - conf.trace()) / conf.shape[0]
