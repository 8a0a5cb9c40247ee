import pytest
import torch

from da_train.config import ConfigError
from da_train.models import build_backbone

IMAGE_SHAPES = [(3, 32, 32), (1, 28, 28)]
FEATURES = {  # (backbone, input shape) -> feature_dim
    ("dann_digits", (3, 32, 32)): 48 * 5 * 5,
    ("dann_digits", (1, 28, 28)): 48 * 4 * 4,
    ("dann_digits_bn", (3, 32, 32)): 48 * 5 * 5,
    ("dann_digits_bn", (1, 28, 28)): 48 * 4 * 4,
    ("lenet", (3, 32, 32)): 512,
    ("lenet", (1, 28, 28)): 512,
    ("mlp", (3, 32, 32)): 32,
    ("mlp", (1, 28, 28)): 32,
    ("mlp", (2,)): 32,
}


@pytest.mark.parametrize(("name", "shape"), list(FEATURES))
def test_output_shapes_and_feature_dim(name, shape):
    net = build_backbone(name, 7, shape)
    x = torch.randn(5, *shape)
    feats = net.features(x)
    assert net.feature_dim == FEATURES[name, shape]
    assert feats.shape == (5, net.feature_dim)
    assert net.classifier(feats).shape == (5, 7)


def test_dann_digits_keeps_the_paper_layers():
    net = build_backbone("dann_digits", 10, (3, 32, 32))
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 32, (5, 5)), (32, 48, (5, 5))]
    linears = [m for m in net.classifier if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1200, 100), (100, 100),
                                                                  (100, 10)]


def test_lenet_layers_on_mnist():
    net = build_backbone("lenet", 2, (1, 28, 28))
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 32), (32, 64)]
    fc = [m for m in net.features if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in fc] == [(64 * 4 * 4, 512)]
    assert (net.classifier.in_features, net.classifier.out_features) == (512, 2)


def test_unknown_backbone_lists_choices():
    with pytest.raises(ConfigError) as err:
        build_backbone("x", 10, (3, 32, 32))
    assert str(err.value) == ("Unknown backbone 'x'; choices: cnn1d, dann_digits, "
                              "dann_digits_bn, dirtt_digits, lenet, mlp, resnet18, resnet50.")


def test_dann_digits_bn_is_the_paper_network_with_batchnorm_in_the_features_only():
    plain, bn = build_backbone("dann_digits", 10, (3, 32, 32)), build_backbone(
        "dann_digits_bn", 10, (3, 32, 32))
    layers = [type(m).__name__ for m in bn.features]
    assert layers == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
                      "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Flatten"]
    assert [m.num_features for m in bn.features if isinstance(m, torch.nn.BatchNorm2d)] == [
        32, 48]
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in bn.classifier)
    shapes = lambda net: [p.shape for p in net.parameters() if p.dim() > 1]  # noqa: E731
    assert shapes(bn) == shapes(plain)  # same convolutions and linear layers
    # BatchNorm fixes the feature scale: scaling the input does not change the features
    bn.train()
    x = torch.randn(16, 3, 32, 32)
    assert torch.allclose(bn.features(x), bn.features(10 * x), atol=1e-4)


@pytest.mark.parametrize("name", ["dann_digits", "dann_digits_bn", "lenet"])
def test_conv_backbones_need_images(name):
    with pytest.raises(ConfigError, match="needs image inputs .*backbone=mlp"):
        build_backbone(name, 2, (2,))
    with pytest.raises(ConfigError, match=r"cannot take inputs of shape \(1, 8, 8\)"):
        build_backbone(name, 2, (1, 8, 8))


# ---------------------------------------------------------------------------- issue 14
def test_cnn1d_on_signals_and_rejects_images():
    net = build_backbone("cnn1d", 4, (2, 100))
    assert net.feature_dim == 128
    assert net.classifier(net.features(torch.randn(3, 2, 100))).shape == (3, 4)
    with pytest.raises(ConfigError, match="cnn1d' needs C x L signals.*\\(3, 32, 32\\)"):
        build_backbone("cnn1d", 4, (3, 32, 32))


def test_resnet18_from_scratch_with_bottleneck():
    net = build_backbone({"name": "resnet18", "pretrained": False, "bottleneck": 256}, 5,
                         (3, 32, 32))
    feats = net.features(torch.randn(2, 3, 32, 32))
    assert net.feature_dim == 256 and feats.shape == (2, 256) and (feats >= 0).all()
    assert isinstance(net.features[2], torch.nn.BatchNorm1d)
    assert net.classifier(feats).shape == (2, 5)
    from da_train.optim import PretrainedParameter

    assert not any(isinstance(p, PretrainedParameter) for p in net.parameters())


def test_resnet_rejects_digits_and_digit_nets_reject_photos():
    with pytest.raises(ConfigError, match="needs RGB images of at least 32x32"):
        build_backbone({"name": "resnet18", "pretrained": False}, 10, (1, 28, 28))
    with pytest.raises(ConfigError, match="digit network .*224x224.*resnet18"):
        build_backbone("lenet", 10, (3, 224, 224))


def _fake_cached_weights(monkeypatch):
    """torchvision's resnet18 as if the ImageNet weights were in TORCH_HOME (no download)."""
    import torchvision

    real = torchvision.models.resnet18
    seen = []
    monkeypatch.setattr(torchvision.models, "resnet18",
                        lambda weights=None: seen.append(weights) or real(weights=None))
    return seen


def test_pretrained_layers_get_a_tenth_of_the_lr_also_after_deepcopy(monkeypatch):
    import copy

    from da_train.optim import PretrainedParameter, build_optimizer

    seen = _fake_cached_weights(monkeypatch)
    net = build_backbone({"name": "resnet18", "pretrained": True}, 3, (3, 64, 64))
    assert str(seen[0]) == "ResNet18_Weights.IMAGENET1K_V1"
    trunk, head = net.features[0], [net.features[1], net.classifier]
    assert all(isinstance(p, PretrainedParameter) for p in trunk.parameters())
    assert not any(isinstance(p, PretrainedParameter) for m in head for p in m.parameters())
    settings = {"type": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0,
                "pretrained_lr_mult": 0.1}
    opt = build_optimizer(net.parameters(), settings)
    lrs = {len(g["params"]): g["lr"] for g in opt.param_groups}
    assert sorted(lrs.values()) == pytest.approx([0.001, 0.01])
    n_trunk = len(list(trunk.parameters()))
    assert lrs[n_trunk] == pytest.approx(0.001)
    copied = copy.deepcopy(net.features)  # ADDA's target encoder keeps the mark
    assert isinstance(next(copied[0].parameters()), PretrainedParameter)
    # old settings without the key: one lr for all
    plain = {k: v for k, v in settings.items() if k != "pretrained_lr_mult"}
    assert {g["lr"] for g in build_optimizer(net.parameters(), plain).param_groups} == {0.01}


def test_offline_without_cached_weights_names_the_file(monkeypatch, tmp_path):
    import urllib.error

    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(weights=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models, "resnet50", offline)
    with pytest.raises(ConfigError) as err:
        build_backbone({"name": "resnet50", "pretrained": True}, 3, (3, 224, 224))
    msg = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in msg
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in msg
    assert "backbone.pretrained=false" in msg
