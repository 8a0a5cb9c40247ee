"""DANN + target entropy minimisation: the adversarial alignment of DANN plus
``ent_weight x`` the mean conditional entropy of the classifier on target batches.

Why: DANN aligns the two feature distributions but says nothing about where the decision
boundary falls in the target domain; minimising the target prediction entropy (Grandvalet &
Bengio 2005) pushes the boundary away from dense target regions (the cluster assumption).
This pair is the "VADA without VAT" of Shu et al. (DIRT-T, ICLR 2018). The entropy weight
follows the same ramp as the gradient-reversal coefficient, ``ent_weight x (2 / (1 +
exp(-gamma p)) - 1)``, so that early, still unaligned predictions are not made confident.
No target label is read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import StepOutput
from .dann import DANN, sigmoid_ramp


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the Shannon entropy (nats) of softmax(logits)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(1).mean()


class DannEntropy(DANN):
    def training_step(self, update, batch, progress):
        return self.dann_ent_step(batch, progress)[0]

    def dann_ent_step(self, batch, progress) -> tuple[StepOutput, torch.Tensor]:
        """The loss and logs, plus the target logits (for methods built on this one)."""
        out, target_features = self.dann_step(batch, progress)
        target_logits = self.backbone.classifier(target_features)
        entropy = mean_entropy(target_logits)
        weight = sigmoid_ramp(progress, self.cfg.ent_weight, self.cfg.gamma)
        out = StepOutput(out.loss + weight * entropy,
                         {**out.logs, "entropy": entropy.detach(), "ent_weight": weight})
        return out, target_logits
