"""Validators on hand-made inputs with known answers, their directions, the source validation
split, and the guarantee that no validator can read target labels."""

import dataclasses
import inspect
import math

import pytest
import torch

from da_train.data.core import DomainPair, Split, normalise
from da_train.data.source_val import (
    DEFAULT_FRACTION,
    SELECTION_FRACTION,
    hold_out_source_val,
    source_val_indices,
)
from da_train.sampling import EpochSampler
from da_train.selection import (
    DIRECTIONS,
    VALIDATORS,
    batch_nuclear_norm,
    best_index,
    compute_validators,
    deep_embedded_validation,
    density_ratio,
    information_maximisation,
    prediction_entropy,
    proxy_a_distance,
    soft_neighbourhood_density,
    source_val_accuracy,
)

BIG = 50.0  # logit margin that makes a softmax one-hot to float precision


def one_hot_logits(labels, k):
    return torch.nn.functional.one_hot(torch.as_tensor(labels), k).float() * BIG


def test_directions_are_explicit_and_complete():
    assert DIRECTIONS == {"source_val_acc": "max", "entropy": "min", "im": "max",
                          "snd": "max", "dev": "min", "bnm": "max"}
    assert best_index([0.1, 0.5, 0.3], "max") == 1
    assert best_index([0.1, 0.5, 0.3], "min") == 0
    with pytest.raises(ValueError):
        best_index([1.0], "up")


def test_source_val_accuracy():
    logits = one_hot_logits([0, 1, 2, 2], 3)
    assert source_val_accuracy(logits, torch.tensor([0, 1, 2, 0])) == pytest.approx(0.75)


def test_entropy_uniform_and_one_hot():
    k = 10
    assert prediction_entropy(torch.zeros(8, k)) == pytest.approx(math.log(k), abs=1e-5)
    assert prediction_entropy(one_hot_logits([1, 2, 3], k)) == pytest.approx(0.0, abs=1e-5)


def test_im_rewards_confident_and_diverse_predictions():
    k = 4
    diverse = one_hot_logits([0, 1, 2, 3] * 5, k)
    collapsed = one_hot_logits([2] * 20, k)
    uniform = torch.zeros(20, k)
    assert information_maximisation(diverse) == pytest.approx(math.log(k), abs=1e-5)
    assert information_maximisation(collapsed) == pytest.approx(0.0, abs=1e-5)
    assert information_maximisation(uniform) == pytest.approx(0.0, abs=1e-5)
    # Entropy alone cannot tell a collapse from a good model; IM can.
    assert prediction_entropy(collapsed) == pytest.approx(prediction_entropy(diverse), abs=1e-5)
    scores = [information_maximisation(x) for x in (collapsed, diverse)]
    assert best_index(scores, DIRECTIONS["im"]) == 1


def test_bnm_known_values():
    n, k = 20, 4
    # Balanced one-hot: k orthogonal rows of length sqrt(n/k): nuclear norm sqrt(n k).
    balanced = one_hot_logits([0, 1, 2, 3] * 5, k)
    assert batch_nuclear_norm(balanced) == pytest.approx(math.sqrt(n * k) / n, rel=1e-4)
    # Uniform: rank one, singular value sqrt(n / k).
    assert batch_nuclear_norm(torch.zeros(n, k)) == pytest.approx(1 / math.sqrt(n * k), rel=1e-4)
    collapsed = one_hot_logits([0] * n, k)
    assert batch_nuclear_norm(collapsed) == pytest.approx(1 / math.sqrt(n), rel=1e-4)
    scores = [batch_nuclear_norm(x) for x in (torch.zeros(n, k), collapsed, balanced)]
    assert best_index(scores, DIRECTIONS["bnm"]) == 2


def test_snd_tight_clusters_beat_noise():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 32, generator=gen) * 5
    clusters = centres.repeat_interleave(50, 0) + 0.01 * torch.randn(100, 32, generator=gen)
    noise = torch.randn(100, 32, generator=gen)
    tight, scattered = soft_neighbourhood_density(clusters), soft_neighbourhood_density(noise)
    # Two clusters of 50 near-identical points: each row spreads evenly over its 49 twins.
    assert tight == pytest.approx(math.log(49), abs=0.05)
    assert scattered < tight - 1.0
    assert best_index([scattered, tight], DIRECTIONS["snd"]) == 1


