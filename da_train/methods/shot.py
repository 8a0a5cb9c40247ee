"""SHOT: source hypothesis transfer (Liang, Hu & Feng, "Do We Really Need to Access the
Source Data?", ICML 2020). Two phases; the second never reads a source image.

1. ``source`` (``method.source_share`` of ``trainer.steps``): the source model as the paper
   trains it: features -> bottleneck (Linear ``method.bottleneck`` + BatchNorm + dropout 0.5,
   no ReLU) -> weight-normalised linear classifier, cross-entropy with label smoothing
   ``method.smoothing`` (0.1).
2. ``adapt`` (the rest; source-free: ``batch.xs`` is None, the source sampler never runs):
   the classifier is frozen (its hypothesis is kept) and the feature extractor + bottleneck
   learn the target with information maximisation, ``mean_i H(p_i) - H(mean_i p_i)``, plus
   ``method.beta`` x cross-entropy on pseudo-labels from class centroids of the target
   features (:func:`da_train.losses.shot.centroid_pseudo_labels`), recomputed over the whole
   target training set, in evaluation mode, at the start of the phase and then once per epoch
   of the target set (``method.refresh_every=0``; a number N: every N steps). ``beta=0`` is
   SHOT-IM. beta is 0.1 for digits and 0.3 for object images in the authors' scripts.

``method.source_ckpt=<run folder or checkpoint.pt>`` skips phase 1 and adapts a saved SHOT
source model (one source model serves many targets): the whole ``trainer.steps`` is then the
adaptation. Make one with ``da-train method=shot method.source_share=1 ...`` (no adaptation
phase): the source model is that run's **final step** (no selection by any accuracy; the
authors' code picks the source epoch on the source test split). A checkpoint of another
method, backbone, class count or input shape, or one that was already adapted, is refused.
Which source model was used is in results.json: ``source_model_step`` (the step of the
source run the weights come from), the override ``method.source_ckpt`` names the run, and the
run's log says both.

Published (target accuracy, paper Table 2, full training sets, the authors' LeNet / DTN
networks): SHOT MNIST -> USPS 98.0, USPS -> MNIST 98.4, SVHN -> MNIST 98.9; SHOT-IM 91.9 /
96.8 / 89.6. No MNIST -> MNIST-M number.

Deviations from the paper's protocol:

- the feature extractor is the chosen backbone's ``features`` (LeNet: convolutions + FC 512 +
  ReLU; the paper's LeNetBase ends at the 800-d convolutions, with 2-d dropout), and the
  backbone's own label head is replaced by the bottleneck + weight-normalised classifier;
- the optimiser is the ``optim`` group (presets: SGD momentum 0.9, lr 0.01 / (1 + 10 p)^0.75,
  weight decay 1e-3 as the authors' code, but without Nesterov momentum), with one schedule
  per phase; phase lengths are shares of ``trainer.steps`` (the paper: 30 epochs each);
- the presets keep the repository's pair protocols (2,000 / 1,800 MNIST / USPS images; the
  paper uses the full sets) and do not add the paper's random crop + rotation of the USPS
  source images;
- the per-sample entropy uses exact log-softmax (the code: ``log(p + 1e-5)``; kept for the
  mean prediction).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ..errors import NONNEG, ConfigError
from ..losses.shot import centroid_pseudo_labels, information_maximisation
from ..runfiles import CHECKPOINT
from .base import EVERY_TARGET_EPOCH, Method, MethodConfig, Phase, StepOutput

log = logging.getLogger(__name__)


@dataclass
class ShotConfig(MethodConfig):
    source_share: float = 0.5  # share of trainer.steps for phase 1 (the paper: 30 + 30 epochs)
    source_ckpt: str | None = None  # a SHOT source model (run folder or checkpoint.pt)
    beta: float = 0.1  # weight of the pseudo-label cross-entropy (0: SHOT-IM)
    smoothing: float = 0.1  # label smoothing of the source cross-entropy
    bottleneck: int = 256  # width of the bottleneck (Linear + BatchNorm + dropout)
    refresh_every: int = 0  # steps between pseudo-label updates (0: once per target epoch)
    rules = {
        "source_share": (lambda v: 0 < v <= 1, "a number in (0, 1] (1: train the source "
                         "model only, e.g. for method.source_ckpt)"),
        "beta": NONNEG,
        "smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "bottleneck": (lambda v: v >= 1, "a whole number >= 1"),
        "refresh_every": (lambda v: v >= 0, "a whole number >= 0 (0: once per epoch of the "
                          "target training set)"),
    }


class ShotHead(nn.Module):
    """Bottleneck (Linear + BatchNorm + dropout 0.5) and the weight-normalised classifier."""

    def __init__(self, in_dim: int, width: int, num_classes: int):
        super().__init__()
        self.bottleneck = nn.Sequential(nn.Linear(in_dim, width), nn.BatchNorm1d(width),
                                        nn.Dropout(0.5))
        self.fc = weight_norm(nn.Linear(width, num_classes), dim=0)

    def forward(self, features):
        return self.fc(self.bottleneck(features))


class SHOT(Method):
    """``backbone.classifier`` becomes the :class:`ShotHead`; the hypothesis is its ``fc``."""

    Config = ShotConfig
    capturable = True

    def __init__(self, cfg, backbone, num_classes):
        super().__init__(cfg, backbone, num_classes)
        backbone.classifier = ShotHead(self.feature_dim, cfg.bottleneck, num_classes)
        # per target training image: its current pseudo-label (sized at the first refresh)
        self.register_buffer("pseudo_labels", torch.zeros(0, dtype=torch.long))
        # whether the adaptation phase has started (such a model is no source model)
        self.register_buffer("adapted", torch.tensor(False))
        # the step of the source run the weights come from (results: source_model_step)
        self.register_buffer("source_step", torch.zeros((), dtype=torch.long))
        if cfg.source_ckpt:
            self._load_source_model(cfg.source_ckpt)

    # ------------------------------------------------------------------ schedule
    def phases(self, steps):
        # the pseudo-labels: at the phase's start, then per target epoch or every N steps
        refresh = 0 if self.cfg.beta == 0 else self.cfg.refresh_every or EVERY_TARGET_EPOCH
        adapt = Phase("adapt", steps, source=False, refresh_every=refresh)
        if self.cfg.source_ckpt:
            return [adapt]
        source = self._source_len = max(1, round(self.cfg.source_share * steps))
        if self.cfg.source_share >= 1:
            return [Phase("source", source)]
        adapt.steps = max(1, steps - source)
        return [Phase("source", source), adapt]

    def parameters_for(self, phase, update):
        head = self.backbone.classifier
        # the hypothesis (fc) is frozen while adapting (set here so it holds after a resume)
        head.fc.requires_grad_(phase.name != "adapt")
        if phase.name == "adapt":
            return [*self.backbone.features.parameters(), *head.bottleneck.parameters()]
        return self.backbone.parameters()

    def start_phase(self, phase):
        if phase.name == "adapt":
            if not self.cfg.source_ckpt:
                self.source_step.fill_(self._source_len)  # the final step of phase 1
            self.adapted.fill_(True)

    # ------------------------------------------------------------------ pseudo-labels
    def refresh(self, phase, target):
        """Centroid pseudo-labels of every target training image. The trainer calls it when
        the adaptation phase asks (its ``refresh_every``): at the phase's start, then once
        per target epoch or every ``method.refresh_every`` steps; never with ``beta=0``. The
        labels are a buffer, so a resumed run continues with the saved ones."""
        self._compute_labels(target)

    def _compute_labels(self, target) -> None:
        head = self.backbone.classifier
        width = self.cfg.bottleneck

        def outputs(x):
            z = head.bottleneck(self.backbone.features(x))
            return torch.cat([z, head.fc(z)], 1).float()

        out = target.map(outputs)
        labels = centroid_pseudo_labels(out[:, :width], out[:, width:])
        if self.pseudo_labels.shape == labels.shape:  # in place: a CUDA graph reads this
            self.pseudo_labels.copy_(labels)  # tensor at every replay
        else:
            self.pseudo_labels = labels

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "pseudo_labels"
        if key in state_dict:  # sized by the target set: take the checkpoint's size
            self.pseudo_labels = torch.empty_like(state_dict[key],
                                                  device=self.pseudo_labels.device)
        for old in ("pl_age", "pl_batch"):  # refresh counters of older checkpoints: the
            state_dict.pop(prefix + old, None)  # trainer now counts from the step
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ training
    def training_step(self, update, batch, progress):
        if batch.xs is not None:
            logits = self.predict(batch.xs)
            loss = F.cross_entropy(logits, batch.ys, label_smoothing=self.cfg.smoothing)
            return StepOutput(loss, {"loss_cls": loss.detach()}, source_logits=logits)
        feats = self.backbone.features(batch.xt)
        logits = self.backbone.classifier(feats)
        im, logs = information_maximisation(logits)
        loss = im
        if self.cfg.beta > 0:
            labels = self.pseudo_labels.index_select(0, batch.target_index)
            loss_pl = F.cross_entropy(logits.float(), labels)
            loss = loss + self.cfg.beta * loss_pl
            logs["loss_pl"] = loss_pl.detach()
        return StepOutput(loss, {**logs, "loss_im": im.detach()}, target_logits=logits,
                          target_features=feats)

    def embed(self, x, domain):
        """The bottleneck's output: the features SHOT clusters."""
        return self.backbone.classifier.bottleneck(self.backbone.features(x))

    def eval_metrics(self, target_logits, target_labels):
        if not bool(self.adapted):  # (evaluation: a host read is fine here)
            return {}
        return {"source_model_step": self.source_step.float()}

    # ------------------------------------------------------------------ source model
    def _load_source_model(self, where: str) -> None:
        from ..models import BACKBONES
        from ..runtime import read_checkpoint

        path = Path(where).expanduser()
        path = path / CHECKPOINT if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(
                f"method.source_ckpt={where}: no checkpoint there ({path} does not exist). "
                "Give a run folder of a SHOT source run (it holds checkpoint.pt) or the "
                "checkpoint file itself; make a source model with `da-train method=shot "
                "method.source_share=1 data=<pair>`.")
        state = read_checkpoint(path, map_location="cpu")
        config = state.get("config") or {}
        used = (config.get("method") or {}).get("name")
        backbone = (config.get("backbone") or {}).get("name")
        mine = [n for n, c in BACKBONES.items() if c is type(self.backbone)]
        weights = state["method"]
        fc_key = "backbone.classifier.fc.parametrizations.weight.original1"
        how = ("Make a matching source model with `da-train method=shot "
               "method.source_share=1` on this run's pair and backbone.")
        if used != "shot":
            raise ConfigError(
                f"method.source_ckpt={where} was trained by method={used}, not by method=shot: "
                "SHOT adapts its own source model (bottleneck with BatchNorm, weight-normalised "
                f"classifier), whose weights another method does not have. {how}")
        if mine and backbone not in mine:
            raise ConfigError(
                f"method.source_ckpt={where} holds a backbone={backbone} model, but this run "
                f"uses backbone={'/'.join(mine)}. Run with backbone={backbone}, or use a "
                f"source model trained on backbone={mine[0]}. {how}")
        if fc_key in weights and weights[fc_key].shape[0] != self.num_classes:
            raise ConfigError(
                f"method.source_ckpt={where} classifies {weights[fc_key].shape[0]} classes, "
                f"but this run's data has {self.num_classes}. A source model only serves "
                f"targets with the same classes. {how}")
        if bool(weights.get("adapted", torch.tensor(False))):
            raise ConfigError(
                f"method.source_ckpt={where} is a SHOT model that was already adapted to a "
                "target (its run had an adaptation phase), not a source model. Use a run made "
                f"with method.source_share=1, or the checkpoint its source phase saved. {how}")
        own = {k: v for k, v in self.state_dict().items() if k.startswith("backbone.")}
        for key, value in own.items():
            theirs = weights.get(key)
            if theirs is None or theirs.shape != value.shape:
                got = "missing" if theirs is None else f"of shape {tuple(theirs.shape)}"
                raise ConfigError(
                    f"method.source_ckpt={where} does not fit this run's model: {key} is {got} "
                    f"there and of shape {tuple(value.shape)} here (another input shape or "
                    f"method.bottleneck). {how}")
        self.load_state_dict({k: weights[k] for k in own}, strict=False)
        self.source_step.fill_(int(state["step"]))
        log.info(f"SHOT: adapting the source model {path} (the weights of its step "
                 f"{int(state['step'])}, the last step it saved; no selection).")
