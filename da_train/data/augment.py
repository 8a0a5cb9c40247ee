"""Batched image augmentation on the training device (no per-sample PIL work).

Training: random resized crop (torchvision's scale (0.08, 1) and ratio (3/4, 4/3) ranges)
plus horizontal flip, done for the whole batch as one ``grid_sample`` (bilinear) on a grid
built by broadcasting; evaluation: the centre ``image_size / cache_size`` of each image (the
usual 224 of 256), resized to ``image_size`` when the images were cached smaller. Both end
with the normalisation (ImageNet mean/std for pretrained backbones), done in place on the
cropped batch.
Random numbers come from torch's generator on the batch's device, so a fixed seed gives the
same crops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise_images(x: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 images, or uint8-valued floats (0..255) that the caller hands over (they are
    overwritten), -> network input: ``imagenet`` mean/std per channel, or ``global``
    ``x / 127.5 - 1``. In place (``mul_`` then ``sub_``): on a CPU about half the time of an
    ``addcmul`` that allocates its result (docs/performance.md)."""
    x = x.float() if x.dtype == torch.uint8 else x
    if mode == "global":
        return x.mul_(1 / 127.5).sub_(1.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    if x.shape[1] != 3:
        mean, std = mean.mean(1, keepdim=True), std.mean(1, keepdim=True)
    return x.mul_(1 / (255 * std)).sub_(mean / std)


def crop_params(n: int, device, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Per image (width, height, centre x, centre y, flip sign) as fractions of the image.

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio) as in torchvision; a box wider or
    taller than the image is shrunk to fit (torchvision retries, then falls back to the centre).
    """
    u = torch.rand(n, 5, device=device, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = log_r.exp()
    w, h = (area * r).sqrt().clamp(max=1.0), (area / r).sqrt().clamp(max=1.0)
    cx = w / 2 + (1 - w) * u[:, 2]
    cy = h / 2 + (1 - h) * u[:, 3]
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    return torch.stack([w, h, cx, cy, flip], 1)


def crop_grid(params: torch.Tensor, size: int) -> torch.Tensor:
    """The ``grid_sample`` grid (B x size x size x 2, in [-1, 1]) of each image's box and flip.

    What ``affine_grid`` gives for a scale-and-shift ``theta`` (no rotation), built by
    broadcasting one row of x and one column of y: 4x cheaper on a CPU than the batched
    matrix product ``affine_grid`` does for every output pixel."""
    w, h, cx, cy, flip = params.unbind(1)
    base = (torch.arange(size, device=params.device, dtype=torch.float32) * 2 + 1) / size - 1
    gx = (w * flip)[:, None] * base + (2 * cx - 1)[:, None]   # B x size (columns)
    gy = h[:, None] * base + (2 * cy - 1)[:, None]            # B x size (rows)
    return torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)


def random_resized_crop_flip(images: torch.Tensor, size: int,
                             generator: torch.Generator | None = None,
                             params: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (or float) B x C x H x W -> float B x C x size x size (same value range):
    a random box of each image, resized bilinearly, mirrored for about half of the batch."""
    p = crop_params(images.shape[0], images.device, generator=generator) if params is None \
        else params
    return F.grid_sample(images.float(), crop_grid(p, size), mode="bilinear",
                         padding_mode="border", align_corners=False)


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """B x C x H x W -> B x C x size x size, the middle of each image (a view, same dtype)."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top:top + size, left:left + size]


def train_transform(images: torch.Tensor, size: int, mode: str, generator=None) -> torch.Tensor:
    """Crop, resize and flip the uint8 batch, then normalise the (smaller) result in place."""
    return normalise_images(random_resized_crop_flip(images, size, generator), mode)


def eval_crop(side: int, size: int, cache_size: int | None) -> int:
    """The side of the centre crop that evaluation takes from a ``side`` x ``side`` cached
    image: the same share of the image, ``size / cache_size`` per side, whatever size the
    image was cached at (``size`` itself when ``side == cache_size``, the usual 224 of 256)."""
    if not cache_size:
        return min(side, size)
    return max(1, min(side, (side * size + cache_size // 2) // cache_size))


def eval_transform(images: torch.Tensor, size: int, mode: str,
                   cache_size: int | None = None) -> torch.Tensor:
    """Centre crop, normalised. The crop is the central ``size / cache_size`` of each image
    (just ``size`` pixels without ``cache_size``), resized bilinearly to ``size`` when the
    images were cached smaller than ``cache_size``. A pure crop is a view, so it is copied
    before the in-place normalisation (the one copy that ``.float()`` makes of uint8 anyway)."""
    crop = eval_crop(images.shape[-1], size, cache_size)
    x = centre_crop(images, crop).to(torch.float32, copy=True)
    if crop != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=crop > size)
    return normalise_images(x, mode)
