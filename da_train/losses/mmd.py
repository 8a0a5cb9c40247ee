"""Maximum mean discrepancy (MMD^2) between two samples, as used by DDC and DAN.

Pure tensor functions, no config objects. For samples ``S = {s_1..s_n}`` and
``T = {t_1..t_m}`` (rows of ``n x d`` and ``m x d`` tensors, ``n != m`` allowed) and a kernel
``k``:

- ``biased`` (V-statistic): ``mean_ij k(s_i, s_j) + mean_ij k(t_i, t_j) - 2 mean_ij k(s_i, t_j)``
  with the diagonal terms ``k(s_i, s_i)`` included. Always >= 0 for a characteristic kernel,
  exactly 0 when both samples are the same set, but inflated for small batches.
- ``unbiased`` (U-statistic): the two within-domain means exclude the diagonal
  (``sum_{i != j} / (n (n - 1))``); the cross term is unchanged. Unbiased for the population
  MMD^2 but can be negative, and needs ``n, m >= 2``.

Kernels:

- ``rbf``: ``k(x, y) = sum_b exp(-||x - y||^2 / b)`` over the bandwidths of
  :func:`rbf_bandwidths`. The kernels are **summed**, as in the common DAN code, not averaged:
  with ``kernel_num`` kernels the loss is up to ``kernel_num`` times an averaged one, so the
  effective weight of ``lam * mmd2`` is ``kernel_num`` times larger than with averaging.
- ``linear``: ``k(x, y) = x . y``; the biased value is ``||mean(S) - mean(T)||^2`` and both
  estimators are computed from sums in ``O((n + m) d)`` memory (no ``n x n`` matrix).

Everything runs in float32 (float64 inputs stay float64), with autocast disabled, so a bf16
autocast region in the trainer does not degrade the distances or the exponentials.
"""

from __future__ import annotations

import contextlib

import torch

KERNELS = ("rbf", "linear")
ESTIMATORS = ("biased", "unbiased")


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    """Half/bfloat16 (or integer) input -> float32; float32/float64 unchanged."""
    if not x.is_floating_point() or torch.finfo(x.dtype).bits < 32:
        return x.float()
    return x


def _no_autocast(device: torch.device):
    """A context that turns autocast off on ``device`` (a no-op where autocast is unknown)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()


def pairwise_sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``D[i, j] = ||a_i - b_j||^2`` (``n x m``), O(n m) memory.

    Computed as ``|a_i|^2 + |b_j|^2 - 2 a_i . b_j`` (one matrix product) after subtracting the
    mean of the pooled rows of ``a`` and ``b``, clamped at 0. Why this and not
    ``torch.cdist(a, b).pow(2)``:

    - ``cdist`` uses the same expansion internally for more than 25 rows, but on the raw
      inputs: when the points sit far from the origin compared with their spread, ``|a|^2`` and
      ``2 a . b`` are large and nearly cancel, and small distances come out wrong by
      ``eps * |a|^2`` (features after ReLU all have a large positive offset). Distances do not
      change under a common shift, so centring first keeps the norms as small as the spread and
      removes most of that error. The shift is detached; it does not change the gradient.
    - ``cdist`` returns the distance, so ``.pow(2)`` squares a square root: an extra rounding,
      and the backward pass goes through ``x / ||x||``, ill-conditioned for near-duplicate
      points. The squared distance is a polynomial with a well-defined gradient everywhere.

    When ``b is a`` (the joint batch against itself), the squared norms are taken from the
    diagonal of the Gram matrix, so ``D[i, i]`` is exactly 0.
    """
    a = _full_precision(a)
    b = a if b is a else _full_precision(b)
    if b is not a and a.dtype != b.dtype:
        dtype = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dtype), b.to(dtype)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"pairwise_sq_dists needs n x d and m x d inputs, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}.")
    with _no_autocast(a.device):
        if b is a:
            centre = a.detach().mean(0)
            a = a - centre
            gram = a @ a.T
            sq = gram.diagonal()
            d2 = sq[:, None] + sq[None, :] - 2.0 * gram
        else:
            centre = (a.detach().sum(0) + b.detach().sum(0)) / (len(a) + len(b))
            a, b = a - centre, b - centre
            d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
        return d2.clamp_min(0.0)


