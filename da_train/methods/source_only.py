"""Source-only baseline: cross-entropy on labelled source data; target batches are ignored
(so target data never touches the model during training)."""

import torch
import torch.nn.functional as F

from .base import Method, StepOutput


class SourceOnly(Method):
    def training_step(self, xs, ys, xt, progress):
        loss = F.cross_entropy(self.predict(xs), ys)
        zero = torch.zeros((), device=loss.device)
        return StepOutput(loss, {"loss_cls": loss.detach(), "loss_transfer": zero})