def test_density_ratio_and_dev_on_a_known_shift():
    # Source: half at x=-1 (A), half at x=+1 (B); target: 1/4 at A, 3/4 at B.
    # True ratios p_t/p_s: 0.5 at A, 1.5 at B. Loss 0 on A, 1 on B: target loss 0.75.
    src = torch.tensor([-1.0] * 200 + [1.0] * 200)[:, None]
    tgt = torch.tensor([-1.0] * 100 + [1.0] * 300)[:, None]
    w = density_ratio(src, tgt, l2=1e-6)
    assert w[:200].mean().item() == pytest.approx(0.5, abs=0.02)
    assert w[200:].mean().item() == pytest.approx(1.5, abs=0.02)
    losses = torch.tensor([0.0] * 200 + [1.0] * 200)
    assert deep_embedded_validation(src, losses, tgt, l2=1e-6) == pytest.approx(0.75, abs=0.02)
    # Unweighted source validation loss would say 0.5: DEV corrects towards the target.
    no_shift = deep_embedded_validation(src, losses, src.clone(), l2=1e-6)
    assert no_shift == pytest.approx(0.5, abs=0.02)


def test_proxy_a_distance_extremes():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=gen)
    same = torch.randn(400, 8, generator=gen)
    far = torch.randn(400, 8, generator=gen) + 10.0
    assert proxy_a_distance(a, far) == pytest.approx(2.0)
    assert abs(proxy_a_distance(a, same)) < 0.4
    assert proxy_a_distance(a, same, seed=3) == proxy_a_distance(a, same, seed=3)


def fake_outputs(n_val=300, n_tgt=500, k=5, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(source_val_logits=torch.randn(n_val, k, generator=gen),
                source_val_labels=torch.randint(0, k, (n_val,), generator=gen),
                source_val_feats=torch.randn(n_val, d, generator=gen),
                target_logits=torch.randn(n_tgt, k, generator=gen) * 3,
                target_feats=torch.randn(n_tgt, d, generator=gen) + 0.5)


def test_compute_validators_all_keys_and_caps():
    out = compute_validators(**fake_outputs())
    assert set(out) == set(VALIDATORS)
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    # Capped: 5,000 target points cost the same as 200 (the same seeded subsample size).
    big = fake_outputs(n_tgt=5000)
    capped = compute_validators(**big, max_points=200)
    assert capped == compute_validators(**big, max_points=200)
    assert capped["entropy"] != pytest.approx(compute_validators(**big)["entropy"], abs=1e-9)


def test_compute_validators_without_source_val_and_under_inference_mode():
    out = fake_outputs()
    with torch.inference_mode():
        partial = compute_validators(None, None, None, out["target_logits"], out["target_feats"])
        full = compute_validators(**out)
    assert set(partial) == {"entropy", "im", "snd", "bnm"}
    assert "dev" in full


def test_no_validator_takes_target_labels():
    params = inspect.signature(compute_validators).parameters
    assert not [p for p in params if "target" in p and "label" in p]
    for name, (fn, _, needs) in VALIDATORS.items():
        assert not [n for n in needs if "target" in n and "label" in n], name
        assert not [p for p in inspect.signature(fn).parameters
                    if "target" in p and "label" in p], name


def _pair(n_src=200, n_tgt=120, k=4, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def split(n):
        return Split(torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=gen),
                     torch.randint(0, k, (n,), generator=gen))

    return DomainPair(split(n_src), split(n_tgt).images, split(80), split(n_tgt), k)


def _evaluate(pair, model):
    """What a trainer evaluation would pass: outputs on source val and target test images."""
    view = pair.eval_view
    with torch.no_grad():
        sv, tg = model[0](view(pair.source_val.images)), model[0](view(pair.target_test.images))
        return compute_validators(model[1](sv), pair.source_val.labels, sv,
                                  model[1](tg), tg)


def test_poisoned_target_labels_change_nothing():
    torch.manual_seed(0)
    model = (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8)),
             torch.nn.Linear(8, 4))
    pair = hold_out_source_val(_pair(), 0.2, seed=1)
    poisoned = dataclasses.replace(
        pair, target_test=Split(pair.target_test.images,
                                torch.randint(0, 4, pair.target_test.labels.shape)),
        target_train_labels=torch.full((120,), -1))
    assert _evaluate(pair, model) == _evaluate(poisoned, model)


