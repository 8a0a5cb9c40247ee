"""Deep CORAL (Sun & Saenko, ECCV workshops 2016) and its log-Euclidean variant.

Aligns the second-order statistics of source and target features:
``||C_S - C_T||_F^2 / (4 d^2)`` with ``C`` the unbiased (n - 1) covariance of a batch of
d-dimensional features. The log-Euclidean variant (Log D-CORAL, Wang et al. 2017) compares the
matrix logarithms ``log(C + eps I)`` instead, a distance on the manifold of covariance
matrices; it needs an eigen-decomposition (d x d), so it is for small feature widths.
"""

from __future__ import annotations

import torch


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance (d x d) of the rows of ``x`` (n x d), n >= 2."""
    x = x.float()
    centred = x - x.mean(0, keepdim=True)
    return centred.t() @ centred / (len(x) - 1)


def _spd_log(c: torch.Tensor, eps: float) -> torch.Tensor:
    """Matrix logarithm of a symmetric positive semi-definite matrix, regularised by eps I."""
    vals, vecs = torch.linalg.eigh(c + eps * torch.eye(len(c), device=c.device, dtype=c.dtype))
    return vecs @ torch.diag_embed(torch.log(vals.clamp_min(eps))) @ vecs.t()


def coral_loss(source: torch.Tensor, target: torch.Tensor, log_euclidean: bool = False,
               eps: float = 1e-5) -> torch.Tensor:
    """``||C_S - C_T||_F^2 / (4 d^2)`` (or with ``log C`` when ``log_euclidean``)."""
    cs, ct = covariance(source), covariance(target)
    if log_euclidean:
        cs, ct = _spd_log(cs, eps), _spd_log(ct, eps)
    d = source.shape[1]
    return (cs - ct).pow(2).sum() / (4 * d * d)
