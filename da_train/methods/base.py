"""The contract between the trainer and a method.

A method is one module ``da_train/methods/<name>.py`` holding its config schema (a
:class:`~da_train.config.MethodConfig` dataclass with defaults and value ``rules``) and one
:class:`Method` subclass whose ``Config`` attribute names that schema; plus one YAML
``conf/method/<name>.yaml`` for its documentation. Both are found by name, nothing else is
edited to add a method (see the README's "To add a method").

A method is an ``nn.Module`` that owns the backbone plus any extra heads, and describes its
training as a list of :class:`Phase` objects. Each phase runs for a number of steps; in every
step the trainer walks through the phase's *updates* in order (an update is one optimiser:
``"model"`` for most methods, ``"disc"`` then ``"encoder"`` for ADDA's adversarial stage),
asks :meth:`Method.training_step` for that update's loss, back-propagates it and steps that
update's optimiser. The trainer never needs to know which method it runs.

Batches are device tensors already normalised to [-1, 1]:

- ``xs``, ``ys``: a labelled source batch;
- ``xt``: an unlabelled target batch;
- ``yt``: the target batch's labels, **only** for methods that declare
  ``needs_target_labels = True`` (the train-on-target oracle); ``None`` for every UDA method,
  and the data loader does not even load them then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from omegaconf import MISSING
from torch import nn

from ..errors import Rule


@dataclass
class MethodConfig:
    """Base of every method's schema. ``name`` is the ``method=`` choice (set when the schema
    is registered); ``core`` the module that trains (the same, or for a preset such as
    ``method=vada`` the module it configures, ``dann``); ``reg`` the method's built-in
    regularisers (``method.reg.<name>.<key>``, schemas in da_train/regularizers.py; presets
    are built from them). Subclasses add fields with defaults and ``rules`` for them, and list
    keys renamed in this release in ``renamed`` (old -> new, relative to ``method.``): the old
    spelling still works for one release, with a one-line deprecation message."""

    name: str = MISSING
    core: str = MISSING
    reg: dict[str, Any] = field(default_factory=dict)
    rules: ClassVar[dict[str, Rule]] = {}
    renamed: ClassVar[dict[str, str]] = {}


@dataclass
class Batch:
    """One step's data. ``xs`` / ``ys`` are None in a source-free phase (``Phase.source``
    False); ``target_index`` holds the positions of ``xt`` in the target training set (for
    per-sample state such as SHOT's pseudo-labels)."""

    xs: torch.Tensor | None
    ys: torch.Tensor | None
    xt: torch.Tensor
    yt: torch.Tensor | None = None
    target_index: torch.Tensor | None = None


#: ``Phase.refresh_every`` for "once per epoch of the target training set": the trainer calls
#: :meth:`Method.refresh` at the phase's start and then every ``ceil(target training images /
#: trainer.batch_size)`` steps of the phase, the batches of one pass over the target set
#: (SHOT's per-epoch centroid pseudo-labels).
EVERY_TARGET_EPOCH = "target_epoch"


@dataclass
class Phase:
    """A stretch of training with its own optimisers (e.g. ADDA's pre-training and adaptation)."""

    name: str
    steps: int
    #: Run in this order every step, each with its optimisers (one of its own unless
    #: ``Method.optimizers_for`` says otherwise); a name may repeat (MCD's extractor update
    #: runs num_k times per step); each optimiser's lr schedule steps once per step.
    updates: tuple[str, ...] = ("model",)
    #: False: a source-free phase (SHOT's adaptation, DIRT-T's refinement): no source batch is
    #: sampled and ``batch.xs`` / ``batch.ys`` are None, so no source image can be read.
    source: bool = True
    #: Call :meth:`Method.refresh` at the start of the phase and every this many steps of it
    #: (0: never), e.g. DIRT-T's teacher refresh; or :data:`EVERY_TARGET_EPOCH`: once per
    #: epoch of the target training set, e.g. SHOT's centroid pseudo-labels.
    refresh_every: int | str = 0


@dataclass
class StepOutput:
    """The loss of one update and scalar tensors to log under ``train/`` (no host sync).

    ``source_logits`` (of ``batch.xs``) lets the trainer log the source training accuracy and
    watch for a collapse; ``target_logits`` / ``target_features`` (of ``batch.xt``) are what
    target regularisers (``reg=[...]``) act on. All optional: a method fills in what it
    computes anyway.
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)
    source_logits: torch.Tensor | None = None
    target_logits: torch.Tensor | None = None
    target_features: torch.Tensor | None = None


class TargetView:
    """The unlabelled target training images as :meth:`Method.refresh` sees them: ``map(fn)``
    applies ``fn`` to every image (evaluation view, in large batches) and concatenates the
    outputs. No label is reachable from here."""

    def __init__(self, images: torch.Tensor, view, batch_size: int):
        self._images, self._view, self._bs = images, view, batch_size

    def __len__(self) -> int:
        return len(self._images)

    @torch.no_grad()
    def map(self, fn) -> torch.Tensor:
        return torch.cat([fn(self._view(self._images[i: i + self._bs]))
                          for i in range(0, len(self._images), self._bs)])


class Method(nn.Module):
    #: The method's config schema (``method.*``); subclasses point this at their dataclass.
    Config = MethodConfig
    #: True only for oracles trained with target labels (they are marked as such in results).
    needs_target_labels = False
    #: The updates that target regularisers (``reg=[...]``) are added to.
    regularized_updates: tuple[str, ...] = ("model",)
    #: Set by the trainer when regularisers read the step's target predictions: a method that
    #: would not forward the target batch (source_only) then forwards both domains in one pass
    #: (shared normalisation statistics; what ``method=mcc`` / ``bnm`` compute).
    target_outputs: bool = False
    #: Whether the step can run as a CUDA graph (``trainer.cuda_graph``, da_train/graph.py):
    #: everything in ``training_step`` / ``after_update`` stays on the device (no ``.item()``,
    #: no ``if`` on a tensor, no boolean-mask indexing; ``progress`` may be a 0-d device
    #: tensor) and state that ``refresh`` or ``start_phase`` changes is updated in place. A
    #: new method starts eager (False); set True once tests/test_graph.py's host-sync guard
    #: passes for it (it runs every registered method).
    capturable: bool = False

    def __init__(self, cfg, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        #: the number of classes and the width of ``backbone.features``' output: what heads
        #: (discriminators, bottlenecks, extra classifiers) are sized by
        self.num_classes = num_classes
        self.feature_dim = backbone.feature_dim

    # ------------------------------------------------------------------ schedule
    def phases(self, steps: int) -> list[Phase]:
        """The training phases; by default one phase of ``trainer.steps`` steps."""
        return [Phase("train", steps)]

    def optimizers_for(self, phase: Phase, update: str) -> tuple[str, ...]:
        """The names of the optimisers that ``update`` steps (default: one of its own, named
        after the update). Updates that name the same optimiser share it, Adam's moments
        included: MCD has one optimiser per network, as in its authors' code, so its source
        update steps the extractor's and the classifiers' optimisers and its generator update
        the extractor's. Each name gets ``parameters_for(phase, name)`` and
        ``optim_overrides(phase, name)``; an update steps its optimisers in this order, after
        one backward pass."""
        return (update,)

    def parameters_for(self, phase: Phase, name: str):
        """Parameters the optimiser ``name`` of ``phase`` may change (default: all); ``name``
        is an update's name unless :meth:`optimizers_for` says otherwise."""
        return self.parameters()

    def optim_overrides(self, phase: Phase, name: str) -> dict:
        """Optimiser settings that replace the ``optim`` group's for the optimiser ``name``
        (default none). ADDA uses it for the paper's Adam settings in the adversarial stage.
        """
        return {}

    def start_phase(self, phase: Phase) -> None:
        """Called once when ``phase`` begins (not again on resume); e.g. copy an encoder."""

    def refresh(self, phase: Phase, target: TargetView) -> None:
        """Per-phase state recomputed from the whole unlabelled target training set, at the
        phase's start and every ``phase.refresh_every`` steps (between steps, outside the
        captured training step; the method is in eval mode, without gradients). State that
        must survive a resume lives in buffers or submodules (it is then in the checkpoint)."""

    def after_update(self, update: str, progress: float) -> None:
        """Called after the optimiser step of ``update`` (e.g. a mean teacher's EMA update)."""

    # ------------------------------------------------------------------ training
    def training_step(self, update: str, batch: Batch, progress: float) -> StepOutput:
        """Loss of ``update`` for one batch; ``progress`` in [0, 1) runs over the phase."""
        raise NotImplementedError

    def joint_forward(self, batch: Batch):
        """(features, source logits, target logits) of source and target in ONE pass, so a
        backbone with BatchNorm normalises both domains with shared statistics."""
        feats = self.backbone.features(torch.cat([batch.xs, batch.xt]))
        logits = self.backbone.classifier(feats)
        n = len(batch.xs)
        return feats, logits[:n], logits[n:]

    # ------------------------------------------------------------------ inference
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for ``x`` (used for source and target evaluation)."""
        return self.backbone.classifier(self.backbone.features(x))

    def predict_target(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for target-domain images (ADDA swaps in its target encoder)."""
        return self.predict(x)

    def embed(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """Feature vectors for the TensorBoard projector (``domain`` is source or target)."""
        return self.backbone.features(x)

    def eval_metrics(self, target_logits: torch.Tensor,
                     target_labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra metrics computed on the target *test* split at evaluation time (default none).

        Self-training reports the accuracy of its pseudo-labels here: measured on test data
        only, so no training label is ever read.
        """
        return {}
