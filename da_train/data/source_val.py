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


def _check_fraction(fraction) -> float:
    """0 <= fraction < 1, or a ConfigError naming ``data.source_val``."""
    from ..errors import ConfigError

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

    :func:`.pairs.load_pair` calls this when given the run's seed, so the pair arrives with
    its split made. Idempotent: a pair that already has a ``source_val`` split is returned
    unchanged (holding out twice would shrink the training set twice), so a caller that
    holds out again after ``load_pair`` gets the same tensors.

    The seed should be the data seed, not the training seed, if seeds of one configuration
    are to share a validation set; the trainer passes ``cfg.seed`` today (each seed its own
    split, which also averages over the choice of split).
    """
    fraction = _check_fraction(fraction)
    if pair.source_val is not None:
        return pair
    if fraction == 0.0:
        return dataclasses.replace(pair, source_val=None)
    train_idx, val_idx = source_val_indices(pair.source_train.labels, fraction, seed)
    return dataclasses.replace(pair, source_train=_take(pair.source_train, train_idx),
                               source_val=_take(pair.source_train, val_idx))


def _take(split: Split, index: torch.Tensor) -> Split:
    """The images and labels of ``split`` at ``index``, on the split's device."""
    return Split(split.gather(index.to(split.images.device)),
                 split.labels[index.to(split.labels.device)])
