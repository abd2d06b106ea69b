"""Data sets as in-memory tensors: the embedded digits, torchvision sets read from disk, and image folders.

Every split is a `TensorData` (normalized float32 NCHW images plus int64 labels) that lives in memory and is
moved to the training device once. Splits are seeded and stratified; normalization statistics come from the
training split only.

    splits = load_data("digits")                      # 1,797 real 8x8 images, no download
    splits = load_data("cifar10", data_dir="~/data", download=True)
    splits = load_data("folder:~/photos", image_size=64)
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from archs.errors import UserError

__all__ = ["TensorData", "Splits", "DatasetInfo", "DATASETS", "AUGMENTS", "load_data", "dataset_info",
           "default_data_dir", "fold_positions", "fold_split"]

AUGMENTS = ("none", "crop", "crop_flip")


# --------------------------------------------------------------------------------------------------------------------
# TensorData
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class TensorData:
    """Images `x` (float32, N×C×H×W, already normalized) and labels `y` (int64, N)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 4:
            raise ValueError(f"TensorData.x must be N×C×H×W, got shape {tuple(self.x.shape)}")
        if self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(f"TensorData.y must be 1-D with {self.x.shape[0]} labels, got shape {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return f"TensorData(n={len(self)}, shape={tuple(self.x.shape[1:])}, device={self.x.device})"

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def resolution(self) -> int:
        """Side length (height) of the images."""
        return int(self.x.shape[-2])

    @property
    def in_chans(self) -> int:
        return int(self.x.shape[1])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TensorData":
        """A copy on `device` (the same object when it is already there)."""
        device = torch.device(device)
        if self.x.device == device and self.y.device == device:
            return self
        return TensorData(self.x.to(device, non_blocking=non_blocking), self.y.to(device, non_blocking=non_blocking))

    def resized(self, size: int) -> "TensorData":
        """Images resized to size×size (bilinear; antialiased when shrinking). `self` when already that size."""
        size = int(size)
        if size < 1:
            raise UserError(f"image size must be at least 1, got {size}")
        h, w = self.x.shape[-2:]
        if h == size and w == size:
            return self
        if len(self) == 0:
            return TensorData(self.x.new_zeros((0, self.x.shape[1], size, size)), self.y)
        shrinking = size < h or size < w
        x = F.interpolate(self.x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)
        return TensorData(x.contiguous(), self.y)

    def subset(self, idx: torch.Tensor | np.ndarray | Sequence[int]) -> "TensorData":
        """The images at positions `idx` (integer indices or a boolean mask)."""
        if not isinstance(idx, torch.Tensor):
            idx = torch.as_tensor(np.asarray(idx))
        if idx.dtype != torch.bool:
            idx = idx.long()
        idx = idx.to(self.x.device)
        return TensorData(self.x[idx], self.y[idx])

    @classmethod
    def cat(cls, a: "TensorData", b: "TensorData") -> "TensorData":
        """`a` followed by `b` (same image shape and device)."""
        if a.x.shape[1:] != b.x.shape[1:]:
            raise ValueError(f"cannot concatenate images of shape {tuple(a.x.shape[1:])} and {tuple(b.x.shape[1:])}")
        return cls(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]))


# --------------------------------------------------------------------------------------------------------------------
# Splits and data set catalogue
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Splits:
    """Train/val/test splits of one data set, normalized with the train split's per-channel mean/std.

    `resolution` is the side length of the stored images: the data set's native one, or `image_size` when
    `load_data` was asked to resize. `augment` is the augmentation that suits the data set (digits must not be
    flipped, photos can be).
    """

    train: TensorData
    val: TensorData
    test: TensorData
    num_classes: int
    in_chans: int
    resolution: int
    name: str
    augment: str = "none"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    classes: list[str] = field(default_factory=list)
    value_max: float = 255.0  # the stored pixel range is [0, value_max] before normalisation (digits: 16)

    def trainval(self) -> TensorData:
        """Train and val together, for the final retraining of winners (normalization stays the train split's)."""
        return TensorData.cat(self.train, self.val)

    def fold(self, index: int, folds: int, seed: int) -> "Splits":
        """Fold `index` of `folds` folds of train+val as the validation split and the rest as train (`fold_split`;
        fold 0 is `self`); the test split and the normalization stay."""
        from dataclasses import replace

        train, val = fold_split(self.train, self.val, index, folds, seed)
        return self if index == 0 else replace(self, train=train, val=val)

    def resized(self, size: int) -> "Splits":
        """All three splits resized to size×size."""
        from dataclasses import replace

        return replace(self, train=self.train.resized(size), val=self.val.resized(size),
                       test=self.test.resized(size), resolution=int(size))

    def summary(self) -> str:
        return (f"{self.name}: {self.num_classes} classes, {self.in_chans}×{self.resolution}×{self.resolution}, "
                f"train {len(self.train)} / val {len(self.val)} / test {len(self.test)}")


