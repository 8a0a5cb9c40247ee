"""MDD's margin disparity loss (Zhang, Liu, Long & Jordan, ICML 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: added inside the log of ``1 - p``, as TLlib's ``shift_log``
LOG_OFFSET = 1e-6


def log_one_minus_softmax(logits: torch.Tensor, labels: torch.Tensor,
                          offset: float = LOG_OFFSET) -> torch.Tensor:
    """``log(1 - softmax(logits)_y + offset)`` per row. The offset keeps the value finite
    (``>= log(offset)``) where ``1 - p_y`` rounds to 0, and bounds the term the features
    maximise through the gradient reversal: without it the features can push it towards
    infinity and blow up (they did on the toy problem)."""
    p = F.softmax(logits.float(), dim=1).gather(1, labels[:, None]).squeeze(1)
    return torch.log((1.0 - p).clamp_min(0.0) + offset)


def margin_disparity_loss(adv_source: torch.Tensor, adv_target: torch.Tensor,
                          pred_source: torch.Tensor, pred_target: torch.Tensor,
                          margin: float) -> torch.Tensor:
    """``margin * CE(f'(source), y_hat_s) - mean_t log(1 - softmax(f'(target))_{y_hat_t})``.

    ``adv_*``: the auxiliary classifier f' on the (gradient-reversed) features; ``pred_*``:
    the labels the main classifier f predicts (argmax, no gradient). f' minimising it agrees
    with f on the source and disagrees on the target; the features, behind the reversal,
    maximise it. ``margin`` is the paper's gamma (the code's ``srcweight``)."""
    source_term = F.cross_entropy(adv_source.float(), pred_source)
    target_term = -log_one_minus_softmax(adv_target, pred_target).mean()
    return margin * source_term + target_term
