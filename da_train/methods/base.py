"""The contract between the trainer and a method.

A method is an ``nn.Module`` that owns the backbone plus any extra heads. Each step the
trainer calls :meth:`Method.training_step` with a labelled source batch, an unlabelled
target batch and the training progress ``p`` in [0, 1]; the method returns the total loss
to minimise and a dict of scalar tensors to log (under ``train/``). The trainer never needs
to know which method it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class StepOutput:
    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class Method(nn.Module):
    def __init__(self, cfg, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone

    def training_step(self, xs, ys, xt, progress: float) -> StepOutput:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for ``x`` (used for source and target evaluation)."""
        return self.backbone.classifier(self.backbone.features(x))
