"""VADA: virtual adversarial domain adaptation (Shu et al., "A DIRT-T Approach to Unsupervised
Domain Adaptation", ICLR 2018).

DANN's domain-adversarial loss, plus the two terms of the cluster assumption: the conditional
entropy of the target predictions (the decision boundary should not cross dense target
regions) and virtual adversarial training (VAT: the classifier should be locally smooth, so
that low entropy cannot be reached by a boundary that squeezes between nearby points) on the
target and the source batches:
``L = CE(source) + L_dann + ent_weight H(target) + vat_target KL_vat(target)
+ vat_source KL_vat(source)`` (:mod:`da_train.losses.vat`). Use it with instance-normalised
input (``data.normalize=instance``, the default of the authors' code and of the presets).

Published (target accuracy): MNIST -> MNIST-M VADA 95.7 (DIRT-T, which refines VADA further,
98.9); SVHN -> MNIST VADA 94.5 (DIRT-T 99.4); larger conv network with dropout and Gaussian
noise, instance-normalised input.

Deviations: the authors' code (github.com/RuiShu/dirt-t) trains the domain discriminator as
a separate GAN-style player (weight 0.01) with Adam (lr 1e-3, beta1 0.5) and evaluates an
exponential moving average of the weights; here the domain term is DANN's gradient reversal
with DANN's protocol (network, SGD schedule, GRL ramp: rows comparable with DANN's) and the
raw weights are evaluated. The loss weights follow that code's defaults (source VAT 1, target
entropy and target VAT 0.01, VAT radius 3.5); the VAT probe distance is 1e-2 instead of the
code's 1e-6, which is below float32 resolution in PyTorch (see the losses module).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import NONNEG, POSITIVE
from ..losses import mean_entropy
from ..losses.vat import vat_loss
from .base import StepOutput
from .dann import DANN, DannConfig


@dataclass
class VadaConfig(DannConfig):
    ent_weight: float = 0.01  # target conditional entropy
    vat_target: float = 0.01  # VAT on the target batch
    vat_source: float = 1.0  # VAT on the source batch
    eps: float = 3.5  # VAT radius (L2 norm of the perturbation of one input)
    xi: float = 1e-2  # VAT probe distance of the power iteration
    rules = {**DannConfig.rules, "ent_weight": NONNEG, "vat_target": NONNEG,
             "vat_source": NONNEG, "eps": POSITIVE, "xi": POSITIVE}


class VADA(DANN):
    Config = VadaConfig

    def training_step(self, update, batch, progress):
        out = self.dann_step(batch, progress)
        cfg = self.cfg
        target_logits = self.backbone.classifier(out.target_features)
        entropy = mean_entropy(target_logits)
        vat_t = vat_loss(self.predict, batch.xt, target_logits, cfg.eps, cfg.xi)
        vat_s = vat_loss(self.predict, batch.xs, out.source_logits, cfg.eps, cfg.xi)
        loss = (out.loss + cfg.ent_weight * entropy + cfg.vat_target * vat_t
                + cfg.vat_source * vat_s)
        return StepOutput(loss, {**out.logs, "entropy": entropy.detach(),
                                 "loss_vat_target": vat_t.detach(),
                                 "loss_vat_source": vat_s.detach()},
                          out.source_logits, target_logits, out.target_features)
