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
    assert str(err.value) == ("Unknown backbone 'x'; choices: dann_digits, dann_digits_bn, "
                              "lenet, mlp.")


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
