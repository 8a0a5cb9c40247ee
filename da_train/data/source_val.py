"""A held-out source validation split: labelled data the model never trains on.

Validators (:mod:`da_train.selection`) need labelled data that was not trained on: source
test accuracy is a *report*, not something to choose by, so a seeded, class-stratified
fraction of the source *training* set is held out as ``pair.source_val`` and removed from
``pair.source_train``. The trainer samples batches from ``source_train`` only, so the held-out
images are never seen in training.

Config key ``data.source_val``; default 0 (off): the papers' protocols train on the whole
source training set, and the presets' results stay comparable with them and with earlier
da-train runs. For choosing hyper-parameters set it to 0.1 (:data:`SELECTION_FRACTION`, what
validator studies typically hold out; the selection sweeps in docs/results.md use it): it
leaves 6,000 MNIST or 729 USPS images, enough for accuracy to within about one point
(binomial std at 0.95 accuracy: 0.3 points for 6,000, 0.8 for 729), and costs the classifier
little (MNIST -> 54,000 training images). With 0 every source image is trained on and
``source_val_acc`` and ``dev`` are not computed; results.json ``source_val`` says which runs
held images out.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from .core import DomainPair, Split

DEFAULT_FRACTION = 0.0
SELECTION_FRACTION = 0.1


def source_val_indices(labels: torch.Tensor, fraction: float,
                       seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices into ``labels``: a seeded ``fraction`` of each class held out.

    Stratified, so that every class is represented in proportion even in small sets; both
    index tensors are sorted, disjoint and together cover every index once.
    """
    labels = labels.cpu()
    gen = torch.Generator().manual_seed(seed)
    held = []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        take = int(round(fraction * len(members)))
        held.append(members[torch.randperm(len(members), generator=gen)[:take]])
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[torch.cat(held)] = True
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()


@functools.cache
def _with_source_val(cls: type) -> type:
    """``cls`` plus a ``source_val: Split | None = None`` field (until DomainPair has one).

    A subclass of the pair's own class, so a pair with its own views (augmentation) keeps
    them; ``sizes()`` gains ``source_val``, ``to()`` moves it.
    """
    if "source_val" in {f.name for f in dataclasses.fields(cls)}:
        return cls

    def sizes(self) -> dict[str, int]:
        out = cls.sizes(self)
        if self.source_val is not None:
            out["source_val"] = len(self.source_val.labels)
        return out

    def to(self, device):
        moved = cls.to(self, device)
        val = None if self.source_val is None else self.source_val.to(device)
        return dataclasses.replace(moved, source_val=val)

    return dataclasses.make_dataclass(
        cls.__name__, [("source_val", "Split | None", dataclasses.field(default=None))],
        bases=(cls,), namespace={"sizes": sizes, "to": to, "__doc__": cls.__doc__})


def _check_fraction(fraction) -> float:
    """0 <= fraction < 1, or a ConfigError naming ``data.source_val``."""
    from ..config import ConfigError  # lazy: config imports hydra, data must not need it

    ok = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
    if not ok or not 0.0 <= fraction < 1.0:
        raise ConfigError(
            f"data.source_val={fraction!r} is not a fraction in [0, 1): it is the share of "
            "the source training set held out for validation (default "
            f"{DEFAULT_FRACTION}). Set e.g. data.source_val=0.1, or data.source_val=0 to "
            "train on every source image and skip the source-validation validators.")
    return float(fraction)


def hold_out_source_val(pair: DomainPair, fraction: float, seed: int) -> DomainPair:
    """A copy of ``pair`` whose ``source_train`` lacks a seeded ``fraction`` of its images,
    which become ``pair.source_val`` (``None`` when ``fraction`` is 0).

    The seed should be the data seed, not the training seed, if seeds of one configuration
    are to share a validation set; the trainer passes ``cfg.seed`` today (each seed its own
    split, which also averages over the choice of split).
    """
    fraction = _check_fraction(fraction)
    values = {f.name: getattr(pair, f.name) for f in dataclasses.fields(pair)}
    values["source_val"] = None
    if fraction > 0.0:
        train_idx, val_idx = source_val_indices(pair.source_train.labels, fraction, seed)
        values.update(source_train=_take(pair.source_train, train_idx),
                      source_val=_take(pair.source_train, val_idx))
    return _with_source_val(type(pair))(**values)


def _take(split: Split, index: torch.Tensor) -> Split:
    """The images and labels of ``split`` at ``index``, on the split's device."""
    return Split(split.gather(index.to(split.images.device)),
                 split.labels[index.to(split.labels.device)])
