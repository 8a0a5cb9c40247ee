"""The losses of CDAN, MCC, Deep CORAL, BNM and VAT against hand-computed / NumPy references,
and where their gradients go."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from da_train.losses.bnm import bnm_loss
from da_train.losses.cdan import (
    Conditioner,
    RandomizedMultilinear,
    domain_loss,
    entropy_weights,
    multilinear_map,
)
from da_train.losses.coral import coral_loss, covariance
from da_train.losses.mcc import class_confusion, mcc_loss
from da_train.losses.vat import adversarial_direction, kl_from_logits, vat_loss


def softmax_np(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ----------------------------------------------------------------------------- CDAN
def test_multilinear_map_is_the_flattened_outer_product():
    f = torch.tensor([[1.0, 2.0, 3.0]])
    g = torch.tensor([[0.25, 0.75]])
    assert multilinear_map(f, g).tolist() == [[0.25, 0.75, 0.5, 1.5, 0.75, 2.25]]
    rng = np.random.default_rng(0)
    f, g = rng.normal(size=(4, 5)), softmax_np(rng.normal(size=(4, 3)))
    ref = np.stack([np.outer(a, b).ravel() for a, b in zip(f, g, strict=True)])
    out = multilinear_map(torch.tensor(f), torch.tensor(g)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-12)


def test_randomized_map_formula_and_inner_products():
    torch.manual_seed(0)
    rm = RandomizedMultilinear(6, 3, out_dim=4)
    f, g = torch.randn(2, 6), torch.softmax(torch.randn(2, 3), 1)
    ref = (f @ rm.r_f) * (g @ rm.r_g) / 2.0
    torch.testing.assert_close(rm(f, g), ref)
    assert not any(p.requires_grad for p in rm.parameters())  # fixed, not trained
    assert {"r_f", "r_g"} <= set(rm.state_dict())  # saved with the checkpoint
    # unbiased for the outer product's inner products: <T(a), T(b)> ~ <a(x)g, b(x)h> for large d
    torch.manual_seed(1)
    big = RandomizedMultilinear(6, 3, out_dim=200_000)
    exact = (multilinear_map(f, g)[0] * multilinear_map(f, g)[1]).sum()
    approx = (big(f, g)[0] * big(f, g)[1]).sum()
    assert abs(approx - exact) < 0.05 * multilinear_map(f, g).norm(dim=1).prod()


def test_conditioner_switches_to_randomized_above_4096():
    assert Conditioner(400, 10).random is None and Conditioner(400, 10).out_dim == 4000
    big = Conditioner(1200, 10)
    assert big.random is not None and big.out_dim == 1024
    assert Conditioner(1200, 10, max_dim=20000).out_dim == 12000


def test_entropy_weights_normalised_per_domain_and_without_gradient():
    logits = torch.tensor([[10.0, 0.0], [0.0, 0.0], [5.0, 0.0], [0.0, 0.1]], requires_grad=True)
    probs = torch.softmax(logits, 1)
    is_source = torch.tensor([True, True, False, False])
    w = entropy_weights(probs, is_source)
    assert not w.requires_grad
    p = softmax_np(logits.detach().numpy())
    raw = 1 + np.exp((p * np.log(p + 1e-8)).sum(1))
    ref = np.concatenate([raw[:2] / raw[:2].sum(), raw[2:] / raw[2:].sum()])
    np.testing.assert_allclose(w.numpy(), ref, rtol=1e-5)
    assert w[0] > w[1]  # the confident sample weighs more
    # weighted BCE = sum(w * bce) / sum(w)
    d = torch.tensor([2.0, -1.0, 0.5, -3.0])
    bce = np.log1p(np.exp(-np.array([2.0, -1.0]))).tolist() + \
        np.log1p(np.exp(np.array([0.5, -3.0]))).tolist()
    assert domain_loss(d, is_source, w).item() == pytest.approx((ref * bce).sum() / ref.sum(),
                                                                rel=1e-5)
    assert domain_loss(d, is_source).item() == pytest.approx(np.mean(bce), rel=1e-5)


# ----------------------------------------------------------------------------- MCC
def mcc_numpy(z, t):
    y = softmax_np(z / t)
    h = -(y * np.log(y + 1e-5)).sum(1)
    w = 1 + np.exp(-h)
    w = len(y) * w / w.sum()
    c = (y * w[:, None]).T @ y
    c = c / c.sum(1, keepdims=True)
    return c, (c.sum() - np.trace(c)) / len(c)


def test_mcc_confusion_matrix_and_loss_match_numpy():
    z = np.random.default_rng(0).normal(size=(8, 4)) * 3
    c_ref, loss_ref = mcc_numpy(z, 2.5)
    zt = torch.tensor(z, dtype=torch.float32)
    np.testing.assert_allclose(class_confusion(zt, 2.5).numpy(), c_ref, rtol=1e-5)
    assert mcc_loss(zt, 2.5).item() == pytest.approx(loss_ref, rel=1e-5)
    np.testing.assert_allclose(class_confusion(zt).sum(1).numpy(), 1.0, rtol=1e-6)


def test_mcc_is_small_for_one_hot_and_large_for_uniform():
    assert mcc_loss(torch.eye(3) * 100, temperature=1.0).item() < 1e-6
    assert mcc_loss(torch.zeros(5, 3), temperature=1.0).item() == pytest.approx(2 / 3, rel=1e-5)


# ----------------------------------------------------------------------------- CORAL
def test_coral_matches_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(16, 5)), rng.normal(size=(12, 5)) * 2 + 1
    ref = ((np.cov(s, rowvar=False) - np.cov(t, rowvar=False)) ** 2).sum() / (4 * 25)
    st, tt = torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)
    np.testing.assert_allclose(covariance(st).numpy(), np.cov(s, rowvar=False), rtol=1e-5)
    assert coral_loss(st, tt).item() == pytest.approx(ref, rel=1e-5)
    assert coral_loss(st, st).item() == 0.0
    # hand-computed 1-d case: var {0, 2} = 2, var {0, 4} = 8 -> (2 - 8)^2 / 4 = 9
    assert coral_loss(torch.tensor([[0.0], [2.0]]), torch.tensor([[0.0], [4.0]])).item() == 9.0


def test_log_euclidean_coral_compares_matrix_logarithms():
    s = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])  # cov = diag(4/3, 4/3)
    t = s * 2  # cov = diag(16/3, 16/3): log differs by log 4 on each diagonal entry
    expected = 2 * math.log(4) ** 2 / (4 * 4)
    assert coral_loss(s, t, log_euclidean=True, eps=1e-9).item() == pytest.approx(expected,
                                                                                   rel=1e-4)


def test_coral_gradient_reaches_both_feature_batches():
    s = torch.randn(8, 3, requires_grad=True)
    t = (torch.randn(8, 3) * 3).requires_grad_(True)
    coral_loss(s, t).backward()
    assert s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- BNM
def test_bnm_is_minus_the_nuclear_norm_over_batch():
    z = np.random.default_rng(0).normal(size=(6, 4))
    ref = -np.linalg.svd(softmax_np(z), compute_uv=False).sum() / 6
    assert bnm_loss(torch.tensor(z, dtype=torch.float32)).item() == pytest.approx(ref, rel=1e-5)
    # confident and diverse: one-hot rows of 4 distinct classes -> ||A||_* = 4
    assert bnm_loss(torch.eye(4) * 50).item() == pytest.approx(-1.0, rel=1e-5)
    # confident but collapsed onto one class: rank 1, ||A||_* = sqrt(4) = 2
    collapsed = torch.tensor([[50.0, 0, 0, 0]] * 4)
    assert bnm_loss(collapsed).item() == pytest.approx(-0.5, rel=1e-5)


def test_bnm_gradient_increases_the_nuclear_norm():
    z = torch.randn(8, 5, requires_grad=True)
    loss = bnm_loss(z)
    loss.backward()
    with torch.no_grad():
        assert bnm_loss(z - 0.1 * z.grad) < loss


# ----------------------------------------------------------------------------- VAT
def test_vat_direction_on_a_linear_model_is_the_weight_difference():
    """For a 2-class linear softmax model, KL(p(x) || p(x + r)) grows fastest along
    w_1 - w_0 (the Hessian in r is rank one along it): one power iteration finds it."""
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    x = torch.randn(4, 5)
    d = adversarial_direction(model, x, model(x))
    w = model.weight.detach()
    ref = (w[1] - w[0]) / (w[1] - w[0]).norm()
    cos = (d @ ref).abs()
    assert torch.allclose(cos, torch.ones(4), atol=1e-3), cos
    assert torch.allclose(d.norm(dim=1), torch.ones(4))
    # the papers' xi = 1e-6 is below float32 resolution: the direction found is not this one
    rough = adversarial_direction(model, x, model(x), xi=1e-6)
    assert (rough @ ref).abs().min() < 0.9


def test_vat_loss_value_and_gradients():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x = torch.randn(6, 5)
    clean = model(x)
    loss = vat_loss(model, x, clean, eps=0.5)
    # the search leaves no gradient behind; the loss is the KL at the found perturbation
    assert model.weight.grad is None
    assert loss.item() > 0
    loss.backward()
    assert model.weight.grad.abs().sum() > 0
    # the clean prediction is a constant: its graph receives nothing
    clean_leaf = clean.detach().requires_grad_(True)
    vat_loss(model, x, clean_leaf, eps=0.5).backward()
    assert clean_leaf.grad is None
    # the adversarial direction beats a random one of the same size
    torch.manual_seed(1)
    with torch.no_grad():
        rand = torch.randn_like(x)
        rand = rand / rand.norm(dim=1, keepdim=True)
        kl_rand = kl_from_logits(clean, model(x + 0.5 * rand))
    assert loss.item() > kl_rand.item()