# ------------------------------------------------------------------------ source val split
def test_split_is_disjoint_stratified_and_seeded():
    labels = torch.arange(1000) % 10
    train, val = source_val_indices(labels, 0.1, seed=0)
    assert len(val) == 100 and len(train) == 900
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))
    assert torch.bincount(labels[val], minlength=10).tolist() == [10] * 10
    again, _ = source_val_indices(labels, 0.1, seed=0)
    other, _ = source_val_indices(labels, 0.1, seed=1)
    assert torch.equal(train, again) and not torch.equal(train, other)


def test_hold_out_source_val_pair_and_sampling():
    pair = _pair()
    # Tag every source image with its index so the test can tell which ones were kept.
    tags = torch.arange(200, dtype=torch.uint8)[:, None, None, None].expand(-1, 1, 4, 4)
    pair = dataclasses.replace(pair, source_train=Split(tags.clone(), pair.source_train.labels))
    held = hold_out_source_val(pair, 0.25, seed=0)
    train_ids = set(held.source_train.images[:, 0, 0, 0].tolist())
    val_ids = set(held.source_val.images[:, 0, 0, 0].tolist())
    assert train_ids.isdisjoint(val_ids) and len(train_ids | val_ids) == 200
    assert len(held.source_val.labels) == pytest.approx(50, abs=4)
    assert held.sizes()["source_val"] == len(val_ids)
    assert held.sizes()["source_train"] == len(train_ids)
    # The trainer samples source batches from source_train only: over two epochs every
    # sampled image is a training image, never a validation one.
    sampler = EpochSampler(len(held.source_train.labels), 32, "cpu", seed=0)
    seen = {int(i) for _ in range(20) for i in held.source_train.gather(sampler())[:, 0, 0, 0]}
    assert seen == train_ids
    # Other fields and behaviour survive; to() moves the held-out split too.
    assert held.num_classes == 4 and torch.equal(held.target_test.labels,
                                                 pair.target_test.labels)
    assert held.to("cpu").source_val is not None


def test_fraction_zero_disables_and_bad_fraction_is_a_config_error():
    from da_train.config import ConfigError

    pair = _pair()
    same = hold_out_source_val(pair, 0.0, seed=0)
    assert same.source_val is None and len(same.source_train.labels) == 200
    assert DEFAULT_FRACTION == 0 and 0 < SELECTION_FRACTION < 0.5
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError, match="data.source_val"):
            hold_out_source_val(pair, bad, seed=0)


# ------------------------------------------------------------------------ real data
def test_real_mnist_split_and_proxy_a_distance(real_root):
    from da_train.data.mnist import load_mnist

    train, test = load_mnist(real_root, "train", False), load_mnist(real_root, "test", False)
    pair = DomainPair(train, test.images, test, test, 10)
    held = hold_out_source_val(pair, SELECTION_FRACTION, seed=0)
    assert len(held.source_val.labels) == pytest.approx(6000, abs=5)
    assert len(held.source_train.labels) + len(held.source_val.labels) == 60000
    share = torch.bincount(held.source_val.labels, minlength=10) / torch.bincount(
        train.labels, minlength=10)
    assert torch.allclose(share, torch.full((10,), 0.1), atol=0.001)
    # Raw pixels: two disjoint halves of MNIST train are one domain (PAD near 0); train vs
    # inverted digits are two (PAD 2). (Train vs test measures about 0.3: other writers.)
    pixels = train.images[:4000].flatten(1).float()
    assert abs(proxy_a_distance(pixels[:2000], pixels[2000:])) < 0.15
    assert proxy_a_distance(pixels[:2000], 255 - test.images[:2000].flatten(1).float()) > 1.9


def test_a_pair_subclass_keeps_its_views():
    @dataclasses.dataclass
    class Flipped(DomainPair):
        def train_view(self, images):
            return normalise(images.flip(-1), self.normalize)

    base = _pair()
    pair = Flipped(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    held = hold_out_source_val(pair, 0.1, seed=0)
    assert isinstance(held, Flipped) and held.source_val is not None
    x = held.source_train.images[:2]
    assert torch.equal(held.train_view(x), normalise(x.flip(-1)))
