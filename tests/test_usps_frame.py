"""data.usps_frame: a 16x16 USPS digit fills its frame, an MNIST digit sits in a 20x20 box
of its 28x28 frame; ``pad`` gives USPS MNIST's scale and margins, ``resize`` (ADDA's, the
default) stretches it over the whole frame."""

import os

import pytest
import torch
from toy import compose_config

from da_train.data.digits import to_common


def test_pad_puts_a_frame_filling_digit_in_the_mnist_box():
    usps_like = torch.full((3, 1, 16, 16), 200, dtype=torch.uint8)  # ink to every edge
    padded = to_common(usps_like, 28, 1, "pad")
    resized = to_common(usps_like, 28, 1, "resize")
    assert padded.shape == resized.shape == (3, 1, 28, 28)
    ink_rows = (padded[0, 0] > 0).any(1).nonzero().flatten()
    assert (ink_rows.min().item(), ink_rows.max().item()) == (4, 23)  # a 20-pixel box, centred
    assert (resized[0, 0] > 0).all()  # resize: ink up to the edges
    assert to_common(usps_like, 32, 3, "pad").shape == (3, 3, 32, 32)


def test_a_wrong_usps_frame_is_refused_with_the_choices():
    from da_train.config import validate
    from da_train.errors import ConfigError

    cfg = compose_config(["data=mnist_usps", "data.usps_frame=crop"])
    with pytest.raises(ConfigError, match=r"data.usps_frame.*resize.*pad"):
        validate(cfg)


@pytest.mark.skipif(not os.environ.get("DA_DATA_ROOT"), reason="needs DA_DATA_ROOT (real USPS)")
def test_real_usps_with_pad_has_mnist_margins():
    from da_train.data import load_pair

    cfg = compose_config(["data=mnist_usps", "data.usps_frame=pad", "data.download=false"])
    pair = load_pair(cfg.data, with_target_labels=True, seed=0)
    ink = (pair.target_train_images.float().mean((0, 1, 3)) > 0).nonzero().flatten()
    assert ink.min().item() >= 4 and ink.max().item() <= 23
    assert pair.source_train.images.shape[1:] == pair.target_train_images.shape[1:] == (1, 28, 28)
