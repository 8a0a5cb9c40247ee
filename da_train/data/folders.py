"""Your own images: two folders (torchvision's ImageFolder layout ``<root>/<class>/<image>``)
or image lists (``<path> <label>`` per line, as the Office-31 / Office-Home / VisDA /
DomainNet lists), one per domain, over the same classes.

Each domain's images are decoded once into the uint8 cache (:mod:`.cache`); batches are
gathered by index from it and augmented on the device (:mod:`.augment`). Training and test
images of a domain share one cache file, training images first, so both splits are views
of the mapped file (nothing is copied into memory on the CPU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .augment import eval_transform, train_transform
from .cache import cached_images
from .core import DataError, DomainPair, Split
from .schemas import cache_root


@dataclass
class Listing:
    """The image files of one domain split, their labels and (for folders) class names."""

    files: list[Path]
    labels: list[int]
    classes: tuple[str, ...] | None
    origin: str


def scan_folder(root) -> Listing:
    """An ImageFolder tree, read with torchvision's own ``find_classes`` / ``make_dataset``."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = Path(str(root)).expanduser()
    if not root.is_dir():
        raise DataError(f"Image folder not found: {root}. Point data.source.root / "
                        "data.target.root at a folder laid out as <root>/<class>/<image>.")
    try:
        classes, index = find_classes(str(root))
        samples = make_dataset(str(root), index, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:
        raise DataError(
            f"{root} is not an image folder in the <root>/<class>/<image> layout: {err}. "
            "Every class folder needs at least one image: put images into the empty class "
            "folders or delete them (in both domains: source and target must keep the same "
            "classes); a folder without class subfolders needs one level more, "
            "<root>/<class>/<image>.") from err
    return Listing([Path(p) for p, _ in samples], [y for _, y in samples], tuple(classes),
                   str(root))


def read_list(list_path, base=None) -> Listing:
    """An image list: ``<path> <label>`` per line (paths may hold spaces; blank lines are
    skipped); relative paths are taken from ``base``, else from the list's own folder."""
    list_path = Path(str(list_path)).expanduser()
    if not list_path.is_file():
        raise DataError(f"Image list not found: {list_path}. Set data.source.list / "
                        "data.target.list to a text file of '<path> <label>' lines.")
    base = Path(str(base)).expanduser() if base else list_path.parent
    files, labels = [], []
    for n, line in enumerate(list_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise DataError(f"{list_path} line {n}: {line!r} is not '<path> <label>' with a "
                            "whole-number label >= 0.")
        files.append(base / parts[0].strip())
        labels.append(int(parts[1]))
    if not files:
        raise DataError(f"{list_path} lists no images.")
    return Listing(files, labels, None, str(list_path))


def _listing(dom, which: str, test: bool = False) -> Listing:
    root, lst = (dom.test_root, dom.test_list) if test else (dom.root, dom.list)
    keys = ("test_root", "test_list") if test else ("root", "list")
    if (root is None) == (lst is None):
        raise ConfigError(f"data.{which}: set exactly one of data.{which}.{keys[0]} (an image "
                          f"folder) and data.{which}.{keys[1]} (an image list); got "
                          f"{keys[0]}={root!r}, {keys[1]}={lst!r}.")
    return scan_folder(root) if root is not None else read_list(lst, dom.list_root)


def check_classes(src: Listing, tgt: Listing) -> tuple[tuple[str, ...], int]:
    """Class names and count shared by the two domains; one message listing any mismatch."""
    if src.classes is not None and tgt.classes is not None:
        a, b = src.classes, tgt.classes
    elif src.classes is None and tgt.classes is None:
        a, b = (tuple(str(c) for c in sorted(set(x.labels))) for x in (src, tgt))
    else:
        named, listed = (src, tgt) if src.classes is not None else (tgt, src)
        top = max(listed.labels)
        if top >= len(named.classes):
            raise DataError(f"{listed.origin} uses label {top} but {named.origin} has only "
                            f"{len(named.classes)} classes ({', '.join(named.classes)}).")
        return named.classes, len(named.classes)
    if a != b:
        only_s, only_t = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise DataError(f"Source and target classes differ: only in the source ({src.origin}): "
                        f"{', '.join(only_s) or 'none'}; only in the target ({tgt.origin}): "
                        f"{', '.join(only_t) or 'none'}. Both domains must have the same "
                        "classes (same folder names, or the same labels in the lists).")
    if src.classes is None:
        return a, max(max(src.labels), max(tgt.labels)) + 1
    return a, len(a)


def _split_fraction(listing: Listing, fraction: float, seed: int) -> tuple[Listing, Listing]:
    """A seeded random held-out fraction of one domain as its test split."""
    n = len(listing.files)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, round(n * fraction)) if n > 1 else 0
    test, train = sorted(perm[:n_test]), sorted(perm[n_test:])
    pick = lambda idx: Listing([listing.files[i] for i in idx],  # noqa: E731
                               [listing.labels[i] for i in idx], listing.classes, listing.origin)
    return pick(train), pick(test)


def _domain_splits(cfg, which: str, offset: int) -> tuple[Listing, Listing | None]:
    dom = cfg[which]
    train = _listing(dom, which)
    if cfg.test == "separate":
        return train, _listing(dom, which, test=True)
    if cfg.test == "fraction":
        return _split_fraction(train, cfg.test_fraction, cfg.split_seed + offset)
    return train, None


def _cached_splits(cfg, train: Listing, test: Listing | None,
                   skipped: list[str]) -> tuple[Split, Split]:
    """Decode (or map) train then test images as one cache; both splits are views of it.
    Files left out by ``data.on_error=skip`` are appended to ``skipped``."""
    files = train.files + (test.files if test else [])
    labels = np.array(train.labels + (test.labels if test else []), dtype=np.int64)
    source = "\n".join([train.origin, test.origin if test else "-", str(cfg.test),
                        str(cfg.test_fraction), str(cfg.split_seed)])
    images, kept = cached_images(files, cache_size(cfg), cache_root(cfg.cache_root)
                                 / "image_cache", cfg.workers, cfg.on_error, source=source)
    if len(kept) < len(files):
        held = set(kept.tolist())
        skipped += [str(f) for i, f in enumerate(files) if i not in held]
    images = torch.from_numpy(images)
    labels = torch.from_numpy(labels[kept])
    n_train = int((kept < len(train.files)).sum())
    tr = Split(images[:n_train], labels[:n_train])
    return tr, (Split(images[n_train:], labels[n_train:]) if test else tr)


#: The usual evaluation protocol of ImageNet-pretrained networks: resize to 256, centre-crop
#: 224; ``data.cache_size`` null keeps that proportion for any ``data.image_size``.
CROP_SHARE = 224 / 256
#: Below this share of each side, evaluation would see a small centre patch of what training
#: crops from the whole image: refused (a wrong number, not a slow run).
MIN_CROP_SHARE = 0.7


def cache_size(cfg) -> int:
    """``data.cache_size``, or when null the size that follows ``data.image_size`` (256 for
    224: evaluation sees the central 87.5% of each side, as in the ImageNet protocol)."""
    if cfg.cache_size is not None:
        return int(cfg.cache_size)
    return cache_size_for(int(cfg.image_size))


def check_sizes(cfg) -> None:
    """A ``data.cache_size`` the user set must leave evaluation the same view of the images as
    training: the crop cannot exceed the cached image, nor be a small patch of it."""
    if cfg.cache_size is None:
        return
    size, image = int(cfg.cache_size), int(cfg.image_size)
    if image > size:
        raise ConfigError(f"data.image_size={image} is larger than data.cache_size={size}: "
                          "crops are cut from the cached images, so set data.cache_size >= "
                          "data.image_size (e.g. 256 for 224 crops), or leave data.cache_size "
                          "unset (null): it then follows data.image_size.")
    if image < MIN_CROP_SHARE * size:
        raise ConfigError(
            f"data.image_size={image} with data.cache_size={size}: evaluation would see only "
            f"the central {image}/{size} of each image's side ({image * image / size / size:.0%} "
            "of its area) while training crops from the whole image, so test accuracies would "
            "be measured on a different view of the data than the one trained on. Leave "
            f"data.cache_size unset (null: it follows data.image_size, {cache_size_for(image)} "
            f"for {image}) or set it between {image} and {int(image / MIN_CROP_SHARE)}.")


def cache_size_for(image_size: int) -> int:
    """The cache size that ``data.cache_size=null`` gives for ``image_size``."""
    return max(int(image_size), round(image_size / CROP_SHARE))


class HostImages:
    """uint8 images that stay in (pinned) host memory when they do not fit on the device:
    ``index_select`` / slicing gather on the host and hand the batch to ``device``."""

    def __init__(self, images: torch.Tensor, device):
        self.images, self.device = images, torch.device(device)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self):
        return self.images.shape

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        batch = self.images.index_select(dim, index.cpu())
        if self.device.type == "cuda":  # pinned: the copy can overlap the next kernels
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)

    def __getitem__(self, key) -> torch.Tensor:
        return self.images[key].to(self.device)

    def to(self, device) -> HostImages:
        return HostImages(self.images, device)


