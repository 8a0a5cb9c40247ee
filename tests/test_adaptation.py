"""Real adaptation tests that can fail: each UDA method must beat source-only on a toy shift.

The shift is two moons rotated by 35 degrees (source: unrotated); the backbone is a small MLP.
Seeds, step counts and margins were checked on several seeds (see each assertion).
"""

import pytest
import torch
from toy import toy_config, train

from da_train.data import DomainPair, Split, normalise
from da_train.methods import build_method
from da_train.models import build_backbone
from da_train.trainer import Trainer


@pytest.fixture(scope="module")
def source_only(tmp_path_factory):
    return train(toy_config("source_only"), tmp_path_factory.mktemp("source_only"))


def test_source_only_is_fooled_by_the_rotation(source_only):
    assert source_only["source_acc"] > 0.95 and source_only["target_acc"] < 0.9


def test_dann_beats_source_only(source_only, tmp_path):
    dann = train(toy_config("dann", lam=1.0), tmp_path)
    assert dann["source_acc"] > 0.9
    assert dann["target_acc"] > source_only["target_acc"] + 0.05, (source_only, dann)


def test_dann_ent_beats_source_only(source_only, tmp_path):
    model = train(toy_config("dann_ent", lam=1.0, ent_weight=0.1), tmp_path)
    assert model["source_acc"] > 0.9
    assert model["target_acc"] > source_only["target_acc"] + 0.05, (source_only, model)


def test_dann_pl_beats_source_only(source_only, tmp_path):
    model = train(toy_config("dann_pl", lam=1.0, ent_weight=0.1, threshold=0.95, pl_start=0.3),
                  tmp_path)
    assert model["source_acc"] > 0.9
    assert model["target_acc"] > source_only["target_acc"] + 0.05, (source_only, model)
    assert 0.5 <= model["pseudo_label_acc"] <= 1


def test_self_training_beats_source_only(source_only, tmp_path):
    st = train(toy_config("self_training", lam=1.0, threshold=0.9, warmup_steps=500), tmp_path)
    assert st["source_acc"] > 0.9
    assert st["target_acc"] > source_only["target_acc"] + 0.05, (source_only, st)
    assert 0.5 <= st["pseudo_label_acc"] <= 1 and 0 < st["pseudo_label_share"] <= 1


def test_adda_beats_source_only(source_only, tmp_path):
    cfg = toy_config("adda", pretrain_steps=1500, adapt_steps=1500, lr=0.05)
    adda = train(cfg, tmp_path)
    assert adda["phases"] == {"pretrain": 1500, "adapt": 1500} and adda["steps"] == 3000
    assert adda["target_acc"] > source_only["target_acc"] + 0.05, (source_only, adda)


@pytest.mark.parametrize("mode", ["global", "instance"])
def test_trainer_normalises_batches_and_evaluation_with_data_normalize(tmp_path, mode):
    g = torch.Generator().manual_seed(0)

    def split(n):
        return Split(torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8),
                     torch.randint(0, 2, (n,), generator=g))

    pair = DomainPair(split(32), split(32).images, split(16), split(16), 2, normalize=mode)
    cfg = toy_config("source_only", steps=2)
    method = build_method(cfg.method, build_backbone("mlp", 2, (3, 8, 8)))
    trainer = Trainer(cfg, method, pair, tmp_path, torch.device("cpu"))
    xt = trainer.sample().xt
    per_channel_mean = xt.mean(dim=(2, 3)).abs().max()
    if mode == "instance":
        assert per_channel_mean < 1e-5
    else:
        assert per_channel_mean > 1e-3 and xt.min() >= -1 and xt.max() <= 1
    assert torch.equal(trainer.data.eval_view(pair.target_test.images), normalise(
        pair.target_test.images, mode))
