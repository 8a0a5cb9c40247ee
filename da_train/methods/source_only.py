"""Source-only baseline: cross-entropy on the labelled source batch; the target batch is ignored
(it never passes through the network, so it cannot even touch normalisation statistics)."""

from __future__ import annotations

import torch.nn.functional as F

from .base import Method, StepOutput


class SourceOnly(Method):
    """No options: its config is the base schema (``method.name`` only)."""

    def training_step(self, update, batch, progress):
        logits = self.predict(batch.xs)
        return StepOutput(F.cross_entropy(logits, batch.ys), source_logits=logits)
