import math

import pytest
import torch

from da_train.losses import grad_reverse, sigmoid_ramp
from da_train.optim import lr_factor


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 2.5])
def test_grl_is_identity_forward_and_negates_gradient(lam):
    x = torch.randn(5, 7, requires_grad=True)
    y = grad_reverse(x, lam)
    assert torch.equal(y, x)
    upstream = torch.randn(5, 7)
    y.backward(upstream)
    assert torch.equal(x.grad, -lam * upstream)


def test_sigmoid_ramp_values():
    assert sigmoid_ramp(0.0) == 0.0
    assert sigmoid_ramp(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert sigmoid_ramp(0.1) == pytest.approx(0.46211715726)
    assert sigmoid_ramp(0.5, lam=0.3) == pytest.approx(0.3 * 0.98661429815)
    assert sigmoid_ramp(1.0, gamma=1.0) == pytest.approx(0.46211715726)


def test_dann_lr_annealing_values():
    f = lr_factor({"schedule": "dann", "anneal_alpha": 10.0, "anneal_beta": 0.75}, 1000)
    assert f(0) == 1.0
    assert f(1000) == pytest.approx(11 ** -0.75)
    assert f(500) == pytest.approx(6 ** -0.75)


def test_step_schedule_cuts_the_lr_every_step_every_steps():
    f = lr_factor({"schedule": "step", "step_every": 100, "step_factor": 0.5}, 1000)
    assert [f(t) for t in (0, 99, 100, 199, 200, 950)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.5 ** 9]


def test_constant_schedule_is_flat():
    f = lr_factor({"schedule": "constant"}, 1000)
    assert f(0) == f(999) == 1.0
