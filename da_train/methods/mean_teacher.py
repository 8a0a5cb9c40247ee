"""Self-ensembling for visual domain adaptation (French, Mackiewicz & Fisher, ICLR 2018): a
mean-teacher variant for domain adaptation.

The student (the backbone) learns the labelled source with cross-entropy and, on each target
batch, matches the class probabilities of a teacher whose weights are an exponential moving
average of the student's (``method.ema_decay``, 0.99; updated after every optimiser step).
Student and teacher see two independent random augmentations of the same target images
(:mod:`da_train.data.tensor_augment`, batched on the device: translation +-2 px, Gaussian
noise on the affine matrix, additive noise; flips and intensity changes where valid). The
loss is ``CE(source) + consistency_weight * L_u + class_balance * mask_rate * L_cb``:

- ``L_u = mean_i m_i mean_k (p_ik - q_ik)^2`` (student p, teacher q), averaged over the whole
  batch, with the confidence mask ``m_i = 1[max_k q_ik > threshold]`` (0.968 as the code);
- ``L_cb = sum_k BCE(mean_i p_ik, 1/K)``: the class-balance term, scaled by the share of
  confident samples ``mask_rate``.

The weights 3 (consistency) and 0.005 (class balance) are the authors' code's defaults; their
MNIST <-> USPS scripts turn the class balance off (the USPS presets do).

Source and target go through the student in separate passes (BatchNorm statistics per
domain, as the authors' code); the teacher runs in training mode on the target batch, as
theirs, without gradient. Evaluated: the **teacher** on the target (what the paper reports),
the student on the source.

Published (target accuracy, paper Table 1, "MT+CT+TFA": mean teacher + confidence threshold +
translation/flip/affine augmentation): MNIST -> USPS 98.23, USPS -> MNIST 99.54, SVHN ->
MNIST 99.26. No MNIST -> MNIST-M number.

Deviations: the backbone is the chosen digit network (presets: LeNet on the USPS pairs, the
DANN net on MNIST-M; the paper: a BatchNorm CNN conv32-conv64x2-FC256 for MNIST <-> USPS);
the presets keep the repository's pair protocols (2,000 / 1,800 images; 10,000 steps; the
paper: full sets, 300 epochs), with the paper's optimiser (Adam lr 1e-3) and batch size 256;
the teacher is a parameter EMA whose BatchNorm statistics come from its own target passes
(as the code); the affine noise is added to the 2 x 2 linear part only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data.tensor_augment import AugmentSettings, augment
from ..errors import BETA, NONNEG, PROBABILITY
from ..losses.consistency import class_balance, confidence_mask, ema_update, masked_consistency
from .base import Method, MethodConfig, StepOutput


def _range(v) -> bool:
    return len(v) == 2 and v[0] <= v[1]


@dataclass
class MeanTeacherConfig(MethodConfig):
    ema_decay: float = 0.99  # teacher = decay * teacher + (1 - decay) * student
    consistency_weight: float = 3.0  # weight of the masked squared-difference consistency
    threshold: float = 0.96837722  # teacher confidence needed for a sample to count
    class_balance: float = 0.005  # weight of the class-balance term (0: off)
    translate: float = 2.0  # augmentation: translation range in pixels
    affine_std: float = 0.1  # augmentation: std of the noise on the affine matrix
    hflip: bool = False  # augmentation: horizontal flips (not for digits)
    intensity_flip: bool = False  # augmentation: random sign of the intensities
    intensity_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    intensity_offset: list[float] = field(default_factory=lambda: [0.0, 0.0])
    noise_std: float = 0.1  # augmentation: std of the additive Gaussian noise
    rules = {"ema_decay": BETA, "consistency_weight": NONNEG, "threshold": PROBABILITY,
             "class_balance": NONNEG, "translate": NONNEG, "affine_std": NONNEG,
             "noise_std": NONNEG,
             "intensity_scale": (_range, "a range [low, high] with low <= high, e.g. "
                                 "[0.25,1.5]"),
             "intensity_offset": (_range, "a range [low, high] with low <= high, e.g. "
                                  "[-0.5,0.5]")}


class MeanTeacher(Method):
    Config = MeanTeacherConfig
    capturable = True

    def __init__(self, cfg, backbone, num_classes):
        super().__init__(cfg, backbone, num_classes)
        self.teacher = copy.deepcopy(backbone)
        self.teacher.requires_grad_(False)
        self.augment = AugmentSettings(
            translate=cfg.translate, affine_std=cfg.affine_std, hflip=cfg.hflip,
            intensity_flip=cfg.intensity_flip, scale=tuple(cfg.intensity_scale),
            offset=tuple(cfg.intensity_offset), noise_std=cfg.noise_std)

    def parameters_for(self, phase, update):
        return self.backbone.parameters()  # never the teacher's

    def after_update(self, update, progress):
        ema_update(list(self.teacher.parameters()), list(self.backbone.parameters()),
                   self.cfg.ema_decay)

    def training_step(self, update, batch, progress):
        cfg = self.cfg
        source_logits = self.predict(batch.xs)
        loss_cls = F.cross_entropy(source_logits, batch.ys)
        student_view, teacher_view = augment(batch.xt, self.augment), augment(batch.xt,
                                                                              self.augment)
        feats = self.backbone.features(student_view)
        student = self.backbone.classifier(feats)
        with torch.no_grad():
            teacher = self.teacher.classifier(self.teacher.features(teacher_view))
        mask = confidence_mask(teacher, cfg.threshold)
        consistency = masked_consistency(student, teacher, mask)
        loss = loss_cls + cfg.consistency_weight * consistency
        logs = {"loss_cls": loss_cls.detach(), "loss_transfer": consistency.detach(),
                "mask_rate": mask.mean()}
        if cfg.class_balance > 0:
            balance = class_balance(student) * mask.mean()
            loss = loss + cfg.class_balance * balance
            logs["loss_balance"] = balance.detach()
        return StepOutput(loss, logs, source_logits=source_logits, target_logits=student,
                          target_features=feats)

    def predict_target(self, x):
        return self.teacher.classifier(self.teacher.features(x))

    def embed(self, x, domain):
        return (self.teacher if domain == "target" else self.backbone).features(x)
