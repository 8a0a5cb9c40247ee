"""Batched, on-device augmentation of already-normalised network inputs (self-ensembling's
"translation + flip + affine" augmentation and its intensity / noise terms).

Everything is one set of tensor operations on the batch's own device, with random numbers
from torch's global generator on that device (the trainer seeds it), so a seed gives the same
augmented batch. Images (``B x C x H x W``) get the geometric and intensity terms; any other
input (vectors, signals) only the additive Gaussian noise.

Geometric (one ``grid_sample`` for the whole batch, bilinear, border padding so the shifted-in
pixels copy the background): each image's 2 x 3 affine matrix (in ``affine_grid``'s
normalised coordinates, centred on the image) is the identity, plus ``N(0, affine_std)`` on
its 2 x 2 linear part (small scales, rotations, shears), plus a translation uniform in
``+-translate`` pixels on each axis, with a horizontal flip (x -> -x) with probability 1/2
when ``hflip`` (never for digits). Intensity: ``x -> s x + o`` with ``s`` uniform in
``scale``, ``o`` uniform in ``offset`` and a sign flip with probability 1/2 when
``intensity_flip`` (per image). Noise: ``+ N(0, noise_std)`` per input value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentSettings:
    translate: float = 2.0        # pixels, each axis
    affine_std: float = 0.1       # std of the noise on the 2 x 2 linear part
    hflip: bool = False
    intensity_flip: bool = False
    scale: tuple[float, float] = (1.0, 1.0)
    offset: tuple[float, float] = (0.0, 0.0)
    noise_std: float = 0.1


def _uniform(n: int, low: float, high: float, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=device)


def affine_matrices(n: int, height: int, width: int, translate: float, affine_std: float,
                    hflip: bool, device) -> torch.Tensor:
    """``n x 2 x 3`` matrices for ``affine_grid`` (normalised coordinates, see the module)."""
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    if affine_std > 0:
        theta[:, :, :2] += affine_std * torch.randn(n, 2, 2, device=device)
    if hflip:
        sign = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
        theta[:, :, 0] *= sign[:, None]
    if translate > 0:  # a shift of one pixel is 2 / size in normalised coordinates
        theta[:, 0, 2] = _uniform(n, -translate, translate, device) * 2.0 / width
        theta[:, 1, 2] = _uniform(n, -translate, translate, device) * 2.0 / height
    return theta


def geometric(x: torch.Tensor, translate: float, affine_std: float,
              hflip: bool) -> torch.Tensor:
    """The random affine warp of every image of ``x`` (one ``grid_sample``)."""
    if translate <= 0 and affine_std <= 0 and not hflip:
        return x
    n, _, h, w = x.shape
    theta = affine_matrices(n, h, w, translate, affine_std, hflip, x.device).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def intensity(x: torch.Tensor, scale: tuple[float, float], offset: tuple[float, float],
              flip: bool) -> torch.Tensor:
    """``s x + o`` per image (and a random sign with ``flip``)."""
    n, shape = len(x), (len(x),) + (1,) * (x.dim() - 1)
    s = _uniform(n, *scale, x.device) if scale != (1.0, 1.0) else None
    if flip:
        sign = torch.where(torch.rand(n, device=x.device) < 0.5, -1.0, 1.0)
        s = sign if s is None else s * sign
    if s is not None:
        x = x * s.view(shape).to(x.dtype)
    if offset != (0.0, 0.0):
        x = x + _uniform(n, *offset, x.device).view(shape).to(x.dtype)
    return x


def augment(x: torch.Tensor, settings: AugmentSettings) -> torch.Tensor:
    """A randomly augmented copy of the batch ``x`` (the input is not changed)."""
    if x.dim() == 4:
        x = geometric(x, settings.translate, settings.affine_std, settings.hflip)
        x = intensity(x, tuple(settings.scale), tuple(settings.offset),
                      settings.intensity_flip)
    if settings.noise_std > 0:
        x = x + settings.noise_std * torch.randn_like(x)
    return x
