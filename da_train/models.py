"""Backbones: a feature extractor and a label head, selected by ``backbone.name``.

Every backbone has ``features`` (input -> flat feature vector), ``classifier`` (features ->
logits) and ``feature_dim``. Sizes follow the data's ``input_shape`` (C, H, W) -- found with one
dummy forward pass at construction -- so one architecture serves 3x32x32 (MNIST -> MNIST-M)
and 1x28x28 (MNIST 0/1 -> 2/3) inputs, and the methods' heads size themselves from
``feature_dim``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING
from torch import nn

from .errors import ConfigError
from .optim import mark_pretrained


def _flat_dim(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Width of ``module``'s flat output for one input of ``input_shape``."""
    with torch.no_grad():
        return module(torch.zeros(1, *input_shape)).shape[1]


def _channels(name: str, input_shape: tuple[int, ...]) -> int:
    """Conv backbones need images; say so instead of failing inside a conv layer."""
    if len(input_shape) != 3:
        hint = "backbone=cnn1d for C x L signals" if len(input_shape) == 2 else \
            "backbone=mlp for vector data"
        raise ConfigError(f"Backbone {name!r} needs image inputs (C, H, W), got input shape "
                          f"{tuple(input_shape)}; use {hint}.")
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
    plain network in a one-seed pilot (docs/results-absdiff.md), so no preset uses it. BatchNorm
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


