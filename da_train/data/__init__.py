"""Datasets as device-resident uint8 tensors (float tensors for arrays).

The pairs (``data.name``, registry :data:`.pairs.PAIRS`; one schema per family in
:mod:`.schemas`):

* digit pairs, one builder (:func:`.digits.digit_pair`): ``mnist_mnistm`` (MNIST -> MNIST-M,
  both uint8 ``N x 3 x 32 x 32``: MNIST zero-padded from 28 to 32, its grey repeated),
  ``mnist_usps``, ``usps_mnist``, ``svhn_mnist`` and ``digits`` (any two of mnist, mnistm,
  usps, svhn), each at one common input;
* ``mnist01_23``: MNIST digits 0/1 -> MNIST digits 2/3 (labels 2 -> 0, 3 -> 1), the ADDA
  blog's toy shift; uint8 ``N x 1 x 28 x 28``, no padding, 2 classes;
* ``folders`` (your images, :mod:`.folders`) and ``arrays`` (your ``.npz`` arrays).

Batches are drawn by index on the training device and turned into floats there, with one
normalisation shared by the two domains (``data.normalize``; ``global`` is
``x = (uint8 / 255 - 0.5) / 0.5``, the DANN setup), so no domain gets its own statistics.

Target training labels are never handed to a domain-adaptation method:
:class:`DomainPair` carries them only when ``load_pair(..., with_target_labels=True)`` asks for
them (the ``target_only`` oracle); otherwise ``target_train_labels`` is ``None``.
"""

from .bsds import (
    BSDS_TRAIN_COUNT,
    BSDS_TRAIN_MEMBER,
    BSDS_URL,
    download_bsds_train,
    load_bsds_train,
)
from .core import DataError, DomainPair, Split, normalise
from .mnist import (
    MNIST_FILES,
    download_mnist,
    load_mnist,
    mnist_to_rgb32,
    read_idx,
    select_digits,
)
from .mnistm import blend_mnistm, build_mnistm, load_mnistm_folder
from .pairs import PAIRS, load_pair

__all__ = [
    "BSDS_TRAIN_COUNT", "BSDS_TRAIN_MEMBER", "BSDS_URL", "MNIST_FILES", "PAIRS", "DataError",
    "DomainPair", "Split", "blend_mnistm", "build_mnistm", "download_bsds_train",
    "download_mnist", "load_bsds_train", "load_mnist", "load_mnistm_folder", "load_pair",
    "mnist_to_rgb32", "normalise", "read_idx", "select_digits",
]
