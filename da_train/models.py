"""Backbones: a feature extractor and a label head, selected by ``backbone.name``.

Every backbone has ``features`` (input -> flat feature vector), ``classifier`` (features ->
logits) and ``feature_dim``. Sizes follow the data's ``input_shape`` (C, H, W) -- found with one
dummy forward pass at construction -- so one architecture serves 3x32x32 (MNIST -> MNIST-M)
and 1x28x28 (MNIST 0/1 -> 2/3) inputs, and the methods' heads size themselves from
``feature_dim``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ConfigError


def _flat_dim(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Width of ``module``'s flat output for one input of ``input_shape``."""
    with torch.no_grad():
        return module(torch.zeros(1, *input_shape)).shape[1]


def _channels(name: str, input_shape: tuple[int, ...]) -> int:
    """Conv backbones need images; say so instead of failing inside a conv layer."""
    if len(input_shape) != 3:
        raise ConfigError(f"Backbone {name!r} needs image inputs (C, H, W), got input shape "
                          f"{tuple(input_shape)}; use backbone=mlp for vector data.")
    return input_shape[0]


class DannDigits(nn.Module):
    """The DANN paper's digit network (3x32x32 -> 48*5*5 = 1200 features; 1x28x28 -> 768)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int] = (3, 32, 32)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(_channels("dann_digits", input_shape), 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.feature_dim = _flat_dim(self.features, input_shape)
        self.classifier = nn.Sequential(
            nn.Linear(self.feature_dim, 100), nn.ReLU(),
            nn.Linear(100, 100), nn.ReLU(),
            nn.Linear(100, num_classes),
        )


class DannDigitsBN(DannDigits):
    """The DANN digit network with BatchNorm after each convolution (before the ReLU).

    Why: under gradient reversal the plain network's features can grow without bound until
    the label head's ReLUs die (the collapse in docs/results-notes.md); BatchNorm keeps the
    feature scale fixed, which is why many DANN re-implementations add it. Measured here, it
    did not help: on MNIST -> MNIST-M, DANN on it learned the target more slowly than on the
    plain network in a one-seed pilot (docs/results-notes.md), so no preset uses it. BatchNorm
    sits only in the feature extractor, which DANN-style methods run once over the joint
    source + target batch, so both domains share its statistics (no hidden AdaBN); the label
    head has none, because methods call it on source and target features separately.
    Source-only and target-only runs feed one domain, so their statistics stay in-domain.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int] = (3, 32, 32)):
        super().__init__(num_classes, input_shape)
        self.features = nn.Sequential(
            nn.Conv2d(_channels("dann_digits_bn", input_shape), 32, 5), nn.BatchNorm2d(32),
            nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 5), nn.BatchNorm2d(48), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )


class LeNet(nn.Module):
    """LeNet-style digit encoder, as used by ADDA (Tzeng et al. 2017) for MNIST-sized digits.

    conv 32@5 - pool - ReLU - conv 64@5 - pool - ReLU - FC 512 - ReLU as features (512),
    one linear layer as classifier.
    """

    feature_dim = 512

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        conv = nn.Sequential(
            nn.Conv2d(_channels("lenet", input_shape), 32, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(32, 64, 5), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(),
        )
        flat = _flat_dim(conv, input_shape)
        self.features = nn.Sequential(*conv, nn.Linear(flat, self.feature_dim), nn.ReLU())
        self.classifier = nn.Linear(self.feature_dim, num_classes)


class MLP(nn.Module):
    """Small MLP for toy vector data (e.g. two moons); any input is flattened first."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...] = (2,), hidden: int = 32):
        super().__init__()
        self.feature_dim = hidden
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden),
                                      nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)


BACKBONES = {"dann_digits": DannDigits, "dann_digits_bn": DannDigitsBN, "lenet": LeNet,
             "mlp": MLP}


def build_backbone(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """The backbone ``name`` for ``num_classes`` classes and inputs of ``input_shape``."""
    if name not in BACKBONES:
        raise ConfigError(f"Unknown backbone {name!r}; choices: {', '.join(sorted(BACKBONES))}.")
    try:
        return BACKBONES[name](num_classes, tuple(input_shape))
    except RuntimeError as err:  # e.g. an image too small for two 5x5 convs and pools
        raise ConfigError(f"Backbone {name!r} cannot take inputs of shape "
                          f"{tuple(input_shape)}: {err}") from err
