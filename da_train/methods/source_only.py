"""Source-only baseline: cross-entropy on the labelled source batch; the target batch is ignored
(it never passes through the network, so it cannot even touch normalisation statistics).

With target regularisers (``reg=[...]``; the presets ``method=mcc`` and ``method=bnm`` are
source_only + one term) the target batch is forwarded together with the source batch, in one
pass, and its predictions handed to the regularisers."""

from __future__ import annotations

import torch.nn.functional as F

from .base import Method, StepOutput


class SourceOnly(Method):
    """No options: its config is the base schema (``method.name`` only)."""

    capturable = True

    def training_step(self, update, batch, progress):
        if not self.target_outputs:
            logits = self.predict(batch.xs)
            return StepOutput(F.cross_entropy(logits, batch.ys), source_logits=logits)
        feats, source_logits, target_logits = self.joint_forward(batch)
        loss_cls = F.cross_entropy(source_logits, batch.ys)
        return StepOutput(loss_cls, {"loss_cls": loss_cls.detach(),
                                     "feature_norm": feats.detach().norm(dim=1).mean()},
                          source_logits=source_logits, target_logits=target_logits,
                          target_features=feats[len(batch.xs):])
