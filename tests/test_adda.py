"""ADDA's two phases and self-training's label hygiene, through the real Trainer."""

import torch
import torch.nn.functional as F
from toy import moons_pair, run_steps, toy_config, toy_trainer

from da_train.methods import METHODS, Batch, build_method
from da_train.models import build_backbone
from da_train.trainer import Trainer


def adda_trainer(tmp_path, pretrain=30, adapt=20):
    return toy_trainer(toy_config("adda", pretrain_steps=pretrain, adapt_steps=adapt), tmp_path)


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_adda_phases_copy_freeze_and_train_target_encoder(tmp_path):
    trainer = adda_trainer(tmp_path)
    method = trainer.method
    run_steps(trainer, 30)  # stage 1
    source_encoder, classifier = snapshot(method.backbone.features), \
        snapshot(method.backbone.classifier)
    run_steps(trainer, 1)  # first adaptation step: copy, then one update
    # the copy happened before the first encoder update: check against a fresh copy
    fresh = adda_trainer(tmp_path / "b")
    fresh.method.load_state_dict(method.state_dict())
    fresh.method.start_phase(fresh.phases[1])
    for key, value in fresh.method.target_encoder.state_dict().items():
        assert torch.equal(value, source_encoder[key])
    run_steps(trainer, 19)
    for key, value in method.backbone.features.state_dict().items():
        assert torch.equal(value, source_encoder[key]), "source encoder changed in stage 2"
    for key, value in method.backbone.classifier.state_dict().items():
        assert torch.equal(value, classifier[key]), "classifier changed in stage 2"
    changed = [not torch.equal(v, source_encoder[k])
               for k, v in method.target_encoder.state_dict().items()]
    assert any(changed), "target encoder did not train"
    assert set(trainer.optimizers) == {"disc", "encoder"}
    assert trainer.optimizers["encoder"].defaults["betas"] == (0.5, 0.999)
    assert trainer.optimizers["disc"].defaults["lr"] == 2e-4


def test_adda_encoder_step_uses_inverted_labels(tmp_path):
    method = adda_trainer(tmp_path).method
    method.start_phase(adda_trainer(tmp_path / "b").phases[1])
    x = torch.randn(16, 2)
    batch = Batch(torch.randn(16, 2), torch.zeros(16, dtype=torch.long), x)
    logits = method.discriminator(method.target_encoder(x)).squeeze(1)
    out = method.training_step("encoder", batch, 0.0)
    assert torch.allclose(out.loss, F.binary_cross_entropy_with_logits(logits,
                                                                       torch.ones(16)))
    disc = method.training_step("disc", batch, 0.0)
    feats = torch.cat([method.backbone.features(batch.xs), method.target_encoder(x)])
    expect = F.binary_cross_entropy_with_logits(
        method.discriminator(feats).squeeze(1), torch.cat([torch.ones(16), torch.zeros(16)]))
    assert torch.allclose(disc.loss, expect)


def test_adda_checkpoint_holds_both_encoders(tmp_path):
    trainer = adda_trainer(tmp_path, pretrain=5, adapt=5)
    trainer.fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["method"]
    assert any(k.startswith("backbone.features.") for k in state)
    assert any(k.startswith("target_encoder.") for k in state)
    assert bool(state["adapted"])


class PoisonLabels(torch.Tensor):
    """A tensor that fails the test on any use: stands in for target training labels."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:  # moving to the device is not reading
            return args[0]
        raise AssertionError(f"target training labels were read ({func})")


def test_uda_methods_never_read_target_training_labels(tmp_path):
    for name, method_cls in METHODS.items():
        if name == "target_only":
            assert method_cls.needs_target_labels
            continue
        assert not method_cls.needs_target_labels, name
        pair = moons_pair()
        pair.target_train_labels = torch.zeros(600, dtype=torch.long).as_subclass(PoisonLabels)
        extra = {"pretrain_steps": 3, "adapt_steps": 3} if name == "adda" else {}
        if name == "self_training":
            extra = {"start": 0.0, "threshold": 0.0}
        cfg = toy_config(name, steps=6, **extra)
        method = build_method(cfg.method, build_backbone("mlp", 2, (2,)), 2)
        results = Trainer(cfg, method, pair, tmp_path / name, torch.device("cpu")).fit()
        assert results["steps"] == 6, name


def test_adda_on_logits_adapts_a_copy_of_the_whole_network(tmp_path):
    """method.disc_input=logits (the released code): the discriminator sees the class scores,
    the target copy includes the classifier and predicts the target by itself."""
    trainer = toy_trainer(toy_config("adda", pretrain_steps=30, adapt_steps=20,
                                     disc_input="logits"), tmp_path)
    method = trainer.method
    assert method.discriminator[0].in_features == 2  # the moons' 2 classes
    run_steps(trainer, 30)
    classifier = snapshot(method.backbone.classifier)
    x = torch.randn(8, 2)
    before = method.predict_target(x)
    assert torch.equal(before, method.backbone.classifier(method.backbone.features(x)))
    run_steps(trainer, 20)
    for key, value in method.backbone.classifier.state_dict().items():
        assert torch.equal(value, classifier[key]), "source classifier changed in stage 2"
    copied_head = method.target_encoder[1].state_dict()
    assert any(not torch.equal(v, classifier[k]) for k, v in copied_head.items()), \
        "the target copy's classifier did not train"
    assert torch.equal(method.predict_target(x), method.target_encoder(x))
    assert method.embed(x, "target").shape[1] == method.backbone.feature_dim