@dataclass(frozen=True)
class DatasetInfo:
    resolution: int
    in_chans: int
    num_classes: int | None
    augment: str
    description: str
    value_max: float = 255.0  # largest raw pixel value: 8-bit images 255, scikit-learn digits 16


DATASETS: dict[str, DatasetInfo] = {
    # digits fill their 8×8 box: a one-pixel shift cuts an eighth of the strokes (see "none" vs "crop" in README)
    "digits": DatasetInfo(8, 1, 10, "none", "scikit-learn handwritten digits, 1,797 real 8×8 grey images, embedded",
                           16.0),
    "mnist": DatasetInfo(28, 1, 10, "crop", "MNIST handwritten digits (torchvision)"),
    "fashion-mnist": DatasetInfo(28, 1, 10, "crop_flip", "Fashion-MNIST clothing (torchvision)"),
    "cifar10": DatasetInfo(32, 3, 10, "crop_flip", "CIFAR-10 colour photos (torchvision)"),
    "svhn": DatasetInfo(32, 3, 10, "crop", "SVHN house numbers (torchvision, train split only)"),
    "folder:PATH": DatasetInfo(32, 3, None, "crop_flip",
                               "torchvision ImageFolder at PATH (train/ [val/] [test/] or class folders), "
                               "resized to --image-size (default 32)"),
}

_FOLDER_PREFIX = "folder:"
_DEFAULT_FOLDER_SIZE = 32


def dataset_info(name: str) -> DatasetInfo:
    """The catalogue entry of `name` (any `folder:PATH` maps to the folder entry); UserError when unknown."""
    if name.startswith(_FOLDER_PREFIX):
        return DATASETS["folder:PATH"]
    if name not in DATASETS or name == "folder:PATH":
        known = ", ".join(DATASETS)
        raise UserError(f"unknown dataset {name!r}; choose one of: {known}")
    return DATASETS[name]


def default_data_dir() -> Path:
    """Where torchvision data sets live when no data_dir is given: $EDGENAS_DATA_DIR, else ./data."""
    return Path(os.environ.get("EDGENAS_DATA_DIR", "data")).expanduser()


