"""Teacher-student terms: the EMA update, self-ensembling's confidence-masked consistency and
class balance (French et al., ICLR 2018), DIRT-T's KL to a teacher (Shu et al., ICLR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def ema_update(teacher: list[torch.Tensor], student: list[torch.Tensor], decay: float) -> None:
    """``t <- decay * t + (1 - decay) * s`` for each pair of tensors, in place, on the
    device (no host sync)."""
    torch._foreach_lerp_(teacher, student, 1.0 - decay)


def confidence_mask(teacher_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """1.0 where the teacher's largest class probability exceeds ``threshold``, else 0.0."""
    return (F.softmax(teacher_logits.detach().float(), 1).max(1).values > threshold).float()


def masked_consistency(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """``mean_i m_i mean_k (p_ik - q_ik)^2`` of the student's and the (fixed) teacher's class
    probabilities, averaged over the **whole** batch (the masked samples count as zeros)."""
    p = F.softmax(student_logits.float(), 1)
    q = F.softmax(teacher_logits.detach().float(), 1)
    return (((p - q) ** 2).mean(1) * mask).mean()


def class_balance(student_logits: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``sum_k BCE(mean_i p_ik, 1/K)`` (= K x the mean over classes): penalises a batch whose
    average prediction leaves the uniform 1/K, so confident predictions cannot all fall in
    one class. ``eps`` inside the logs as the authors' "robust" BCE."""
    p_bar = F.softmax(student_logits.float(), 1).mean(0)
    t = 1.0 / student_logits.shape[1]
    bce = -(t * torch.log(p_bar + eps) + (1 - t) * torch.log(1 - p_bar + eps))
    return bce.sum()


def kl_to_teacher(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``KL(softmax(teacher) || softmax(student))``; the teacher's side
    is a fixed target (no gradient)."""
    log_q = F.log_softmax(teacher_logits.detach().float(), 1)
    log_p = F.log_softmax(student_logits.float(), 1)
    return (log_q.exp() * (log_q - log_p)).sum(1).mean()
