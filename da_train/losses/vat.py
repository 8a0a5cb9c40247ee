"""Virtual adversarial training (Miyato et al., TPAMI 2018), as used by VADA (Shu et al. 2018).

VAT makes the classifier locally smooth: it finds the small input perturbation ``r`` (norm
``eps``) that changes the prediction most -- by power iteration: start from a random unit
direction ``d``, take the gradient of ``KL(p(x) || p(x + xi d))`` with respect to ``d`` and
normalise it (one iteration is the paper's choice) -- and penalises ``KL(p(x) || p(x + r))``.
The clean prediction ``p(x)`` is a fixed target (no gradient flows into it), and the search for
``r`` leaves no gradient in the model's parameters: only the final KL is differentiated.

Deviation: the papers probe with ``xi = 1e-6``; in float32 (and bf16 autocast) the KL's
gradient at that distance is rounding noise, so the direction found is random (a test shows
it on a linear model); the default here is ``xi = 1e-2``, still far below ``eps``, and gives
the exact direction on that model.

``predict`` is any callable images -> logits (the method's ``predict``). Models with BatchNorm
in train mode (``dann_digits_bn``, ``dirtt_digits``) see the perturbed batches too, and
their running statistics move with them; ``dann_digits`` and ``lenet`` have no BatchNorm.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _unit(d: torch.Tensor) -> torch.Tensor:
    """Each sample's perturbation scaled to L2 norm 1 over all its non-batch dimensions."""
    flat = d.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(d)


def kl_from_logits(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``KL(softmax(p) || softmax(q))``."""
    log_p = F.log_softmax(p_logits.float(), dim=1)
    log_q = F.log_softmax(q_logits.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()


def adversarial_direction(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                          clean_logits: torch.Tensor, xi: float = 1e-2,
                          iterations: int = 1) -> torch.Tensor:
    """The unit direction (per sample) that increases ``KL(p(x) || p(x + r))`` most, by
    ``iterations`` steps of power iteration from a random direction. ``torch.autograd.grad``
    with respect to ``d`` only: no parameter receives a gradient from the search."""
    clean = clean_logits.detach()
    d = _unit(torch.randn_like(x))
    for _ in range(iterations):
        d.requires_grad_(True)
        dist = kl_from_logits(clean, predict(x.detach() + xi * d))
        (grad,) = torch.autograd.grad(dist, d)
        d = _unit(grad.detach())
    return d


def vat_loss(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             clean_logits: torch.Tensor | None = None, eps: float = 1.0, xi: float = 1e-2,
             iterations: int = 1) -> torch.Tensor:
    """``KL(p(x) || p(x + eps d_adv))`` with ``p(x)`` held fixed. Pass ``clean_logits`` when
    the caller already has ``predict(x)`` (saves a forward pass)."""
    if clean_logits is None:
        with torch.no_grad():
            clean_logits = predict(x)
    clean = clean_logits.detach()
    d = adversarial_direction(predict, x, clean, xi, iterations)
    return kl_from_logits(clean, predict(x.detach() + eps * d))