@dataclass
class FolderPair(DomainPair):
    """A DomainPair whose views crop, flip and normalise on the device (see :mod:`.augment`)."""

    image_size: int = 224
    test_protocol: str = "fraction"
    #: the requested cache size: evaluation crops its share ``image_size / cache_size`` of
    #: each cached image, whatever size the images were cached at (see augment.eval_crop)
    cache_size: int | None = None

    def train_view(self, images: torch.Tensor) -> torch.Tensor:
        return train_transform(images, self.image_size, self.normalize)

    def eval_view(self, images: torch.Tensor) -> torch.Tensor:
        return eval_transform(images, self.image_size, self.normalize, self.cache_size)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def to(self, device) -> FolderPair:
        """All splits on the device when they fit in half its free memory, else kept in host
        memory and gathered there batch by batch (:class:`HostImages`)."""
        device = torch.device(device)
        if device.type != "cuda" or self._bytes() < 0.5 * torch.cuda.mem_get_info(device)[0]:
            return super().to(device)
        host = lambda s: Split(HostImages(s.images, device), s.labels.to(device))  # noqa: E731
        labels = self.target_train_labels
        return dataclasses.replace(
            self, source_train=host(self.source_train), source_test=host(self.source_test),
            target_test=host(self.target_test),
            target_train_images=HostImages(self.target_train_images, device),
            target_train_labels=None if labels is None else labels.to(device))

    def _bytes(self) -> int:
        splits = {id(s.images): s.images for s in (self.source_train, self.source_test,
                                                   self.target_test)}
        splits[id(self.target_train_images)] = self.target_train_images
        return sum(t.numel() for t in splits.values())


def folders_pair(cfg) -> FolderPair:
    """Two image folders or lists -> a FolderPair over their common classes."""
    check_sizes(cfg)
    src_train, src_test = _domain_splits(cfg, "source", 0)
    tgt_train, tgt_test = _domain_splits(cfg, "target", 1)
    names, k = check_classes(src_train, tgt_train)
    skipped: list[str] = []
    src_tr, src_te = _cached_splits(cfg, src_train, src_test, skipped)
    tgt_tr, tgt_te = _cached_splits(cfg, tgt_train, tgt_test, skipped)
    records = {"skipped_images": skipped} if cfg.on_error == "skip" else {}
    return FolderPair(src_tr, tgt_tr.images, src_te, tgt_te, k, tgt_tr.labels, names,
                      cfg.normalize, records=records, image_size=cfg.image_size,
                      test_protocol=cfg.test, cache_size=cache_size(cfg))
