"""DDC: deep domain confusion with an MMD penalty (Tzeng et al. 2014; multi-kernel as in DAN).

``loss = CE(classifier(f(x_s)), y_s) + weight * MMD^2(source representation, target
representation)``: the network learns to classify source digits while the distributions of
the source and target representations are pulled together. The original DDC uses a linear
kernel (the squared distance between the domain means) on a low-dimensional bottleneck layer
with weight 0.25; DAN (Long et al. 2015) uses a sum of Gaussian kernels with several
bandwidths, which is this module's default. The MMD maths lives in :mod:`da_train.losses.mmd`.

Options (``method.*``, schema :class:`DdcConfig` below):

- ``weight``: weight of the MMD^2 term; constant unless ``ramp`` is ``sigmoid``.
- ``ramp=sigmoid``: raise the weight from 0 to ``weight`` with DANN's schedule
  ``weight * (2 / (1 + exp(-gamma p)) - 1)``, ``p = step / steps``. Why: at initialisation the
  features carry no class information yet, and a full-weight MMD on them can win against the
  classification loss and shrink the features into the dead region of the ReLUs (a
  10,000-step MNIST -> MNIST-M run with weight 1 from step 0 never learned the source:
  loss_cls stayed at ln 10, see docs/results.md). The MNIST -> MNIST-M preset uses it.
- ``kernel``: ``rbf`` (sum of ``kernel_num`` Gaussians ``exp(-||x - y||^2 / bw)``) or
  ``linear`` (``x . y``; the biased value is ``||mean_s - mean_t||^2``, as in DDC).
- ``kernel_num``, ``kernel_mul``: the rbf bandwidths are
  ``base * kernel_mul ** (i - kernel_num // 2)``, ``i = 0 .. kernel_num - 1``. The kernels are
  summed, not averaged, so the effective weight grows with ``kernel_num``.
- ``fix_sigma``: the base bandwidth as a **squared** distance (``bw`` above, i.e.
  ``2 sigma^2``); ``null`` uses the mean pairwise squared distance of the joint batch,
  recomputed every step without gradient.
- ``estimator``: ``biased`` (V-statistic, >= 0) or ``unbiased`` (U-statistic without the
  diagonal terms; can go negative, needs batches of >= 2).
- ``layer``: which representation is aligned, ``features`` (the backbone's feature vector,
  the input of the label head) or ``logits`` (the label head's outputs for both domains).

Source and target go through ``backbone.features`` in **one joint forward pass**. With a
BatchNorm backbone (``dann_digits_bn``, ``dirtt_digits``, the ResNets) the joint pass shares
the normalisation statistics across domains (separate passes would be AdaBN-like); the
backbones without BatchNorm are unaffected.

Logged per step (tensors, no host sync): ``loss_cls``, ``loss_transfer`` (the MMD^2) and, for
the rbf kernel, ``bandwidth_min`` / ``bandwidth_max`` (the smallest and largest bandwidth used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import NONNEG, POSITIVE, one_of
from ..losses import mmd2, sigmoid_ramp
from .base import Batch, Method, MethodConfig, StepOutput


@dataclass
class DdcConfig(MethodConfig):
    weight: float = 1.0
    kernel: str = "rbf"
    kernel_num: int = 5
    kernel_mul: float = 2.0
    fix_sigma: Optional[float] = None
    estimator: str = "biased"
    layer: str = "features"
    ramp: str = "none"
    gamma: float = 10.0
    rules = {
        "weight": NONNEG, "gamma": NONNEG, "kernel": one_of("rbf", "linear"),
        "ramp": one_of("none", "sigmoid"),
        "kernel_num": (lambda v: v >= 1, "a whole number >= 1"),
        "kernel_mul": (lambda v: v > 1, "a number > 1"),
        "fix_sigma": (POSITIVE[0], "a number > 0, or null for the mean-distance bandwidth"),
        "estimator": one_of("biased", "unbiased"), "layer": one_of("features", "logits"),
    }
    renamed = {"lam": "weight"}


class DDC(Method):
    Config = DdcConfig
    capturable = True

    def training_step(self, update: str, batch: Batch, progress: float) -> StepOutput:
        cfg = self.cfg
        xs, ys, xt = batch.xs, batch.ys, batch.xt
        n = len(xs)
        feats = self.backbone.features(torch.cat([xs, xt]))
        if cfg.layer == "logits":
            logits = self.backbone.classifier(feats)
            source_logits, aligned = logits[:n], logits
        else:
            source_logits, aligned = self.backbone.classifier(feats[:n]), feats
        loss_cls = F.cross_entropy(source_logits, ys)
        aligned = aligned.flatten(1)
        loss_transfer, bandwidths = mmd2(
            aligned[:n], aligned[n:], kernel=cfg.kernel, kernel_num=cfg.kernel_num,
            kernel_mul=cfg.kernel_mul, fix_sigma=cfg.fix_sigma, estimator=cfg.estimator)
        lam = sigmoid_ramp(progress, cfg.weight, cfg.gamma) if cfg.ramp == "sigmoid" \
            else cfg.weight
        logs = {"loss_cls": loss_cls.detach(), "loss_transfer": loss_transfer.detach(),
                "lam": lam}
        if bandwidths.numel():
            logs["bandwidth_min"] = bandwidths.min().detach()
            logs["bandwidth_max"] = bandwidths.max().detach()
        return StepOutput(loss_cls + lam * loss_transfer, logs, source_logits=source_logits)
