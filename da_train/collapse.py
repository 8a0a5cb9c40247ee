"""Early warning for a run that has collapsed (or is about to).

Why: DANN with the paper's protocol can collapse on MNIST -> MNIST-M (docs/results-notes.md):
under gradient reversal the features grow without bound, one large update pushes every unit
of a ReLU layer of the label head into its dead region, the head outputs a constant and the
source accuracy falls to chance, for good. Nothing in the loss curve says *why*, and the run
goes on burning hours. The detector watches three signals and, at each logging step, says in
one paragraph what happened and the likely cause:

- the **source training accuracy** fell to about chance after having been high;
- a **ReLU layer of the label head is dead**: the share of its units that were positive for
  at least one training input since the last check is ~0 (forward hooks on the ReLU modules
  of ``method.backbone.classifier``; a dead layer cannot recover, no gradient passes it);
- the **feature norm exploded** (``train/feature_norm``, logged by DANN-style methods):
  non-finite, or ``norm_growth`` times its first logged value.

Contract with the trainer: :meth:`observe` once per step (tensor ops only, no host sync),
:meth:`check` at each logging step with the logged floats; a non-None answer is logged as a
warning and, with ``trainer.stop_on_collapse=true``, stops the run like a NaN. Each cause is
reported once.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SOURCE_ACC = "train/source_acc"
LOSS_CLS = "train/loss_cls"
FEATURE_NORM = "train/feature_norm"


class CollapseDetector:
    """Watches a method's training for collapse; see the module docstring.

    ``warn_source_acc``: source accuracy at or below which a run that once reached
    ``high_source_acc`` counts as collapsed (defaults: chance + 10% / chance + 50% of the way
    to 1). ``dead_share``: a label-head ReLU layer with at most this share of units ever
    active since the last check is dead. ``norm_growth``: the feature-norm factor (over its
    first logged value) that counts as an explosion; healthy DANN runs on MNIST -> MNIST-M
    grow it about 10x, the collapsed one about 50x, so the default 100 only catches runaway
    growth on its own (the growth is quoted in the other warnings either way).
    """

    def __init__(self, method: nn.Module, warn_source_acc: float | None = None,
                 high_source_acc: float | None = None, dead_share: float = 0.0,
                 norm_growth: float = 100.0):
        classifier = method.backbone.classifier
        k = getattr(method, "num_classes", None)  # the Method is told it
        self.chance = 1.0 / k if k else 0.0
        self.warn_source_acc = (self.chance + 0.1 * (1 - self.chance)
                                if warn_source_acc is None else warn_source_acc)
        self.high_source_acc = (self.chance + 0.5 * (1 - self.chance)
                                if high_source_acc is None else high_source_acc)
        self.dead_share, self.norm_growth = dead_share, norm_growth
        self.num_classes = k
        self.relus = [m for m in classifier.modules() if isinstance(m, nn.ReLU)]
        self._alive: list[torch.Tensor | None] = [None] * len(self.relus)
        self._hooks = [relu.register_forward_hook(self._hook(i))
                       for i, relu in enumerate(self.relus)]
        self._norm_max: torch.Tensor | None = None
        self._forwards: torch.Tensor | None = None
        self.peak_acc, self.peak_step = -1.0, None
        self.first_norm: tuple[int, float] | None = None
        self.fired: set[str] = set()

    # ------------------------------------------------------------------ per step (no sync)
    def _hook(self, index: int):
        def hook(module, inputs, output):
            if not module.training:
                return  # evaluation forwards do not count
            alive = (output.detach().flatten(1) > 0).any(0)
            if index == 0:  # training forwards of the window (0: the shares are unknown)
                if self._forwards is None:
                    self._forwards = torch.ones((), dtype=torch.long, device=alive.device)
                else:
                    self._forwards.add_(1)
            prev = self._alive[index]
            if prev is None:
                self._alive[index] = alive
            else:  # in place: a CUDA graph replays this OR into the same tensor
                prev.logical_or_(alive)
        return hook

    def observe(self, out) -> None:
        """Keep the largest feature norm of the window (a tensor; the trainer's record holds
        only the mean over the logging window)."""
        norm = getattr(out, "logs", {}).get("feature_norm")
        if isinstance(norm, torch.Tensor):
            norm = norm.detach().float()
            if self._norm_max is None:
                self._norm_max = norm.clone()
            else:  # in place, for the CUDA-graph step
                torch.maximum(self._norm_max, norm, out=self._norm_max)

    # ------------------------------------------------------------------ per logging step
    def active_shares(self) -> list[float | None]:
        """Share of each label-head ReLU layer's units active since the last check (syncs)."""
        if self._forwards is None or int(self._forwards) == 0:
            return [None] * len(self._alive)
        return [None if a is None else a.float().mean().item() for a in self._alive]

    def check(self, step: int, record: dict) -> str | None:
        """A one-paragraph warning if a new sign of collapse showed up since the last check."""
        shares = self.active_shares()
        widths = [0 if a is None else a.numel() for a in self._alive]
        for alive in self._alive:  # a new window; the tensors stay (a graph writes to them)
            if alive is not None:
                alive.zero_()
        if self._forwards is not None:
            self._forwards.zero_()
        norm = self._feature_norm(step, record)
        causes = {}
        acc = record.get(SOURCE_ACC)
        if acc is not None and math.isfinite(acc):
            if acc > self.peak_acc:
                self.peak_acc, self.peak_step = acc, step
            if self.peak_acc >= self.high_source_acc and acc <= self.warn_source_acc:
                causes["source_acc"] = self._acc_sentence(acc, record)
        dead = [i for i, s in enumerate(shares) if s is not None and s <= self.dead_share]
        if dead:
            causes["dead_relu"] = self._dead_sentence(dead, shares, widths)
        if norm is not None and self.first_norm is not None and (
                not math.isfinite(norm) or norm >= self.norm_growth * self.first_norm[1]):
            causes["feature_norm"] = (f"the mean feature norm reached {norm:.4g}, "
                                      f"{self._growth(norm)} (exploding features)")
        new = {k: v for k, v in causes.items() if k not in self.fired}
        if not new:
            return None
        self.fired |= set(new)
        return self._paragraph(step, list(new.values()), norm, "dead_relu" in causes)

    def close(self) -> None:
        """Remove the forward hooks (the method can be used without the detector again)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ------------------------------------------------------------------ wording
    def _feature_norm(self, step: int, record: dict) -> float | None:
        norm = record.get(FEATURE_NORM)
        window_max = self._norm_max.item() if self._norm_max is not None else -math.inf
        if window_max != -math.inf:  # -inf: no feature norm observed in this window
            norm = window_max if norm is None else max(norm, window_max)
            self._norm_max.fill_(-math.inf)
        if norm is not None and self.first_norm is None and math.isfinite(norm):
            self.first_norm = (step, norm)
        return norm

    def _growth(self, norm: float) -> str:
        s0, n0 = self.first_norm
        return f"{norm / n0:.3g}x its value at step {s0} ({n0:.4g})" if n0 > 0 else "from 0"

    def _acc_sentence(self, acc: float, record: dict) -> str:
        text = (f"source training accuracy fell to {acc:.3f} (chance {self.chance:.3f}) after "
                f"reaching {self.peak_acc:.3f} at step {self.peak_step}")
        loss = record.get(LOSS_CLS)
        if loss is not None and self.num_classes:
            text += (f"; the classification loss is {loss:.3f} (ln {self.num_classes} = "
                     f"{math.log(self.num_classes):.3f} means constant predictions)")
        return text

    def _dead_sentence(self, dead: list[int], shares: list, widths: list[int]) -> str:
        layers = ", ".join(f"ReLU {i + 1} of {len(self.relus)} ({shares[i]:.0%} of "
                           f"{widths[i]} units active)" for i in dead)
        return (f"the label head's ReLUs are dead: {layers} for every training input since "
                "the last check, so the head outputs a constant and no gradient reaches the "
                "layers below")

    def _paragraph(self, step: int, sentences: list[str], norm: float | None,
                   dead: bool) -> str:
        text = f"Training looks collapsed at step {step}: " + "; ".join(sentences) + "."
        if norm is not None and self.first_norm is not None and math.isfinite(norm):
            text += f" The mean feature norm is {norm:.4g}, {self._growth(norm)}."
        if dead or "exploding" in text:
            text += (" Likely cause: the features grew without bound (e.g. under gradient "
                     "reversal, which maximises an unbounded domain loss) until one large "
                     "update pushed the label head into the dead region of its ReLUs; this "
                     "does not recover.")
        else:
            text += (" Likely cause: an update too large for the network (learning rate, loss "
                     "weights, growing features) destroyed what it had learned.")
        return text + (
            " Remedies measured on MNIST -> MNIST-M: data.normalize=instance, "
            "optim.weight_decay=0.0005, or a target entropy term (docs/results-notes.md). "
            "trainer.stop_on_collapse=true stops such a run here.")
