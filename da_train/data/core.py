"""What every dataset module shares: the split/pair containers, the data error and the
on-device normalisation."""

from __future__ import annotations

import dataclasses
import http.client
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError  # noqa: F401  (the data package's error, from the ground floor)

# What a failed download can raise: URLError/HTTPError/socket errors are OSErrors, torchvision
# reports a failed md5 check as RuntimeError, a dropped connection can be an HTTPException.
DOWNLOAD_ERRORS = (OSError, RuntimeError, http.client.HTTPException)


@dataclass
class Split:
    """Images (uint8, N x C x H x W) and integer labels of one split of one domain."""

    images: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """The images at ``index`` (a batch). index_select: the same gather as images[idx],
        about 10x cheaper per call on CPU. A dataset kept in host memory overrides this."""
        return self.images.index_select(0, index)


@dataclass
class DomainPair:
    """What the trainer sees: labelled source, unlabelled target train, and test splits.

    ``target_train_labels`` is ``None`` unless the oracle asked for it (see :func:`load_pair`).
    ``train_view`` / ``eval_view`` turn a gathered uint8 batch into the network's float input
    (here: :func:`normalise`; a pair with augmentation does it there, on the device, batched).
    """

    source_train: Split
    target_train_images: torch.Tensor
    source_test: Split
    target_test: Split
    num_classes: int
    target_train_labels: torch.Tensor | None = None
    class_names: tuple[str, ...] | None = None
    normalize: str = "global"
    #: labelled source images held out of training for validators (data/source_val.py)
    source_val: Split | None = None
    #: what results.json records about the data (``data_roots``: the resolved folders read;
    #: ``skipped_images``: files left out by ``data.on_error=skip``), set by the loaders
    records: dict = dataclasses.field(default_factory=dict)

    def train_view(self, images: torch.Tensor) -> torch.Tensor:
        """A training batch as network input."""
        return normalise(images, self.normalize)

    def eval_view(self, images: torch.Tensor) -> torch.Tensor:
        """An evaluation batch as network input."""
        return normalise(images, self.normalize)

    def sizes(self) -> dict[str, int]:
        """Number of samples per split (results.json ``sizes``)."""
        sizes = {"source_train": len(self.source_train.labels),
                 "source_test": len(self.source_test.labels),
                 "target_train": len(self.target_train_images),
                 "target_test": len(self.target_test.labels)}
        if self.source_val is not None:
            sizes["source_val"] = len(self.source_val.labels)
        return sizes

    def names(self) -> list[str]:
        """Class names (results.json ``class_names``); the class index when none are known."""
        return list(self.class_names or (str(i) for i in range(self.num_classes)))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one source image ((d,) for vector toy data): sizes the backbone."""
        return tuple(self.source_train.images.shape[1:])

    def to(self, device) -> DomainPair:
        labels = self.target_train_labels
        return dataclasses.replace(
            self, source_train=self.source_train.to(device),
            target_train_images=self.target_train_images.to(device),
            source_test=self.source_test.to(device), target_test=self.target_test.to(device),
            target_train_labels=None if labels is None else labels.to(device),
            source_val=None if self.source_val is None else self.source_val.to(device))


def normalise(images: torch.Tensor, mode: str = "global") -> torch.Tensor:
    """uint8 images -> float; float inputs (toy data) pass through unchanged.

    ``global`` (default, the DANN setup): ``x / 127.5 - 1`` in [-1, 1], the same affine map for
    both domains. ``instance``: then each image's channels are standardised to zero mean and
    unit variance over their pixels, the "instance-normalised input" of VADA / DIRT-T (Shu et
    al. 2018): it removes each image's own colour cast and contrast, a large part of the
    MNIST -> MNIST-M shift, and needs no statistics from either domain. A flat channel (e.g. an
    all-black image) becomes 0 rather than dividing by zero.
    """
    if images.dtype != torch.uint8:
        return images
    x = images.float().div_(127.5).sub_(1.0)
    if mode == "instance":
        var, mean = torch.var_mean(x, dim=(-2, -1), keepdim=True)
        x = (x - mean) / (var + 1e-6).sqrt()
    return x


def _require_writable(folder: Path, what: str) -> None:
    """Fail before a download starts, not after it, when ``folder`` cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise DataError(
            f"{what} must be downloaded into {folder}, but that folder is not writable ({err}). "
            "Run with data.root=<writable folder> (or set DA_DATA_ROOT to one), or put the "
            "files there by hand."
        ) from err


