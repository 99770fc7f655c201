"""Datasets (stage 2 of the series): one entry point, :func:`load_dataset`, for four sources.

Every dataset yields ``(image, label)`` with image a float32 tensor ``(3, H, W)`` in [-1, 1] and an
int label. Images are decoded, resized and centre-cropped once, then held in memory as uint8.

- ``"toy_cars"``: procedural side-view cars, embedded, no download (the default; label = body type).
- ``"stanford_cars"``: Stanford Cars (Krause et al. 2013) from Kaggle via kagglehub (label = class).
- ``"cifar10"``: CIFAR-10 via torchvision (label = class).
- ``"folder"``: any directory of images, ImageFolder layout (label = sub-folder) or flat (label 0).
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ddpm_lib import toy_cars

DatasetName = Literal["toy_cars", "stanford_cars", "cifar10", "folder"]
Split = Literal["train", "test"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
STANFORD_CARS_HANDLE = "jutrera/stanford-car-dataset-by-classes-folder/versions/2"
STANFORD_CARS_TRAIN_SIZE = 8144
NETWORK_TIMEOUT_S = 10.0


class DatasetUnavailableError(RuntimeError):
    """The data could not be found locally nor downloaded; the message says how to get it."""


class ImageTensorDataset(Dataset):
    """Images held as uint8 ``(N, 3, H, W)`` with int labels; items are ``(float (3, H, W) in [-1, 1], int)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] = ()):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.classes = images, labels.long(), list(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return from_uint8(self.images[index]), int(self.labels[index])

    def batch(self, indices: torch.Tensor, device: torch.device | str = "cpu", flip: bool = False) -> torch.Tensor:
        """x_0 for ``indices`` ``(B,)``: float ``(B, 3, H, W)`` in [-1, 1] on ``device``.

        With ``flip``, each image is mirrored left-right with probability 1/2, drawn from the global
        CPU RNG (so a checkpoint's RNG state fixes the flips of a resumed run).
        """
        x = from_uint8(self.images[indices.to(self.images.device)].to(device, non_blocking=True))
        if flip:
            mirror = (torch.rand(len(indices)) < 0.5).to(x.device).view(-1, 1, 1, 1)
            x = torch.where(mirror, x.flip(-1), x)
        return x


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map images in [-1, 1] to uint8 [0, 255], keeping the shape (values outside are clamped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map uint8 images [0, 255] to float32 in [-1, 1], keeping the shape: the inverse of :func:`to_uint8`."""
    if x.dtype != torch.uint8:
        raise ValueError(f"from_uint8 expects a uint8 tensor, got {x.dtype}")
    return x.float().div_(127.5).sub_(1.0)


# ---------------------------------------------------------------------------------- decoding
def _load_rgb(path: Path, size: int) -> np.ndarray:
    """Decode an image file, convert it to RGB, resize its shorter side to ``size`` and centre-crop: ``(3, size, size)``."""
    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the file is much larger
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)
        img = img.convert("RGB")
        return _resize_crop(img, size)


def _resize_crop(img: Image.Image, size: int) -> np.ndarray:
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC, reducing_gap=3.0)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.array(img.crop((left, top, left + size, top + size)), dtype=np.uint8).transpose(2, 0, 1)


def _decode_files(files: Sequence[Path], labels: Sequence[int], size: int, classes: Sequence[str], source: str) -> ImageTensorDataset:
    images, kept, bad = [], [], []
    for path, label in zip(files, labels, strict=True):
        try:
            images.append(_load_rgb(path, size))
            kept.append(label)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            bad.append(str(path))
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        warnings.warn(f"skipped {len(bad)} unreadable or truncated image(s) in {source}: {shown}", stacklevel=3)
    if not images:
        raise DatasetUnavailableError(f"no readable images in {source} ({len(bad)} file(s) failed to decode)")
    return ImageTensorDataset(torch.from_numpy(np.stack(images)), torch.tensor(kept), classes)


def _image_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------------- sources
def _toy_cars(image_size: int, split: Split, num_images: int | None = None, seed: int = 0) -> ImageTensorDataset:
    n = STANFORD_CARS_TRAIN_SIZE if num_images is None else num_images
    if n < 1:
        raise ValueError(f"num_images must be >= 1, got {n}")
    images, labels = toy_cars.generate(n, image_size, seed=seed, split=split)
    return ImageTensorDataset(images, labels, toy_cars.BODY_TYPES)


def _folder(image_size: int, root: str | os.PathLike | None) -> ImageTensorDataset:
    if root is None:
        raise ValueError("dataset 'folder' needs root=, the directory that holds the images")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetUnavailableError(f"image folder {root} does not exist or is not a directory")
    files = _image_files(root)
    if not files:
        raise DatasetUnavailableError(f"image folder {root} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    index = {c: i for i, c in enumerate(classes)}
    labels = [index.get(p.relative_to(root).parts[0], 0) if len(p.relative_to(root).parts) > 1 else 0 for p in files]
    return _decode_files(files, labels, image_size, classes, f"image folder {root}")


def _unavailable(name: str, what: str, fix: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"{name} is not available: {what}.\nTo get it: {fix}\nThe embedded dataset works offline: load_dataset('toy_cars', image_size=...)."
    )


@contextlib.contextmanager
def _network_timeout(seconds: float):
    """Give sockets without their own timeout a deadline, so an offline machine fails fast instead of hanging."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _find_stanford_root(base: Path) -> Path | None:
    for candidate in (base / "car_data" / "car_data", base / "car_data", base):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    return None


def _stanford_cars(image_size: int, split: Split, root: str | os.PathLike | None) -> ImageTensorDataset:
    if root is None:
        try:
            import kagglehub

            with _network_timeout(NETWORK_TIMEOUT_S):
                base = Path(kagglehub.dataset_download(STANFORD_CARS_HANDLE))
        except Exception as exc:  # kagglehub raises many types offline: connection, auth, HTTP errors
            raise _unavailable(
                "Stanford Cars",
                f"kagglehub could not download {STANFORD_CARS_HANDLE!r} and it is not in the kagglehub cache ({type(exc).__name__}: {exc})",
                "connect to the internet (Kaggle credentials may be needed: https://www.kaggle.com/docs/api), "
                "or download https://www.kaggle.com/datasets/jutrera/stanford-car-dataset-by-classes-folder "
                "yourself and pass root='path/to/it'",
            ) from exc
    else:
        base = Path(root).expanduser()
    data_root = _find_stanford_root(base)
    if data_root is None:
        raise _unavailable(
            "Stanford Cars",
            f"{base} does not contain car_data/car_data/train and .../test",
            "point root= at the unpacked Kaggle dataset (the folder that holds car_data/)",
        )
    split_dir = data_root / split
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    files = _image_files(split_dir)
    if not files:
        raise _unavailable("Stanford Cars", f"{split_dir} holds no images", "re-download the dataset or fix root=")
    labels = [index[p.relative_to(split_dir).parts[0]] for p in files]
    return _decode_files(files, labels, image_size, classes, f"Stanford Cars {split_dir}")


def _cifar10(image_size: int, split: Split, root: str | os.PathLike | None, download: bool) -> ImageTensorDataset:
    from torchvision.datasets import CIFAR10

    root = Path(root if root is not None else Path.home() / ".cache" / "ddpm_lib" / "cifar10").expanduser()
    try:
        with _network_timeout(NETWORK_TIMEOUT_S), contextlib.redirect_stdout(None):
            ds = CIFAR10(str(root), train=(split == "train"), download=download)
    except Exception as exc:
        raise _unavailable(
            "CIFAR-10",
            f"not found under {root} and {'the download failed' if download else 'download=False'} ({type(exc).__name__}: {exc})",
            "connect to the internet and pass download=True, or put cifar-10-batches-py/ (from "
            "https://www.cs.toronto.edu/~kriz/cifar.html) under root=",
        ) from exc
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    if image_size != images.shape[-1]:
        images = torch.stack([torch.from_numpy(_resize_crop(Image.fromarray(a), image_size)) for a in ds.data])
    return ImageTensorDataset(images, torch.tensor(ds.targets), ds.classes)


def load_dataset(
    name: DatasetName = "toy_cars",
    image_size: int = 32,
    split: Split = "train",
    root: str | os.PathLike | None = None,
    **options,
) -> ImageTensorDataset:
    """Load a dataset whose items are ``(image (3, H, W) float in [-1, 1], label int)``.

    Options: ``toy_cars``: ``num_images`` (default 8,144, Stanford Cars' train size), ``seed``;
    ``cifar10``: ``download`` (default True). Missing data raises :class:`DatasetUnavailableError`
    saying how to get it.
    """
    if name not in get_args(DatasetName):
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(get_args(DatasetName))}")
    if split not in get_args(Split):
        raise ValueError(f"unknown split {split!r}; valid choices: {', '.join(get_args(Split))}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    allowed = {"toy_cars": {"num_images", "seed"}, "cifar10": {"download"}}.get(name, set())
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for dataset {name!r}; valid: {sorted(allowed) or 'none'}")
    if name == "toy_cars":
        if root is not None:
            raise ValueError("toy_cars is generated, not read from disk: drop root=")
        return _toy_cars(image_size, split, **options)
    if name == "stanford_cars":
        return _stanford_cars(image_size, split, root)
    if name == "cifar10":
        return _cifar10(image_size, split, root, options.get("download", True))
    if split != "train":
        raise ValueError("dataset 'folder' has a single split; use split='train'")
    return _folder(image_size, root)
