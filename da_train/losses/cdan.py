"""CDAN's conditioning of the domain discriminator (Long et al., NeurIPS 2018).

The discriminator of CDAN does not see the features ``f`` alone but their *multilinear map*
with the classifier's softmax predictions ``g``: the flattened outer product ``f (x) g``, so it
can align the joint distribution of features and predicted classes (the multimodal structure
that DANN's marginal alignment ignores). When ``dim(f) * dim(g)`` is larger than a threshold
(4,096 in the paper) the outer product is replaced by the *randomized* multilinear map
``(R_f f) * (R_g g) / sqrt(d)`` with fixed Gaussian matrices and ``d = 1,024`` output
dimensions, an unbiased estimator of the outer product's inner products. CDAN+E weights each
sample's domain loss by ``1 + exp(-H(g))``, so that confident (easy to transfer) samples count
more, normalised within each domain.

Pure tensor functions; the method in ``da_train/methods/cdan.py`` wires them to the trainer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .target import entropy

#: Above this many outer-product dimensions the paper switches to the randomized map.
MAX_MULTILINEAR_DIM = 4096
#: Output width of the randomized multilinear map in the paper.
RANDOM_DIM = 1024


def multilinear_map(features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The flattened outer product ``f (x) g``: (B, F) x (B, K) -> (B, F * K),
    element ``[b, i * K + k] = f[b, i] * g[b, k]``."""
    return torch.bmm(features.unsqueeze(2), probs.unsqueeze(1)).flatten(1)


class RandomizedMultilinear(nn.Module):
    """``(f R_f) * (g R_g) / sqrt(d)`` with fixed standard-Gaussian ``R_f`` (F x d) and ``R_g``
    (K x d). The matrices are buffers: drawn once from the global RNG at construction (so the
    run's seed fixes them), saved in checkpoints, never trained."""

    def __init__(self, feature_dim: int, num_classes: int, out_dim: int = RANDOM_DIM):
        super().__init__()
        self.out_dim = out_dim
        self.register_buffer("r_f", torch.randn(feature_dim, out_dim))
        self.register_buffer("r_g", torch.randn(num_classes, out_dim))

    def forward(self, features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return (features @ self.r_f) * (probs @ self.r_g) / math.sqrt(self.out_dim)


class Conditioner(nn.Module):
    """The map CDAN feeds its discriminator: exact multilinear when ``F * K <= max_dim``,
    randomized otherwise (``max_dim=1`` forces the randomized map). ``out_dim`` is the width of its
    output, which sizes the discriminator."""

    def __init__(self, feature_dim: int, num_classes: int, max_dim: int = MAX_MULTILINEAR_DIM,
                 random_dim: int = RANDOM_DIM):
        super().__init__()
        randomized = feature_dim * num_classes > max_dim
        self.random = RandomizedMultilinear(feature_dim, num_classes, random_dim) \
            if randomized else None
        self.out_dim = random_dim if randomized else feature_dim * num_classes

    def forward(self, features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        if self.random is None:
            return multilinear_map(features, probs)
        return self.random(features, probs)


def entropy_weights(probs: torch.Tensor, is_source: torch.Tensor) -> torch.Tensor:
    """CDAN+E's sample weights ``1 + exp(-H(g))``, normalised to sum 1 within each domain
    (so both domains weigh equally whatever their confidence), computed without gradient: they
    only re-weight the domain loss. ``is_source`` is a bool mask over the batch."""
    with torch.no_grad():
        w = 1.0 + torch.exp(-entropy(probs.float(), 1e-8))
        src = is_source.to(w.dtype)
        w_src = w * src / (w * src).sum().clamp_min(1e-12)
        w_tgt = w * (1 - src) / (w * (1 - src)).sum().clamp_min(1e-12)
        return w_src + w_tgt


def domain_loss(domain_logits: torch.Tensor, is_source: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of the discriminator (source = 1, target = 0): plain mean, or
    ``sum(w * bce) / sum(w)`` with CDAN+E's weights."""
    bce = F.binary_cross_entropy_with_logits(domain_logits.float(), is_source.float(),
                                             reduction="none")
    if weights is None:
        return bce.mean()
    return (weights * bce).sum() / weights.sum()