# --------------------------------------------------------------------------------------------------------------------
# Splitting and normalization helpers
# --------------------------------------------------------------------------------------------------------------------
def _split(y: np.ndarray, fraction: float, seed: int, *, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions (kept, taken) with `fraction` of `y` taken, stratified by label when possible; both sorted."""
    idx = np.arange(len(y))
    if fraction <= 0 or len(y) == 0:
        return idx, idx[:0]
    n_take = int(np.ceil(fraction * len(y)))
    if n_take >= len(y):
        raise UserError(f"{what} fraction {fraction} leaves no images to train on ({len(y)} images)")
    from sklearn.model_selection import train_test_split

    try:
        keep, take = train_test_split(idx, test_size=fraction, random_state=seed, stratify=y)
    except ValueError:  # a class with a single image, or fewer taken images than classes
        warnings.warn(f"too few images per class to stratify the {what} split; splitting at random", stacklevel=3)
        keep, take = train_test_split(idx, test_size=fraction, random_state=seed)
    return np.sort(keep), np.sort(take)


def fold_positions(y_train: np.ndarray, n_val: int, folds: int, seed: int) -> list[np.ndarray]:
    """Positions in train+val (train first, then val, as `Splits.trainval`) of `folds` disjoint validation folds
    that together cover it: fold 0 is the val split itself, folds 1..folds-1 a seeded partition of the train split,
    stratified by label when possible. Each fold is sorted. With val a 1/`folds` share of train+val (val fraction 0.2
    and 5 folds) every fold has the val split's size, so every fold trains on as many images as the search does."""
    y_train = np.asarray(y_train)
    n_train = len(y_train)
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 1:
        raise UserError(f"the number of folds must be an integer >= 1, got {folds!r}")
    if folds > 1 and (n_val == 0 or n_train < folds - 1):
        raise UserError(f"{folds} folds need a validation split and at least {folds - 1} training images "
                        f"(have {n_val} and {n_train})")
    out = [np.arange(n_train, n_train + n_val)]
    if folds == 2:
        out.append(np.arange(n_train))
    elif folds > 2:
        from sklearn.model_selection import KFold, StratifiedKFold

        counts = np.bincount(y_train) if n_train and y_train.min() >= 0 else np.zeros(0)
        kw = dict(n_splits=folds - 1, shuffle=True, random_state=seed)
        kf = (StratifiedKFold(**kw) if len(counts) and counts[counts > 0].min() >= folds - 1 else KFold(**kw))
        out += [np.sort(take) for _, take in kf.split(np.zeros(n_train), y_train)]
    return out


def fold_split(train: TensorData, val: TensorData, index: int, folds: int, seed: int) -> tuple[TensorData, TensorData]:
    """(train, val) of fold `index` of `fold_positions` over `train` + `val`: that fold validates, the rest trains
    (fold 0: `train` and `val` themselves). Labels are read on the CPU; the tensors stay on their device."""
    if not 0 <= index < max(folds, 1):
        raise ValueError(f"fold {index} is not one of {folds} folds")
    if index == 0:
        return train, val
    pos = fold_positions(train.y.cpu().numpy(), len(val), folds, seed)[index]
    both = TensorData.cat(train, val)
    keep = np.ones(len(both), dtype=bool)
    keep[pos] = False
    return both.subset(keep), both.subset(pos)


def _limit(y: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Positions of at most `limit` images, stratified."""
    idx = np.arange(len(y))
    if limit is None or limit >= len(y):
        return idx
    from sklearn.model_selection import train_test_split

    try:
        keep, _ = train_test_split(idx, train_size=limit, random_state=seed, stratify=y)
    except ValueError:
        warnings.warn("limit is smaller than the number of classes; taking images at random", stacklevel=3)
        keep, _ = train_test_split(idx, train_size=limit, random_state=seed)
    return np.sort(keep)


def _to_float_nchw(x: np.ndarray | torch.Tensor, layout: str) -> torch.Tensor:
    x = torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if layout == "NHW":
        x = x.unsqueeze(1)
    elif layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
    return x.to(torch.float32).contiguous()


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or len(x) == 0 or tuple(x.shape[-2:]) == (size, size):
        return x
    # in chunks: interpolate allocates a full float copy, keep peaks small for the large sets
    out = [TensorData(c, torch.zeros(len(c), dtype=torch.long)).resized(size).x for c in torch.split(x, 8192)]
    return torch.cat(out)


def _finish(name: str, raw: dict[str, tuple[torch.Tensor, torch.Tensor]], *, num_classes: int, classes: list[str],
            augment: str, image_size: int | None, value_max: float = 255.0) -> Splits:
    """Resize, normalize with train statistics (in place), wrap into Splits."""
    xs = {k: _resize(v[0], image_size) for k, v in raw.items()}
    xtr = xs["train"]
    if len(xtr) == 0:
        raise UserError(f"dataset {name!r} has no training images left after splitting")
    mean = xtr.mean(dim=(0, 2, 3))
    std = xtr.std(dim=(0, 2, 3))
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    m, s = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    parts = {}
    for k, x in xs.items():
        x.sub_(m).div_(s)
        parts[k] = TensorData(x, raw[k][1].to(torch.int64).contiguous())
    return Splits(train=parts["train"], val=parts["val"], test=parts["test"], num_classes=int(num_classes),
                  in_chans=int(xtr.shape[1]), resolution=int(xtr.shape[-1]), name=name, augment=augment,
                  mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std), classes=list(classes),
                  value_max=float(value_max))


def _take(x: torch.Tensor, y: torch.Tensor, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.as_tensor(idx, dtype=torch.long)
    return x[t], y[t]


def _three_way(name, x, y, *, val_fraction, test_fraction, seed, limit) -> dict:
    """One pool of images -> stratified test, then val from the rest, then the train limit."""
    yn = y.numpy()
    rest, test = _split(yn, test_fraction, seed, what="test")
    train, val = _split(yn[rest], val_fraction, seed, what="val")
    train, val = rest[train], rest[val]
    train = train[_limit(yn[train], limit, seed)]
    return {"train": _take(x, y, train), "val": _take(x, y, val), "test": _take(x, y, test)}


def _train_test(x, y, xt, yt, *, val_fraction, seed, limit) -> dict:
    """An official train/test pair -> val carved from train (stratified), then the train limit."""
    train, val = _split(y.numpy(), val_fraction, seed, what="val")
    train = train[_limit(y.numpy()[train], limit, seed)]
    return {"train": _take(x, y, train), "val": _take(x, y, val), "test": (xt, yt)}


# --------------------------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.uint8)  # values 0..16
    target = d.target.astype(np.int64)
    images.setflags(write=False)
    target.setflags(write=False)
    return images, target


def _load_digits(**kw) -> tuple[dict, int, list[str]]:
    images, target = _digits_arrays()
    x = _to_float_nchw(images.copy(), "NHW")
    y = torch.from_numpy(target.copy())
    return _three_way("digits", x, y, **kw), 10, [str(i) for i in range(10)]


# expected files of each torchvision set, relative to root (checked before torchvision so the error is ours)
_TV_FILES = {
    "mnist": [f"MNIST/raw/{p}-{k}" for p in ("train", "t10k") for k in ("images-idx3-ubyte", "labels-idx1-ubyte")],
    "fashion-mnist": [f"FashionMNIST/raw/{p}-{k}" for p in ("train", "t10k")
                      for k in ("images-idx3-ubyte", "labels-idx1-ubyte")],
    "cifar10": [f"cifar-10-batches-py/{f}" for f in
                ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta")],
    "svhn": ["train_32x32.mat", "test_32x32.mat"],
}


def _torchvision_split(name: str, root: Path, train: bool, download: bool):
    import torchvision.datasets as tvd

    if name == "mnist":
        ds = tvd.MNIST(str(root), train=train, download=download)
        return ds.data, ds.targets, "NHW", list(ds.classes)
    if name == "fashion-mnist":
        ds = tvd.FashionMNIST(str(root), train=train, download=download)
        return ds.data, ds.targets, "NHW", list(ds.classes)
    if name == "cifar10":
        ds = tvd.CIFAR10(str(root), train=train, download=download)
        return ds.data, torch.as_tensor(ds.targets, dtype=torch.int64), "NHWC", list(ds.classes)
    if name == "svhn":
        ds = tvd.SVHN(str(root), split="train" if train else "test", download=download)
        return ds.data, torch.as_tensor(ds.labels, dtype=torch.int64), "NCHW", [str(i) for i in range(10)]
    raise AssertionError(name)


def _load_torchvision(name: str, data_dir, download: bool, **kw) -> tuple[dict, int, list[str]]:
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    missing = [f for f in _TV_FILES[name] if not (root / f).is_file()]
    if missing and not download:
        folder = (root / missing[0]).parent
        raise UserError(f"{name} not found in {folder} (missing {Path(missing[0]).name}); "
                        f"pass --download to fetch it into {root}, or --data-dir to point at it")
    if download:
        root.mkdir(parents=True, exist_ok=True)
    out = []
    for train in (True, False):
        try:
            out.append(_torchvision_split(name, root, train, download))
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted" (md5 mismatch)
            raise UserError(f"{name} in {root} is missing or corrupted ({e}); delete it and rerun with --download"
                            ) from e
        except OSError as e:  # failed download (no network, disk full) or unreadable file
            raise UserError(f"could not {'download' if download else 'read'} {name} into {root}: {e}") from e
    (x, y, layout, classes), (xt, yt, _, _) = out
    x, xt = _to_float_nchw(x, layout), _to_float_nchw(xt, layout)
    y, yt = torch.as_tensor(y, dtype=torch.int64), torch.as_tensor(yt, dtype=torch.int64)
    return _train_test(x, y, xt, yt, **{k: kw[k] for k in ("val_fraction", "seed", "limit")}), 10, classes


def _read_images(samples: list[tuple[str, int]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    x = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(samples):
        try:
            with Image.open(path) as im:
                x[i] = np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        except OSError as e:
            raise UserError(f"cannot read image {path}: {e}") from e
    y = torch.as_tensor([c for _, c in samples], dtype=torch.int64)
    return torch.from_numpy(x).permute(0, 3, 1, 2), y


def _load_folder(name: str, image_size: int | None, **kw) -> tuple[dict, int, list[str]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    path = Path(name[len(_FOLDER_PREFIX):]).expanduser()
    if not name[len(_FOLDER_PREFIX):]:
        raise UserError("folder dataset needs a path: folder:PATH")
    if not path.is_dir():
        raise UserError(f"image folder {path} does not exist")
    size = int(image_size or _DEFAULT_FOLDER_SIZE)
    train_dir = path / "train" if (path / "train").is_dir() else path
    try:
        classes, class_to_idx = find_classes(str(train_dir))
    except FileNotFoundError as e:
        raise UserError(f"no class folders in {train_dir} (expected {train_dir}/<class>/<image>)") from e
    try:
        train_samples = make_dataset(str(train_dir), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise UserError(f"no images in {train_dir}: {str(e).splitlines()[0]}") from e
    if not train_samples:
        raise UserError(f"no images in {train_dir} (supported: {', '.join(IMG_EXTENSIONS)})")

    def extra(sub: str):
        d = path / sub
        if train_dir == path or not d.is_dir():
            return None
        try:
            sub_classes, _ = find_classes(str(d))
        except FileNotFoundError:
            return None
        unknown = sorted(set(sub_classes) - set(classes))
        if unknown:
            raise UserError(f"{d} has classes that {train_dir} lacks: {', '.join(unknown[:5])}")
        samples = make_dataset(str(d), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        return _read_images(samples, size) if samples else None

    x, y = _read_images(train_samples, size)
    val, test = extra("val"), extra("test")
    kw = dict(kw)
    vf, tf, seed, limit = kw["val_fraction"], kw["test_fraction"], kw["seed"], kw["limit"]
    if val is None and test is None:
        parts = _three_way(name, x, y, val_fraction=vf, test_fraction=tf, seed=seed, limit=limit)
    elif test is None:  # val given: test carved out of train
        parts = _train_test(x, y, x[:0], y[:0], val_fraction=tf, seed=seed, limit=limit)
        parts = {"train": parts["train"], "val": val, "test": parts["val"]}
    elif val is None:
        parts = _train_test(x, y, *test, val_fraction=vf, seed=seed, limit=limit)
    else:
        idx = _limit(y.numpy(), limit, seed)
        parts = {"train": _take(x, y, idx), "val": val, "test": test}
    parts = {k: (_to_float_nchw(v[0], "NCHW"), v[1]) for k, v in parts.items()}
    # grey images (all three channels equal everywhere) keep one channel
    if all(len(v[0]) == 0 or bool((v[0][:, :1] == v[0][:, 1:]).all()) for v in parts.values()):
        parts = {k: (v[0][:, :1].contiguous(), v[1]) for k, v in parts.items()}
    return parts, len(classes), list(classes)


def load_data(name: str = "digits", data_dir: str | os.PathLike | None = None, download: bool = False,
              val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0, image_size: int | None = None,
              limit: int | None = None) -> Splits:
    """Load a data set as normalized in-memory tensors with seeded, stratified train/val/test splits.

    digits: `test_fraction` of all images is test, then `val_fraction` of the rest is val. torchvision sets
    (mnist, fashion-mnist, cifar10, svhn, read from `data_dir`, default $EDGENAS_DATA_DIR or ./data): the official
    test split is the test split and val is carved out of train (`test_fraction` is unused). `folder:PATH`: uses
    PATH/train, PATH/val, PATH/test when present, otherwise splits like digits; images resized to `image_size`
    (default 32). `limit` caps the training images (stratified). Normalization: per-channel mean/std of train.
    """
    if not isinstance(name, str) or not name:
        raise UserError(f"dataset name must be a non-empty string, got {name!r}")
    info = dataset_info(name)
    for what, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
            raise UserError(f"{what} must be in [0, 1), got {v!r}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise UserError(f"image size must be a positive integer, got {image_size!r}")
    if limit is not None and (int(limit) != limit or limit < 1):
        raise UserError(f"limit must be a positive integer, got {limit!r}")
    image_size = None if image_size is None else int(image_size)
    kw = dict(val_fraction=float(val_fraction), test_fraction=float(test_fraction), seed=int(seed),
              limit=None if limit is None else int(limit))
    if name == "digits":
        parts, num_classes, classes = _load_digits(**kw)
    elif name.startswith(_FOLDER_PREFIX):
        parts, num_classes, classes = _load_folder(name, image_size, **kw)
    else:
        parts, num_classes, classes = _load_torchvision(name, data_dir, download, **kw)
    return _finish(name, parts, num_classes=num_classes, classes=classes, augment=info.augment,
                   image_size=image_size, value_max=info.value_max)
