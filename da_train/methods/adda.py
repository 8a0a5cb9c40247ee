"""ADDA: Adversarial Discriminative Domain Adaptation (Tzeng et al., CVPR 2017).

Two phases in the one trainer loop:

1. ``pretrain`` (``method.pretrain_steps``): source encoder + classifier learn the labelled
   source with cross-entropy (optimiser from the ``optim`` group).
2. ``adapt`` (``method.adapt_steps``): the target encoder starts as an exact copy of the
   source encoder; source encoder and classifier are frozen (in no optimiser, run under
   ``no_grad``). Each step first updates the discriminator (source features = 1, target
   features = 0), then the target encoder with the *inverted* labels (target features = 1),
   the GAN loss of the paper rather than gradient reversal. Adam lr 2e-4, betas (0.5, 0.999).

The discriminator is ``d - 500 - 500 - 1`` with ReLU (``method.disc_hidden``); the paper's
two-way softmax output is written here as one logit with a sigmoid, the same model.

What the discriminator sees (``method.disc_input``):

- ``features`` (default): the encoder's features (LeNet: 512-d); the target encoder is a copy
  of the feature extractor, and target prediction = target encoder + the frozen source
  classifier. This is the split of the paper's Figure 3 (encoder, then classifier).
- ``logits``: the whole network's class scores, as the authors' released code does (its LeNet
  "encoder" ends in the 10-d layer that feeds the discriminator, and the adapted copy predicts
  the target by itself). The target copy then includes the classifier.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BETA, POSITIVE
from ..losses import DomainDiscriminator
from .base import Method, MethodConfig, Phase, StepOutput


@dataclass
class AddaConfig(MethodConfig):
    pretrain_steps: int = 5000  # stage 1: source encoder + classifier (the optim group)
    adapt_steps: int = 10000    # stage 2: target encoder vs discriminator
    disc_hidden: list[int] = field(default_factory=lambda: [500, 500])
    lr: float = 2e-4            # stage 2 Adam (the paper's settings)
    beta1: float = 0.5
    beta2: float = 0.999
    disc_input: str = "features"  # features | logits (the released code's 10-d output)
    rules = {
        "pretrain_steps": (lambda v: v >= 0, "a whole number >= 0"),
        "adapt_steps": (lambda v: v > 0, "a whole number > 0"),
        "disc_hidden": (lambda v: len(v) >= 1 and all(h > 0 for h in v),
                        "a non-empty list of layer widths > 0, e.g. [500,500]"),
        "lr": POSITIVE, "beta1": BETA, "beta2": BETA,
        "disc_input": (lambda v: v in ("features", "logits"), "features or logits"),
    }


class ADDA(Method):
    """``trainer.steps`` is not used: the run lasts ``pretrain_steps + adapt_steps``."""

    Config = AddaConfig
    capturable = True
    # pre-training and the target encoder's update; never the discriminator's
    regularized_updates = ("model", "encoder")

    def __init__(self, cfg, backbone, num_classes):
        super().__init__(cfg, backbone, num_classes)
        self.target_encoder = copy.deepcopy(self._source_encoder())
        width = self.feature_dim if cfg.disc_input == "features" else num_classes
        self.discriminator = DomainDiscriminator(width, list(cfg.disc_hidden))
        # Saved in checkpoints: whether the target encoder has been initialised and trained.
        self.register_buffer("adapted", torch.tensor(False))

    def phases(self, steps):
        del steps  # ADDA's stages have their own lengths
        pretrain = [Phase("pretrain", self.cfg.pretrain_steps)] if self.cfg.pretrain_steps else []
        return pretrain + [Phase("adapt", self.cfg.adapt_steps, ("disc", "encoder"))]

    def parameters_for(self, phase, update):
        if phase.name == "pretrain":
            return self.backbone.parameters()
        return (self.discriminator if update == "disc" else self.target_encoder).parameters()

    def optim_overrides(self, phase, update):
        if phase.name == "pretrain":
            return {}
        return {"type": "adam", "lr": self.cfg.lr, "betas": [self.cfg.beta1, self.cfg.beta2],
                "weight_decay": 0.0, "schedule": "constant"}

    def start_phase(self, phase):
        if phase.name == "adapt":
            self.target_encoder.load_state_dict(self._source_encoder().state_dict())
            self.backbone.requires_grad_(False)
            self.adapted.fill_(True)

    def training_step(self, update, batch, progress):
        if update == "model":
            logits = self.predict(batch.xs)
            return StepOutput(F.cross_entropy(logits, batch.ys), source_logits=logits)
        if update == "disc":
            return self._discriminator_step(batch)
        return self._encoder_step(batch)

    def _discriminator_step(self, batch) -> StepOutput:
        with torch.no_grad():
            feats = torch.cat([self._source_encoder()(batch.xs), self.target_encoder(batch.xt)])
        logits = self.discriminator(feats).squeeze(1)
        domain = torch.cat([logits.new_ones(len(batch.xs)), logits.new_zeros(len(batch.xt))])
        loss = F.binary_cross_entropy_with_logits(logits, domain)
        acc = ((logits > 0).float() == domain).float().mean()
        return StepOutput(loss, {"disc_acc": acc})

    def _encoder_step(self, batch) -> StepOutput:
        logits = self.discriminator(self.target_encoder(batch.xt)).squeeze(1)
        inverted = logits.new_ones(len(logits))  # target features labelled "source"
        return StepOutput(F.binary_cross_entropy_with_logits(logits, inverted))

    def _source_encoder(self) -> nn.Module:
        """The map whose output the discriminator sees (and the target copy imitates): the
        feature extractor, or the whole network up to the class scores."""
        if self.cfg.disc_input == "logits":
            return nn.Sequential(self.backbone.features, self.backbone.classifier)
        return self.backbone.features

    def predict_target(self, x):
        if not bool(self.adapted):
            return self.backbone.classifier(self.backbone.features(x))
        if self.cfg.disc_input == "logits":
            return self.target_encoder(x)
        return self.backbone.classifier(self.target_encoder(x))

    def embed(self, x, domain):
        if domain != "target" or not bool(self.adapted):
            return self.backbone.features(x)
        encoder = self.target_encoder[0] if self.cfg.disc_input == "logits" \
            else self.target_encoder
        return encoder(x)
