"""The dann_ent preset (DANN + entropy minimisation): the entropy term, its ramp, and that
it is DANN plus exactly that term."""

import math

import numpy as np
import pytest
import torch
from toy import full_step, method_config

from da_train.losses import mean_entropy
from da_train.methods import Batch, build_method
from da_train.models import build_backbone


def test_mean_entropy_matches_numpy():
    logits = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    p = np.exp(logits.double().numpy())
    p /= p.sum(1, keepdims=True)
    expected = float(-(p * np.log(p)).sum(1).mean())
    assert float(mean_entropy(logits)) == pytest.approx(expected, rel=1e-5)
    uniform, certain = torch.zeros(3, 4), torch.tensor([[50.0, 0, 0, 0]])
    assert float(mean_entropy(uniform)) == pytest.approx(math.log(4))
    assert float(mean_entropy(certain)) == pytest.approx(0.0, abs=1e-12)


def method_with(name, **options):
    torch.manual_seed(0)
    return build_method(method_config(name, **options), build_backbone("mlp", 3, (2,)), 3)


@pytest.mark.parametrize("progress", [0.0, 0.3, 1.0])
def test_loss_is_dann_plus_ramped_entropy(progress):
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(8, 2, generator=g), torch.randint(0, 3, (8,), generator=g),
                  torch.randn(6, 2, generator=g))
    dann = method_with("dann", weight=1.0, gamma=10.0)
    ent = method_with("dann_ent", weight=1.0, gamma=10.0, reg__entropy__weight=0.5)
    ent.load_state_dict(dann.state_dict())
    with torch.no_grad():
        base = full_step(dann, batch, progress)
        out = full_step(ent, batch, progress)
    weight = 0.5 * (2 / (1 + math.exp(-10 * progress)) - 1)
    with torch.no_grad():
        entropy = mean_entropy(ent.backbone.classifier(ent.backbone.features(batch.xt)))
    assert out.logs["ent_weight"] == pytest.approx(weight)
    assert float(out.logs["entropy"]) == pytest.approx(float(entropy), rel=1e-6)
    assert float(out.loss) == pytest.approx(float(base.loss) + weight * float(entropy), rel=1e-6)


def test_entropy_gradient_reaches_the_target_inputs():
    ent = method_with("dann_ent", weight=0.0, reg__entropy__weight=1.0)
    xs = torch.randn(5, 2, requires_grad=True)
    xt = torch.randn(4, 2, requires_grad=True)
    out = full_step(ent, Batch(xs, torch.zeros(5, dtype=torch.long), xt), 1.0)
    out.loss.backward()
    assert xt.grad is not None and xt.grad.abs().sum() > 0  # weight=0: only the entropy term
