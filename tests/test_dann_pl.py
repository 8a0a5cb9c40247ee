"""The dann_pl preset (DANN + entropy + pseudo-labels): exactly dann_ent before the start,
dann_ent plus the masked pseudo-label cross-entropy after it, and no target label read."""

import pytest
import torch
import torch.nn.functional as F
from toy import full_step, method_config, toy_batch

from da_train.methods import Batch, build_method
from da_train.models import build_backbone
from da_train.regularizers import build_regularizers, merged_reg_config, regularizer_eval_metrics


def method_with(name, **options):
    torch.manual_seed(0)
    return build_method(method_config(name, **options), build_backbone("mlp", 3, (2,)), 3)


def pl_batch():
    return toy_batch(seed=1, n=8, m=40, num_classes=3, target_scale=3.0, target_shift=0.0)


def expected_pl_loss(method, xt, threshold):
    with torch.no_grad():
        logits = method.backbone.classifier(method.backbone.features(xt))
        confidence, labels = logits.softmax(1).max(1)
        mask = (confidence >= threshold).float()
        return float((F.cross_entropy(logits, labels, reduction="none") * mask).mean()), \
            float(mask.mean())


@pytest.mark.parametrize("progress", [0.1, 0.5, 1.0])
def test_loss_is_dann_ent_plus_pseudo_labels_after_pl_start(progress):
    batch = pl_batch()
    ent = method_with("dann_ent", reg__entropy__weight=0.1)
    pl = method_with("dann_pl", reg__entropy__weight=0.1, reg__pl__weight=2.0,
                     reg__pl__threshold=0.5, reg__pl__start=0.3)
    pl.load_state_dict(ent.state_dict())
    with torch.no_grad():
        base = full_step(ent, batch, progress)
        out = full_step(pl, batch, progress)
    loss_pl, share = expected_pl_loss(pl, batch.xt, 0.5)
    assert 0 < share < 1  # the toy batch has confident and unconfident samples
    weight = 2.0 if progress >= 0.3 else 0.0
    assert out.logs["pl_weight"] == weight
    assert float(out.logs["pl_share"]) == pytest.approx(share)
    assert float(out.logs["loss_pl"]) == pytest.approx(loss_pl, rel=1e-5)
    assert float(out.loss) == pytest.approx(float(base.loss) + weight * loss_pl, rel=1e-5)


def test_pseudo_label_gradient_reaches_the_target_inputs_only_after_pl_start():
    pl = method_with("dann_pl", weight=0.0, reg__entropy__weight=0.0, reg__pl__threshold=0.0,
                     reg__pl__start=0.5)
    grads = {}
    for progress in (0.2, 0.8):
        xt = pl_batch().xt.requires_grad_()
        batch = Batch(torch.randn(5, 2), torch.zeros(5, dtype=torch.long), xt)
        full_step(pl, batch, progress).loss.backward()
        grads[progress] = xt.grad.abs().sum() if xt.grad is not None else 0.0
    assert grads[0.2] == 0  # no GRL, no entropy: before the start nothing
    # touches the target
    assert grads[0.8] > 0


def test_eval_metrics_measure_the_pseudo_labels_on_labelled_test_data():
    pl = method_with("dann_pl", reg__pl__threshold=0.9)
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0.1, 0, 0], [0, 0, 5.0]])
    labels = torch.tensor([0, 2, 1, 2])
    regs = build_regularizers(merged_reg_config({"method": pl.cfg}))
    metrics = regularizer_eval_metrics(regs, logits, labels)
    assert float(metrics["pseudo_label_share"]) == pytest.approx(0.75)
    assert float(metrics["pseudo_label_acc"]) == pytest.approx(2 / 3)
