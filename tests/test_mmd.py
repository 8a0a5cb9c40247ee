"""MMD^2 (da_train.methods.mmd) against a float64 NumPy reference, and the DDC method.

The reference below is written from the definitions (explicit loops over pairs), independently
of the implementation's matrix tricks (Gram expansion, centring, sum identities).
"""

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from toy import method_config, toy_batch, two_moons

from da_train.losses.mmd import mmd2, pairwise_sq_dists, rbf_bandwidths
from da_train.methods import METHODS, build_method
from da_train.methods.base import Batch
from da_train.methods.ddc import DDC
from da_train.methods.source_only import SourceOnly

ALL_SETTINGS = [
    ("rbf", "biased", None), ("rbf", "unbiased", None),
    ("rbf", "biased", 0.7), ("rbf", "unbiased", 3.0),
    ("linear", "biased", None), ("linear", "unbiased", None),
]


# ---------------------------------------------------------------------------- reference
def ref_bandwidths(z, kernel_num, kernel_mul, fix_sigma):
    """Bandwidths from the definition: mean of ||z_i - z_j||^2 over i != j (or fix_sigma)."""
    if fix_sigma is None:
        pairs = [np.sum((z[i] - z[j]) ** 2) for i in range(len(z)) for j in range(len(z))
                 if i != j]
        base = float(np.mean(pairs))
    else:
        base = fix_sigma
    return np.array([base * kernel_mul ** (i - kernel_num // 2) for i in range(kernel_num)])


def ref_mmd2(s, t, kernel="rbf", estimator="biased", kernel_num=5, kernel_mul=2.0,
             fix_sigma=None):
    """MMD^2 in float64 with explicit loops; returns (value, bandwidths)."""
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    z = np.concatenate([s, t])
    if kernel == "rbf":
        bws = ref_bandwidths(z, kernel_num, kernel_mul, fix_sigma)

        def k(x, y):
            return sum(math.exp(-np.sum((x - y) ** 2) / bw) for bw in bws)
    else:
        bws = np.zeros(0)

        def k(x, y):
            return float(np.dot(x, y))

    def within(a):
        pairs = [(i, j) for i in range(len(a)) for j in range(len(a))
                 if estimator == "biased" or i != j]
        return sum(k(a[i], a[j]) for i, j in pairs) / len(pairs)

    cross = sum(k(x, y) for x in s for y in t) / (len(s) * len(t))
    return within(s) + within(t) - 2 * cross, bws


def sample(n, d, shift=0.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) + shift).to(dtype)


# ---------------------------------------------------------------------------- distances
def test_pairwise_sq_dists_matches_definition():
    a, b = sample(6, 4, seed=1), sample(9, 4, shift=2.0, seed=2)
    want = np.array([[np.sum((x - y) ** 2) for y in b.numpy()] for x in a.numpy()])
    np.testing.assert_allclose(pairwise_sq_dists(a, b).numpy(), want, rtol=1e-12, atol=1e-12)
    joint = pairwise_sq_dists(a, a)
    assert torch.all(joint.diagonal() == 0)  # exactly: norms come from the Gram diagonal
    assert torch.all(joint >= 0)


def test_pairwise_sq_dists_keeps_small_distances_far_from_the_origin():
    """Points at distance ~1e-2 from each other, ~100 from the origin, in float32.

    The uncentred expansion (what ``torch.cdist`` does for > 25 rows) has an absolute error
    of ~eps * |x|^2 ~ 1e-3, as large as the distances themselves; centring must avoid it.
    """
    x = (sample(64, 8, seed=3) * 0.01 + 100.0).float()
    want = ((x.double()[:, None] - x.double()[None]) ** 2).sum(-1)
    off = ~torch.eye(64, dtype=torch.bool)
    for got in (pairwise_sq_dists(x, x), pairwise_sq_dists(x, x.clone())):  # both code paths
        rel = ((got.double() - want).abs()[off] / want[off]).max()
        assert rel < 1e-3, rel


# ---------------------------------------------------------------------------- the estimator
@pytest.mark.parametrize("kernel,estimator,fix_sigma", ALL_SETTINGS)
def test_mmd2_matches_numpy_reference(kernel, estimator, fix_sigma):
    s, t = sample(7, 5, seed=4), sample(11, 5, shift=0.5, seed=5)
    value, bws = mmd2(s, t, kernel=kernel, fix_sigma=fix_sigma, estimator=estimator)
    want, want_bws = ref_mmd2(s.numpy(), t.numpy(), kernel, estimator, fix_sigma=fix_sigma)
    assert value.dtype == torch.float64 and value.dim() == 0
    np.testing.assert_allclose(value.item(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bws.numpy(), want_bws, rtol=1e-12)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd2_matches_reference_for_other_kernel_counts(estimator):
    s, t = sample(5, 3, seed=6), sample(8, 3, shift=1.0, seed=7)
    for kernel_num, kernel_mul in ((1, 2.0), (3, 1.5), (4, 3.0)):
        value, bws = mmd2(s, t, kernel_num=kernel_num, kernel_mul=kernel_mul,
                          estimator=estimator)
        want, want_bws = ref_mmd2(s.numpy(), t.numpy(), "rbf", estimator, kernel_num,
                                  kernel_mul)
        assert bws.shape == (kernel_num,)
        np.testing.assert_allclose(bws.numpy(), want_bws, rtol=1e-12)
        np.testing.assert_allclose(value.item(), want, rtol=1e-10, atol=1e-12)


def test_identical_samples():
    x = sample(10, 4, seed=8)
    # Biased: exactly 0 in exact arithmetic whenever source and target are the same set.
    assert mmd2(x, x.clone(), kernel="linear")[0].item() == 0.0
    assert abs(mmd2(x, x.clone())[0].item()) < 1e-12
    assert abs(mmd2(x, x.flip(0))[0].item()) < 1e-12  # order does not matter
    # Unbiased: not 0. The within-domain means drop the diagonal, the cross mean keeps the
    # i == j pairs, so for the linear kernel the value is -2/n * trace(sample covariance).
    n = len(x)
    cov_trace = np.trace(np.cov(x.numpy(), rowvar=False))
    unbiased_linear = mmd2(x, x.clone(), kernel="linear", estimator="unbiased")[0].item()
    np.testing.assert_allclose(unbiased_linear, -2.0 / n * cov_trace, rtol=1e-10)
    assert mmd2(x, x.clone(), estimator="unbiased")[0].item() < 0


@pytest.mark.parametrize("kernel,estimator,fix_sigma", ALL_SETTINGS)
def test_mmd2_is_symmetric(kernel, estimator, fix_sigma):
    a, b = sample(6, 3, seed=9), sample(13, 3, shift=0.3, seed=10)
    ab = mmd2(a, b, kernel=kernel, fix_sigma=fix_sigma, estimator=estimator)[0]
    ba = mmd2(b, a, kernel=kernel, fix_sigma=fix_sigma, estimator=estimator)[0]
    torch.testing.assert_close(ab, ba, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kernel,estimator,fix_sigma", ALL_SETTINGS)
def test_shifted_distribution_gives_larger_mmd(kernel, estimator, fix_sigma):
    a = sample(200, 5, seed=11)
    same = sample(150, 5, seed=12)
    shifted = sample(150, 5, shift=1.0, seed=13)
    opts = dict(kernel=kernel, fix_sigma=fix_sigma, estimator=estimator)
    near, far = mmd2(a, same, **opts)[0].item(), mmd2(a, shifted, **opts)[0].item()
    # The biased value of two same-distribution samples is inflated by the diagonal terms
    # (0.057 for rbf with fix_sigma 0.7 here), so no ratio much above 3 holds for all settings.
    assert far > 3 * abs(near) and far - near > 0.1, (near, far)


@pytest.mark.parametrize("kernel,estimator,fix_sigma", ALL_SETTINGS)
def test_gradients_reach_both_inputs(kernel, estimator, fix_sigma):
    s = sample(8, 4, seed=14).requires_grad_()
    t = sample(6, 4, shift=0.5, seed=15).requires_grad_()
    value, _ = mmd2(s, t, kernel=kernel, fix_sigma=fix_sigma, estimator=estimator)
    value.backward()
    for x in (s, t):
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert x.grad.abs().sum() > 0


def test_gradient_matches_finite_differences():
    s = sample(5, 3, seed=16).requires_grad_()
    t = sample(4, 3, shift=0.5, seed=17).requires_grad_()
    for estimator in ("biased", "unbiased"):
        assert torch.autograd.gradcheck(
            lambda a, b, e=estimator: mmd2(a, b, fix_sigma=1.5, estimator=e)[0], (s, t))


def test_fix_sigma_is_honoured():
    s, t = sample(9, 4, seed=18), sample(7, 4, shift=0.5, seed=19)
    v1, bw1 = mmd2(s, t, fix_sigma=0.5, kernel_num=5, kernel_mul=2.0)
    v2, bw2 = mmd2(s, t, fix_sigma=4.0, kernel_num=5, kernel_mul=2.0)
    v3, bw3 = mmd2(s, t, fix_sigma=4.0, kernel_num=3, kernel_mul=3.0)
    assert bw1.tolist() == [0.5 * 2.0 ** (i - 2) for i in range(5)]
    assert bw2.tolist() == [4.0 * 2.0 ** (i - 2) for i in range(5)]
    np.testing.assert_allclose(bw3.numpy(), [4.0 / 3, 4.0, 12.0], rtol=1e-15)
    assert abs(v1.item() - v2.item()) > 1e-3
    data_driven = mmd2(s, t)[0]
    assert abs(v1.item() - data_driven.item()) > 1e-3
    with pytest.raises(ValueError, match="fix_sigma"):
        mmd2(s, t, fix_sigma=0.0)


def test_bandwidth_has_no_gradient_path():
    s = sample(8, 4, seed=20).requires_grad_()
    t = sample(6, 4, shift=0.5, seed=21).requires_grad_()
    value, bws = mmd2(s, t)
    assert not bws.requires_grad
    value.backward()
    grads = s.grad.clone(), t.grad.clone()
    # The same value with the same base bandwidth given as a constant: identical gradients.
    s.grad, t.grad = None, None
    base = float(bws[len(bws) // 2])
    fixed, _ = mmd2(s, t, fix_sigma=base)
    torch.testing.assert_close(fixed, value.detach(), rtol=1e-12, atol=1e-14)
    fixed.backward()
    torch.testing.assert_close(s.grad, grads[0], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(t.grad, grads[1], rtol=1e-10, atol=1e-14)


def test_rbf_bandwidths_directly():
    z = sample(10, 3, seed=22)
    d2 = pairwise_sq_dists(z, z)
    want = ref_bandwidths(z.numpy(), 5, 2.0, None)
    np.testing.assert_allclose(rbf_bandwidths(d2, 10, 5, 2.0, None).numpy(), want, rtol=1e-12)
    # All points equal: distances 0, no 0/0 (any bandwidth gives the same constant kernel).
    same = torch.zeros(6, 3, dtype=torch.float64)
    value, bws = mmd2(same[:3], same[3:])
    assert torch.isfinite(bws).all() and value.item() == 0.0
    with pytest.raises(ValueError):
        rbf_bandwidths(d2, 11, 5, 2.0, None)


def test_large_batches_do_not_build_the_broadcast_tensor():
    """(n+m)^2 distances at d=4096 are 64 MB; the (n+m)^2 d broadcast would be 256 GB."""
    g = torch.Generator().manual_seed(23)
    s = torch.randn(2048, 4096, generator=g)
    t = torch.randn(2048, 4096, generator=g) + 0.1
    start = time.perf_counter()
    with torch.no_grad():
        value, bws = mmd2(s, t)
    assert torch.isfinite(value) and torch.isfinite(bws).all()
    assert time.perf_counter() - start < 60


def test_unbiased_needs_two_samples_per_domain():
    x = sample(5, 3)
    for kernel in ("rbf", "linear"):
        with pytest.raises(ValueError, match="n, m >= 2"):
            mmd2(x[:1], x, kernel=kernel, estimator="unbiased")
        with pytest.raises(ValueError, match="n, m >= 2"):
            mmd2(x, x[:1], kernel=kernel, estimator="unbiased")
        assert torch.isfinite(mmd2(x[:1], x[1:2], kernel=kernel)[0])  # biased: fine
    with pytest.raises(ValueError, match="kernel"):
        mmd2(x, x, kernel="laplace")
    with pytest.raises(ValueError, match="estimator"):
        mmd2(x, x, estimator="linear_time")
    with pytest.raises(ValueError):
        mmd2(x, x[:, :2])


def test_float32_under_bf16_autocast():
    s, t = sample(16, 8, seed=24).float(), sample(12, 8, shift=0.5, seed=25).float()
    want, _ = mmd2(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, bws = mmd2(s, t)
        from_bf16, _ = mmd2(s.bfloat16(), t.bfloat16())
    assert got.dtype == torch.float32 and bws.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert from_bf16.dtype == torch.float32
    torch.testing.assert_close(from_bf16, mmd2(s.bfloat16().float(), t.bfloat16().float())[0],
                               rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------- DDC method
class TinyNet(nn.Module):
    """A stand-in backbone with the interface methods use: features, classifier, feature_dim."""

    def __init__(self, in_dim=2, hidden=32, num_classes=2):
        super().__init__()
        self.feature_dim = hidden
        self.features = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(),
                                      nn.Linear(hidden, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)


def ddc_config(**options):
    return method_config("ddc", **options)


def test_ddc_is_registered():
    assert METHODS["ddc"] is DDC
    torch.manual_seed(0)
    assert isinstance(build_method(ddc_config(), TinyNet(), 3), DDC)


@pytest.mark.parametrize("layer", ["features", "logits"])
@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_ddc_training_step(layer, kernel):
    torch.manual_seed(0)
    net = TinyNet(in_dim=3, hidden=16, num_classes=4)
    cfg = ddc_config(weight=0.25, kernel=kernel, layer=layer, kernel_num=3, kernel_mul=2.0,
                     estimator="unbiased")
    method = DDC(cfg, net, 4)
    batch = toy_batch(n=12, m=9, in_dim=3, num_classes=4)
    out = method.training_step("model", batch, 0.3)

    fs, ft = net.features(batch.xs), net.features(batch.xt)
    loss_cls = F.cross_entropy(net.classifier(fs), batch.ys)
    aligned = (net.classifier(fs), net.classifier(ft)) if layer == "logits" else (fs, ft)
    want_mmd, want_bws = mmd2(*aligned, kernel=kernel, kernel_num=3, estimator="unbiased")
    other = (fs, ft) if layer == "logits" else (net.classifier(fs), net.classifier(ft))
    other_mmd, _ = mmd2(*other, kernel=kernel, kernel_num=3, estimator="unbiased")

    logs = out.logs
    assert logs.pop("lam") == 0.25  # no ramp by default: the constant weight
    expected_keys = {"loss_cls", "loss_transfer"}
    if kernel == "rbf":
        expected_keys |= {"bandwidth_min", "bandwidth_max"}
    assert set(logs) == expected_keys
    assert all(torch.is_tensor(v) and not v.requires_grad for v in logs.values())
    torch.testing.assert_close(logs["loss_cls"], loss_cls.detach())
    torch.testing.assert_close(logs["loss_transfer"], want_mmd.detach())
    assert abs(want_mmd.item() - other_mmd.item()) > 1e-6  # the layers really differ
    torch.testing.assert_close(out.loss.detach(), loss_cls.detach() + 0.25 * want_mmd.detach())
    if kernel == "rbf":
        torch.testing.assert_close(logs["bandwidth_min"], want_bws.min())
        torch.testing.assert_close(logs["bandwidth_max"], want_bws.max())
    out.loss.backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("progress", [0.0, 0.1, 1.0])
def test_ddc_ramp_follows_the_dann_schedule(progress):
    torch.manual_seed(0)
    batch, net = toy_batch(), TinyNet()
    flat = DDC(ddc_config(weight=2.0), net, 2).training_step("model", batch, progress)
    ramped = DDC(ddc_config(weight=2.0, ramp="sigmoid", gamma=10.0), net, 2).training_step(
        "model", batch, progress)
    weight = 2.0 * (2 / (1 + math.exp(-10 * progress)) - 1)
    assert ramped.logs["lam"] == pytest.approx(weight)
    expected = flat.logs["loss_cls"] + weight * flat.logs["loss_transfer"]
    torch.testing.assert_close(ramped.loss.detach(), expected)


def test_ddc_passes_fix_sigma_and_lam():
    torch.manual_seed(0)
    batch = toy_batch()
    net = TinyNet()
    out = DDC(ddc_config(fix_sigma=0.8, weight=2.0), net, 2).training_step("model", batch, 0.0)
    assert out.logs["bandwidth_min"].item() == pytest.approx(0.8 / 4)
    assert out.logs["bandwidth_max"].item() == pytest.approx(0.8 * 4)
    torch.testing.assert_close(out.loss.detach(),
                               out.logs["loss_cls"] + 2.0 * out.logs["loss_transfer"])


# ---------------------------------------------------------------------------- adaptation


@pytest.fixture
def one_thread():
    """Tiny models on a shared machine: thread hand-offs cost more than the maths."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def moons():
    rng = np.random.default_rng(0)
    source, source_test = two_moons(600, rng), two_moons(600, rng)
    target_images, target_test = two_moons(600, rng, 35.0)[0], two_moons(600, rng, 35.0)
    return source, target_images, source_test, target_test


def fit(method, moons, seed, steps=1500, lr=0.05, batch_size=64):
    """Plain SGD + the DANN lr schedule on the Method API; returns (source acc, target acc)."""
    (xs, ys), xt, (xs_test, ys_test), (xt_test, yt_test) = moons
    opt = torch.optim.SGD(method.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + 10 * t / steps) ** 0.75)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        i = torch.randint(0, len(xs), (batch_size,), generator=g)
        j = torch.randint(0, len(xt), (batch_size,), generator=g)
        out = method.training_step("model", Batch(xs[i], ys[i], xt[j]), step / steps)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return tuple((method.predict(x).argmax(1) == y).float().mean().item()
                     for x, y in ((xs_test, ys_test), (xt_test, yt_test)))


def test_ddc_beats_source_only_on_rotated_moons(moons, one_thread):
    """35-degree rotated two moons, 1500 steps. Measured on model/batch seeds 0-19:
    source-only target acc 0.765-0.790; DDC (rbf, lam 0.5) 0.878-0.978, margin 0.108-0.205
    (seed 0: 0.780 -> 0.977). With lam 1 the margin is ~0.2 too, but 1 seed in 20 collapsed
    (all features dead, 0.5 accuracy), so the test uses lam 0.5 and checks the source acc."""
    seed = 0
    torch.manual_seed(seed)
    source_only = fit(SourceOnly(OmegaConf.create({"name": "source_only"}), TinyNet(), 2), moons,
                      seed)
    torch.manual_seed(seed)
    ddc = fit(DDC(ddc_config(weight=0.5, kernel="rbf"), TinyNet(), 2), moons, seed)
    assert source_only[0] > 0.95 and source_only[1] < 0.9, source_only
    assert ddc[0] > 0.9, ddc  # the features did not collapse
    assert ddc[1] > source_only[1] + 0.1, (source_only, ddc)
