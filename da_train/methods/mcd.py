"""MCD: maximum classifier discrepancy (Saito, Watanabe, Ushiku & Harada, CVPR 2018).

Two classifiers C1, C2 (the backbone's label head and a second, independently initialised
copy of it) on one feature extractor G. Every step runs three kinds of update (the trainer's
multi-update mechanism) with two optimisers, one per network as in the authors' code:
``generator`` (G) and ``classifiers`` (C1 and C2; one Adam over both is the same as the
code's one each, Adam being per parameter). Update A steps both, B the classifiers', C the
generator's, so A and C share G's Adam moments and A and B the classifiers':

- ``source`` (A): G, C1, C2 minimise ``CE(C1(G(xs))) + CE(C2(G(xs)))``;
- ``discrepancy`` (B): with G fixed (its features computed without gradient), C1 and C2
  minimise ``CE_source - d(C1(G(xt)), C2(G(xt)))``: they disagree on the target while
  staying right on the source;
- ``generator`` (C), ``method.num_k`` times (4, the code's default): G minimises
  ``d(C1(G(xt)), C2(G(xt)))``,

with ``d`` the mean over batch and classes of ``|p1 - p2|`` of the softmax outputs
(:mod:`da_train.losses.mcd`). Prediction: the ensemble (the mean of the two softmaxes); the
paper's code prints C1, C2 and the ensemble and the paper does not say which it reports.
Target regularisers (``reg=[...]``) join update A.

Published (target accuracy, paper Table 1, mean of 4 runs): MNIST -> USPS 94.2 (2,000 / 1,800
images), 96.5 (full sets), USPS -> MNIST 94.1, SVHN -> MNIST 96.2. No MNIST -> MNIST-M number.

Deviations: the networks are the chosen backbone's (presets: LeNet on the USPS pairs, the
DANN net on MNIST-M; the paper: conv32-conv48 with BatchNorm and a [dropout, FC100-BN-ReLU]
x 2 - FC10 classifier for MNIST <-> USPS); the presets use the paper's Adam lr 2e-4, weight
decay 5e-4 and batch 128 for 10,000 steps (the code: up to 200 epochs, at least 20,000
iterations). Until the 2026-12-08 change every update had an Adam of its own, so step C's
Adam rescaled the tiny discrepancy gradients to full-size steps of G (MNIST -> USPS fell from
0.909 at step 1,000 to 0.780 at the end, docs/results-notes.md); runs and checkpoints from
before differ.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses.mcd import classifier_discrepancy
from .base import Method, MethodConfig, Phase, StepOutput


@dataclass
class McdConfig(MethodConfig):
    num_k: int = 4  # generator updates per step (step C)
    rules = {"num_k": (lambda v: v >= 1, "a whole number >= 1")}


def _reinitialise(module: torch.nn.Module) -> None:
    for sub in module.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()


class MCD(Method):
    Config = McdConfig
    capturable = True
    regularized_updates = ("source",)

    def __init__(self, cfg, backbone, num_classes):
        super().__init__(cfg, backbone, num_classes)
        self.classifier2 = copy.deepcopy(backbone.classifier)
        _reinitialise(self.classifier2)

    def phases(self, steps):
        return [Phase("train", steps, ("source", "discrepancy") + ("generator",) * self.cfg.num_k)]

    def optimizers_for(self, phase, update):
        return {"source": ("generator", "classifiers"), "discrepancy": ("classifiers",),
                "generator": ("generator",)}[update]

    def parameters_for(self, phase, name):
        if name == "generator":
            return self.backbone.features.parameters()
        return [*self.backbone.classifier.parameters(), *self.classifier2.parameters()]

    def _source_losses(self, feats, ys):
        logits1 = self.backbone.classifier(feats)
        logits2 = self.classifier2(feats)
        return logits1, F.cross_entropy(logits1, ys) + F.cross_entropy(logits2, ys)

    def training_step(self, update, batch, progress):
        if update == "source":
            logits1, loss = self._source_losses(self.backbone.features(batch.xs), batch.ys)
            return StepOutput(loss, {"loss_cls": loss.detach()}, source_logits=logits1)
        if update == "discrepancy":
            with torch.no_grad():
                feats = self.backbone.features(torch.cat([batch.xs, batch.xt]))
            n = len(batch.xs)
            logits1, loss_cls = self._source_losses(feats[:n], batch.ys)
            disc = classifier_discrepancy(self.backbone.classifier(feats[n:]),
                                          self.classifier2(feats[n:]))
            return StepOutput(loss_cls - disc, {"discrepancy": disc.detach()})
        feats = self.backbone.features(batch.xt)
        disc = classifier_discrepancy(self.backbone.classifier(feats), self.classifier2(feats))
        return StepOutput(disc, {"loss_transfer": disc.detach()}, target_features=feats)

    def predict(self, x):
        """Log of the mean of the two classifiers' softmaxes (the ensemble)."""
        feats = self.backbone.features(x)
        probs = (F.softmax(self.backbone.classifier(feats).float(), 1)
                 + F.softmax(self.classifier2(feats).float(), 1)) / 2
        return probs.clamp_min(1e-12).log()
