"""CDAN(+E), MCC, Deep CORAL, BNM and VADA: each runs through the CLI on MNIST -> MNIST-M and
sends gradients where its paper says (the toy-shift harness is in test_adaptation.py)."""

import json

import pytest
import torch
from cli_helpers import da_train, small
from toy import compose_config, full_step, method_config, toy_batch

from da_train.methods import build_method
from da_train.models import build_backbone

NEW = ["cdan", "mcc", "coral", "bnm", "vada"]


@pytest.mark.parametrize("data", ["mnist_mnistm", "mnist_usps"])
@pytest.mark.parametrize("method", NEW)
def test_runs_through_the_cli_on_both_pairs(tiny_root, tmp_path, method, data):
    out = tmp_path / "run"
    proc = da_train([*small(tiny_root, steps=6, method=method), f"data={data}",
                     "trainer.embed_samples=0", f"hydra.run.dir={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == method and results["steps"] == 6
    assert 0.0 <= results["target_acc"] <= 0.3  # random labels, 6 steps: about chance (0.1)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = set().union(*lines)
    assert {"train/loss_cls", "train/source_acc", "train/feature_norm"} <= logged
    if method == "vada":
        assert {"train/loss_vat_source", "train/loss_vat_target", "train/entropy"} <= logged


def test_cdan_uses_the_randomized_map_on_the_digit_network():
    backbone = build_backbone("dann_digits", 10, (3, 32, 32))  # 1200 features x 10 classes
    cdan = build_method(method_config("cdan"), backbone, 10)
    assert cdan.conditioner.random is not None and cdan.domain_head[0].in_features == 1024
    small_net = build_method(method_config("cdan"), build_backbone("mlp", 2, (2,)), 2)
    assert small_net.conditioner.random is None  # 32 x 2 = 64 <= 4096: exact map
    assert small_net.domain_head[0].in_features == 64


def test_cdan_domain_loss_trains_features_not_the_label_head():
    torch.manual_seed(0)
    cdan = build_method(method_config("cdan", weight=1.0), build_backbone("mlp", 2, (2,)), 2)
    batch = toy_batch()
    out = cdan.training_step("model", batch, progress=0.9)
    loss_dom = out.loss - torch.nn.functional.cross_entropy(out.source_logits, batch.ys)
    loss_dom.backward()
    # the predictions enter the map without gradient: the label head gets none from it
    assert cdan.backbone.classifier.weight.grad.abs().max() == 0
    assert cdan.backbone.features[1].weight.grad.abs().max() > 0
    assert cdan.domain_head[0].weight.grad.abs().max() > 0


def test_cdan_entropy_weights_change_the_domain_loss_only_with_entropy_true():
    torch.manual_seed(0)
    plain = build_method(method_config("cdan"), build_backbone("mlp", 2, (2,)), 2)
    torch.manual_seed(0)
    ent = build_method(method_config("cdan", entropy=True), build_backbone("mlp", 2, (2,)), 2)
    plain.eval(), ent.eval()  # no dropout: the two differ only by the weights
    batch = toy_batch()
    a = plain.training_step("model", batch, 0.5).logs["loss_transfer"]
    b = ent.training_step("model", batch, 0.5).logs["loss_transfer"]
    assert a != b and abs(a - b) < 0.5


@pytest.mark.parametrize("method", ["mcc", "bnm", "coral"])
def test_target_term_reaches_the_backbone(method):
    torch.manual_seed(0)
    m = build_method(method_config(method), build_backbone("mlp", 2, (2,)), 2)
    batch = toy_batch()
    out = full_step(m, batch, 0.5)
    term = out.loss - torch.nn.functional.cross_entropy(out.source_logits, batch.ys)
    assert term.item() != 0
    term.backward()
    assert m.backbone.features[1].weight.grad.abs().max() > 0


def test_vada_loss_is_dann_plus_entropy_plus_both_vats():
    torch.manual_seed(0)
    vada = build_method(method_config("vada", reg__entropy__weight=0.5, reg__vat__weight=0.25,
                                      reg__vat__source_weight=2.0, reg__vat__eps=0.5),
                        build_backbone("mlp", 2, (2,)), 2)
    assert type(vada).__name__ == "DANN" and vada.cfg.core == "dann"
    batch = toy_batch()
    out = full_step(vada, batch, 0.5)
    logs = out.logs
    dann = logs["loss_cls"] + logs["loss_transfer"]
    expected = (dann + 0.5 * logs["entropy"] + 0.25 * logs["loss_vat_target"]
                + 2.0 * logs["loss_vat_source"])
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["loss_vat_source"] > 0 and logs["loss_vat_target"] > 0


def test_presets_of_every_pair_compose():
    for pair in ("mnist_mnistm", "mnist_usps", "usps_mnist"):
        cfg = compose_config([f"experiment=vada_{pair}"])
        assert cfg.method.name == "vada" and cfg.data.normalize == "instance"
        for name in ("cdan", "mcc", "coral", "bnm"):
            cfg = compose_config([f"experiment={name}_{pair}"])
            assert cfg.method.name == name and cfg.data.name == pair
            assert cfg.backbone.name == ("dann_digits" if pair == "mnist_mnistm" else "lenet")
