"""ORACLE "train on target": cross-entropy on the labelled *target* training batch.

Not a domain-adaptation method: it reads target training labels, which no UDA method may do.
It gives the upper bound of the papers' tables (DANN paper: 0.9596 on MNIST -> MNIST-M) and
its results are marked ``"oracle": true``.
"""

from __future__ import annotations

import torch.nn.functional as F

from .base import Method, StepOutput


class TargetOnly(Method):
    capturable = True
    needs_target_labels = True

    def training_step(self, update, batch, progress):
        return StepOutput(F.cross_entropy(self.predict(batch.xt), batch.yt))