def rbf_bandwidths(sq_dists_joint: torch.Tensor, n_total: int, kernel_num: int = 5,
                   kernel_mul: float = 2.0, fix_sigma: float | None = None) -> torch.Tensor:
    """The ``kernel_num`` RBF bandwidths ``base * kernel_mul ** (i - kernel_num // 2)``.

    A bandwidth ``bw`` is used as ``exp(-||x - y||^2 / bw)``: it is in the units of the
    **squared** distance (it plays the role of ``2 sigma^2`` of a Gaussian, not of ``sigma``).
    With ``kernel_num=5, kernel_mul=2`` the bandwidths are ``base * (1/4, 1/2, 1, 2, 4)``.

    ``base`` is:

    - ``fix_sigma`` when given (a positive number, same units: a squared distance). It is
      honoured as is; the popular DAN snippet silently ignores it.
    - otherwise the mean of the off-diagonal entries of ``sq_dists_joint``, the
      ``n_total x n_total`` squared distances of the pooled source + target batch. It is
      computed without gradient, so the loss cannot shrink by moving the bandwidth. If all the
      points coincide (mean 0) any bandwidth gives the same kernel, and 1 is used to avoid 0/0.

    Returns a 1-D tensor (dtype and device of ``sq_dists_joint``, no gradient). Everything
    stays on the device: no host synchronisation.
    """
    if kernel_num < 1:
        raise ValueError(f"kernel_num must be >= 1, got {kernel_num}.")
    if not kernel_mul > 0:
        raise ValueError(f"kernel_mul must be > 0, got {kernel_mul}.")
    d2 = sq_dists_joint.detach()
    if d2.shape != (n_total, n_total):
        raise ValueError(f"sq_dists_joint must be {n_total} x {n_total}, got {tuple(d2.shape)}.")
    exponents = torch.arange(kernel_num, device=d2.device, dtype=d2.dtype) - kernel_num // 2
    scales = torch.pow(float(kernel_mul), exponents)
    if fix_sigma is not None:
        if not fix_sigma > 0:
            raise ValueError(f"fix_sigma must be > 0 (a squared distance) or None, "
                             f"got {fix_sigma}.")
        return scales * fix_sigma
    if n_total < 2:
        raise ValueError("The data-driven bandwidth needs at least 2 points in the joint batch.")
    base = (d2.sum() - d2.diagonal().sum()) / (n_total * (n_total - 1))
    base = torch.where(base > 0, base, torch.ones_like(base))
    return scales * base


def _estimate(k_ss_sum, k_ss_diag, k_tt_sum, k_tt_diag, k_st_sum, n: int, m: int,
              estimator: str) -> torch.Tensor:
    """Combine block sums of the kernel matrix into the biased or unbiased MMD^2."""
    if estimator == "biased":
        return k_ss_sum / (n * n) + k_tt_sum / (m * m) - 2.0 * k_st_sum / (n * m)
    return ((k_ss_sum - k_ss_diag) / (n * (n - 1)) + (k_tt_sum - k_tt_diag) / (m * (m - 1))
            - 2.0 * k_st_sum / (n * m))


def mmd2(source: torch.Tensor, target: torch.Tensor, kernel: str = "rbf", kernel_num: int = 5,
         kernel_mul: float = 2.0, fix_sigma: float | None = None,
         estimator: str = "biased") -> tuple[torch.Tensor, torch.Tensor]:
    """MMD^2 between the rows of ``source`` (``n x d``) and ``target`` (``m x d``).

    Returns ``(value, bandwidths)``: a 0-d tensor (differentiable with respect to both inputs)
    and the 1-D tensor of RBF bandwidths used (see :func:`rbf_bandwidths`; empty for the
    linear kernel). The rbf kernel builds one ``(n + m) x (n + m)`` distance matrix for the
    pooled batch and slices its blocks; memory is O((n + m)^2), never O((n + m)^2 d).
    """
    if kernel not in KERNELS:
        raise ValueError(f"Unknown kernel {kernel!r}; choices: {', '.join(KERNELS)}.")
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {estimator!r}; choices: {', '.join(ESTIMATORS)}.")
    if source.dim() != 2 or target.dim() != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(f"mmd2 needs n x d and m x d inputs, got {tuple(source.shape)} and "
                         f"{tuple(target.shape)}.")
    n, m = len(source), len(target)
    if n < 1 or m < 1:
        raise ValueError(f"mmd2 needs non-empty samples, got n={n}, m={m}.")
    if estimator == "unbiased" and (n < 2 or m < 2):
        raise ValueError(f"The unbiased estimator needs n, m >= 2 samples, got n={n}, m={m}.")
    source, target = _full_precision(source), _full_precision(target)
    dtype = torch.promote_types(source.dtype, target.dtype)
    source, target = source.to(dtype), target.to(dtype)

    with _no_autocast(source.device):
        if kernel == "linear":
            sum_s, sum_t = source.sum(0), target.sum(0)
            if estimator == "biased":
                # ||mean_s - mean_t||^2 directly: no cancellation between large block sums.
                diff = sum_s / n - sum_t / m
                value = diff @ diff
            else:
                # The U-statistic does not change under a common shift of both samples:
                # centring on the pooled mean (detached) avoids cancellation below.
                centre = (sum_s + sum_t).detach() / (n + m)
                source, target = source - centre, target - centre
                sum_s, sum_t = sum_s - n * centre, sum_t - m * centre
                # sum_ij x_i . x_j = |sum_i x_i|^2 and the diagonal is sum_i |x_i|^2.
                value = _estimate(sum_s @ sum_s, (source * source).sum(), sum_t @ sum_t,
                                  (target * target).sum(), sum_s @ sum_t, n, m, estimator)
            return value, source.new_zeros(0)

        joint = torch.cat([source, target])
        d2 = pairwise_sq_dists(joint, joint)
        bandwidths = rbf_bandwidths(d2, n + m, kernel_num, kernel_mul, fix_sigma)
        k = None
        for bw in bandwidths:  # one n+m square matrix at a time, not kernel_num at once
            term = torch.exp(-d2 / bw)
            k = term if k is None else k + term
        k_ss, k_tt, k_st = k[:n, :n], k[n:, n:], k[:n, n:]
        value = _estimate(k_ss.sum(), k_ss.diagonal().sum(), k_tt.sum(), k_tt.diagonal().sum(),
                          k_st.sum(), n, m, estimator)
        return value, bandwidths
