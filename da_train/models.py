"""Backbones: a feature extractor and a label head, selected by ``backbone.name``."""

from __future__ import annotations

from torch import nn

from .config import ConfigError


class DannDigits(nn.Module):
    """The DANN paper's digit network (3x32x32 input -> 48*5*5 = 1200 features)."""

    feature_dim = 48 * 5 * 5

    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(self.feature_dim, 100), nn.ReLU(),
            nn.Linear(100, 100), nn.ReLU(),
            nn.Linear(100, num_classes),
        )


class MLP(nn.Module):
    """Small MLP for toy vector data (e.g. two moons); used by tests and custom setups."""

    def __init__(self, num_classes: int, in_dim: int = 2, hidden: int = 32):
        super().__init__()
        self.feature_dim = hidden
        self.features = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(),
                                      nn.Linear(hidden, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)


BACKBONES = {"dann_digits": DannDigits, "mlp": MLP}


def build_backbone(name: str, num_classes: int) -> nn.Module:
    if name not in BACKBONES:
        raise ConfigError(f"Unknown backbone {name!r}; choices: {', '.join(BACKBONES)}.")
    return BACKBONES[name](num_classes)
