"""DIRT-T: VADA, then decision-boundary iterative refinement on the target (Shu, Bui, Narui
& Ermon, "A DIRT-T Approach to Unsupervised Domain Adaptation", ICLR 2018).

1. ``vada`` (``method.vada_share`` of ``trainer.steps``): VADA,
   ``CE(source) + L_domain + entropy_weight H(target) + vat_weight VAT(target)
   + vat_source_weight VAT(source)``: DANN's gradient-reversal domain loss
   (:meth:`DANN.dann_step`), the conditional entropy of the target predictions and virtual
   adversarial training (:mod:`da_train.losses.vat`).
2. ``refine`` (the rest; source-free: no source batch is sampled): the target is refined
   alone, ``entropy_weight H(target) + vat_weight VAT(target) + beta KL(teacher || student)``,
   the teacher a frozen copy of the network (a submodule, so it is checkpointed) taken at the
   start of the phase and again every ``method.teacher_every`` steps: each stretch solves the
   paper's proximal problem around the previous solution. The teacher predicts in evaluation
   mode (no dropout or noise).

Published (target accuracy, the paper's Table 1, with instance-normalised input; the small
network for MNIST -> MNIST-M): MNIST -> MNIST-M VADA 95.7, DIRT-T 98.7 (98.9 / 97.7 for
DIRT-T / VADA without instance normalisation); SVHN -> MNIST VADA 94.5, DIRT-T 99.4;
source-only 59.9 (MNIST -> MNIST-M, instance-normalised). The paper tuned its weights with
1,000 labelled target images; no MNIST <-> USPS number.

Weights (the authors' code defaults): domain 0.01 (``method.weight``), source VAT 1
(``vat_source_weight``), target entropy and target VAT 0.01 (``entropy_weight``,
``vat_weight``; named as the regularisers' ``reg.entropy.weight``, ``reg.vat.weight``,
``reg.vat.source_weight``), beta 0.01, VAT radius 3.5; Adam lr 1e-3, beta1 0.5, batch 64 (the
presets).

Deviations: the domain term is DANN's gradient reversal (coefficient ramped to ``weight`` with
DANN's ``2 / (1 + exp(-gamma p)) - 1``) instead of the code's separately trained GAN
discriminator; the raw weights are evaluated (the code evaluates an exponential moving
average, decay 0.998); the VAT probe distance is 1e-2 (the code's 1e-6 is below float32
resolution, see the VAT module); the phases are shares of ``trainer.steps`` (the code: 80,000
iterations each) and the teacher period ``teacher_every`` 500 steps by default (the code's
README example refreshes every 5,000 of 80,000 iterations), so a 5,000-step refinement sees
ten teachers; the VAT perturbations pass through train-mode BatchNorm and update its running
statistics.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from ..errors import NONNEG, POSITIVE
from ..losses import mean_entropy
from ..losses.consistency import kl_to_teacher
from ..losses.vat import vat_loss
from .base import Phase, StepOutput
from .dann import DANN, DannConfig


@dataclass
class DirttConfig(DannConfig):
    weight: float = 0.01  # domain weight (final gradient-reversal coefficient), the code's
    entropy_weight: float = 0.01  # target conditional entropy (both phases)
    vat_weight: float = 0.01  # VAT on the target batch (both phases)
    vat_source_weight: float = 1.0  # VAT on the source batch (phase 1)
    eps: float = 3.5  # VAT radius (L2 norm of the perturbation of one input)
    xi: float = 1e-2  # VAT probe distance of the power iteration
    beta: float = 0.01  # weight of KL(teacher || student) in the refinement
    vada_share: float = 0.5  # share of trainer.steps for phase 1 (VADA)
    teacher_every: int = 500  # refinement steps between teacher refreshes
    rules = {**DannConfig.rules, "entropy_weight": NONNEG, "vat_weight": NONNEG,
             "vat_source_weight": NONNEG, "eps": POSITIVE, "xi": POSITIVE, "beta": NONNEG,
             "vada_share": (lambda v: 0 < v < 1, "a number in (0, 1)"),
             "teacher_every": (lambda v: v >= 1, "a whole number >= 1")}
    renamed = {}  # a new method: no old spellings


class DIRTT(DANN):
    Config = DirttConfig

    def __init__(self, cfg, backbone, num_classes):
        super().__init__(cfg, backbone, num_classes)
        self.teacher = copy.deepcopy(backbone)
        self.teacher.requires_grad_(False)

    def phases(self, steps):
        vada = max(1, round(self.cfg.vada_share * steps))
        return [Phase("vada", vada),
                Phase("refine", max(1, steps - vada), source=False,
                      refresh_every=self.cfg.teacher_every)]

    def parameters_for(self, phase, update):
        if phase.name == "vada":
            return [*self.backbone.parameters(), *self.domain_head.parameters()]
        return self.backbone.parameters()

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.train(False)  # the teacher always predicts in evaluation mode
        return self

    def refresh(self, phase, target):
        """A new teacher: the current network (at the phase's start and every
        ``teacher_every`` steps)."""
        if phase.name == "refine":
            self.teacher.load_state_dict(self.backbone.state_dict())

    def training_step(self, update, batch, progress):
        cfg = self.cfg
        if batch.xs is not None:  # phase 1: VADA
            out = self.dann_step(batch, progress)
            target_logits = self.backbone.classifier(out.target_features)
            entropy = mean_entropy(target_logits)
            vat_t = vat_loss(self.predict, batch.xt, target_logits, cfg.eps, cfg.xi)
            vat_s = vat_loss(self.predict, batch.xs, out.source_logits, cfg.eps, cfg.xi)
            loss = (out.loss + cfg.entropy_weight * entropy + cfg.vat_weight * vat_t
                    + cfg.vat_source_weight * vat_s)
            return StepOutput(loss, {**out.logs, "entropy": entropy.detach(),
                                     "loss_vat_target": vat_t.detach(),
                                     "loss_vat_source": vat_s.detach()},
                              out.source_logits, target_logits, out.target_features)
        feats = self.backbone.features(batch.xt)  # phase 2: refinement, target only
        logits = self.backbone.classifier(feats)
        entropy = mean_entropy(logits)
        vat_t = vat_loss(self.predict, batch.xt, logits, cfg.eps, cfg.xi)
        teacher = self.teacher.classifier(self.teacher.features(batch.xt)).detach()
        kl = kl_to_teacher(teacher, logits)
        loss = cfg.entropy_weight * entropy + cfg.vat_weight * vat_t + cfg.beta * kl
        return StepOutput(loss, {"entropy": entropy.detach(), "loss_vat_target": vat_t.detach(),
                                 "loss_kl_teacher": kl.detach(),
                                 "feature_norm": feats.detach().norm(dim=1).mean()},
                          target_logits=logits, target_features=feats)