class CNN1d(nn.Module):
    """1-D CNN for ``C x L`` signals (vibration, sensors): three conv-BN-ReLU blocks
    (32@7, 64@5, 128@3, max-pool 2 after the first two), global average pooling -> 128
    features; label head FC k. Any length L >= 8 works (the pooling is global)."""

    feature_dim = 128

    def __init__(self, num_classes: int, input_shape: tuple[int, ...] = (1, 1024)):
        super().__init__()
        if len(input_shape) != 2:
            raise ConfigError(f"Backbone 'cnn1d' needs C x L signals, got per-sample shape "
                              f"{tuple(input_shape)}; use backbone=mlp for vectors or an image "
                              "backbone (lenet, resnet18) for C x H x W images.")
        if input_shape[1] < 8:
            raise ConfigError(f"Backbone 'cnn1d' needs signals of length >= 8, got "
                              f"{input_shape[1]}.")
        block = lambda i, o, k: [nn.Conv1d(i, o, k, padding=k // 2),  # noqa: E731
                                 nn.BatchNorm1d(o), nn.ReLU()]
        self.features = nn.Sequential(
            *block(input_shape[0], 32, 7), nn.MaxPool1d(2), *block(32, 64, 5), nn.MaxPool1d(2),
            *block(64, 128, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten())
        self.classifier = nn.Linear(self.feature_dim, num_classes)


RESNET_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights"}


def _resnet_trunk(name: str, pretrained: bool) -> nn.Module:
    """torchvision's ResNet without its fc layer (-> 512 / 2048 pooled features)."""
    import torchvision

    weights = getattr(torchvision.models, RESNET_WEIGHTS[name]).IMAGENET1K_V1
    if not pretrained:
        net = getattr(torchvision.models, name)(weights=None)
    else:
        try:
            net = getattr(torchvision.models, name)(weights=weights)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise ConfigError(_weights_message(name, weights.url, err)) from err
    net.fc = nn.Identity()
    return net


def _weights_message(name: str, url: str, err: Exception) -> str:
    hub = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
    return (f"backbone={name} backbone.pretrained=true needs the ImageNet weights {hub}, which "
            f"are not cached and could not be downloaded ({err}). Download {url} on a machine "
            f"with network access and copy it to {hub} (TORCH_HOME="
            f"{os.environ.get('TORCH_HOME', '~/.cache/torch')}), or train from scratch with "
            "backbone.pretrained=false.")


class ResNet(nn.Module):
    """torchvision ResNet-18/50 + the usual domain-adaptation bottleneck (Linear ``bottleneck``
    + BatchNorm + ReLU, as in DANN/CDAN's Office-31 setups) as ``features``; FC k head.

    With ImageNet weights, the trunk's parameters are marked pretrained so the optimiser gives
    them ``optim.pretrained_lr_mult`` (0.1) times the learning rate of the new layers.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, ...] = (3, 224, 224),
                 name: str = "resnet50", pretrained: bool = True, bottleneck: int = 256):
        super().__init__()
        if len(input_shape) != 3 or input_shape[0] != 3 or min(input_shape[1:]) < 32:
            raise ConfigError(f"Backbone {name!r} needs RGB images of at least 32x32 (3, H, W); "
                              f"the data gives {tuple(input_shape)}. Use data=folders (or "
                              "3-channel arrays), or a digit backbone (lenet, dann_digits) for "
                              "small digits.")
        trunk = _resnet_trunk(name, pretrained)
        if pretrained:
            mark_pretrained(trunk)
        width = 512 if name == "resnet18" else 2048
        self.feature_dim = bottleneck
        self.features = nn.Sequential(trunk, nn.Linear(width, bottleneck),
                                      nn.BatchNorm1d(bottleneck), nn.ReLU())
        self.classifier = nn.Linear(bottleneck, num_classes)


@dataclass
class BackboneConfig:
    name: str = MISSING


@dataclass
class ResNetConfig:
    name: str = MISSING
    # ImageNet weights (torchvision, cached under TORCH_HOME); false: random initialisation
    pretrained: bool = True
    # width of the bottleneck (Linear + BatchNorm + ReLU) that gives the features
    bottleneck: int = 256


BACKBONES = {"dann_digits": DannDigits, "dann_digits_bn": DannDigitsBN, "lenet": LeNet,
             "mlp": MLP, "cnn1d": CNN1d, "resnet18": ResNet, "resnet50": ResNet}
BACKBONE_SCHEMAS = {name: BackboneConfig for name in BACKBONES} | {
    "resnet18": ResNetConfig, "resnet50": ResNetConfig}
# Digit networks: inputs up to this side (a 224x224 photo would make a huge FC layer).
DIGIT_MAX_SIDE = 64


def build_backbone(name, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """The backbone for ``num_classes`` classes and inputs of ``input_shape``.

    ``name``: a backbone name, or the ``backbone`` config (its other keys, e.g.
    ``pretrained``, are passed on).
    """
    options = {}
    if not isinstance(name, str):
        options = {k: v for k, v in dict(name).items() if k != "name"}
        name = name["name"]
    if name not in BACKBONES:
        raise ConfigError(f"Unknown backbone {name!r}; choices: {', '.join(sorted(BACKBONES))}.")
    if name in ("dann_digits", "dann_digits_bn", "lenet"):
        _check_digit_input(name, tuple(input_shape))
    if name.startswith("resnet"):
        options["name"] = name
    try:
        return BACKBONES[name](num_classes, tuple(input_shape), **options)
    except RuntimeError as err:  # e.g. an image too small for two 5x5 convs and pools
        raise ConfigError(f"Backbone {name!r} cannot take inputs of shape "
                          f"{tuple(input_shape)}: {err}") from err


def _check_digit_input(name: str, input_shape: tuple[int, ...]) -> None:
    """Digit networks are for small images; say so for photos instead of building a giant FC."""
    _channels(name, input_shape)
    if max(input_shape[1:]) > DIGIT_MAX_SIDE:
        raise ConfigError(f"Backbone {name!r} is a digit network for images up to "
                          f"{DIGIT_MAX_SIDE}x{DIGIT_MAX_SIDE}; the data gives "
                          f"{input_shape[1]}x{input_shape[2]} images. For small images (digits "
                          "saved as files) set data.image_size (e.g. data.image_size=32); for "
                          "photos use backbone=resnet18 or resnet50 (offline, without the "
                          "ImageNet weights cached, add backbone.pretrained=false).")


# ---------------------------------------------------------------------------- dirtt_digits
class GaussianNoise(nn.Module):
    """Adds ``N(0, std^2)`` noise in training mode (identity in evaluation)."""

    def __init__(self, std: float = 1.0):
        super().__init__()
        self.std = std

    def forward(self, x):
        return x + self.std * torch.randn_like(x) if self.training and self.std > 0 else x


class DirttDigits(nn.Module):
    """The "small" digit network of VADA / DIRT-T (Shu et al., ICLR 2018, appendix table of
    architectures), reconstructed from the paper's description:

    instance normalisation of the input (per image and channel, no learned scale);
    [conv3x3 64 - BatchNorm - LeakyReLU(0.1)] x 3, max-pool 2, dropout 0.5, Gaussian noise
    (std 1, training only); the same block again; [conv3x3 64 - BN - LeakyReLU] x 3; global
    average pool -> 64 features; label head FC k. Convolutions are padded ("same"), so any
    input of at least 4x4 works (3x32x32 as the paper, 1x28x28 for the USPS pairs); the
    width is found from ``input_shape`` like the other backbones'.

    BatchNorm sits in the feature extractor: methods that run the source and target batches
    through it in one pass (DANN-style) share its statistics across domains.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int] = (3, 32, 32)):
        super().__init__()
        _check_digit_input("dirtt_digits", tuple(input_shape))
        channels = input_shape[0]

        def convs(in_ch: int) -> list[nn.Module]:
            layers: list[nn.Module] = []
            for i in range(3):
                layers += [nn.Conv2d(in_ch if i == 0 else 64, 64, 3, padding=1),
                           nn.BatchNorm2d(64), nn.LeakyReLU(0.1)]
            return layers

        self.features = nn.Sequential(
            nn.InstanceNorm2d(channels, affine=False),
            *convs(channels), nn.MaxPool2d(2), nn.Dropout(0.5), GaussianNoise(1.0),
            *convs(64), nn.MaxPool2d(2), nn.Dropout(0.5), GaussianNoise(1.0),
            *convs(64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.feature_dim = _flat_dim(self.features.eval(), input_shape)
        self.features.train()
        self.classifier = nn.Linear(self.feature_dim, num_classes)


BACKBONES["dirtt_digits"] = DirttDigits
BACKBONE_SCHEMAS["dirtt_digits"] = BackboneConfig
