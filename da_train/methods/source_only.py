"""Source-only baseline: cross-entropy on the labelled source batch; the target batch is ignored
(it never passes through the network, so it cannot even touch normalisation statistics)."""

from __future__ import annotations

import torch.nn.functional as F

from .base import Method, StepOutput


class SourceOnly(Method):
    def training_step(self, update, batch, progress):
        return StepOutput(F.cross_entropy(self.predict(batch.xs), batch.ys))
