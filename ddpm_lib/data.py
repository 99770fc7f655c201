"""Datasets (stage 2 of the series): one entry point, :func:`load_dataset`, for four sources.

Every dataset yields ``(image, label)`` with image a float32 tensor ``(3, H, W)`` in [-1, 1] and an
int label. Images are decoded, resized and centre-cropped once, then held in memory as uint8.
16-bit images are scaled to 8 bits (divided by 257), float images only when they lie in [0, 1];
a download that receives nothing for ``NETWORK_TIMEOUT_S`` seconds is given up on.

- ``"toy_cars"``: procedural side-view cars, embedded, no download (the default; label = body type).
- ``"stanford_cars"``: Stanford Cars (Krause et al. 2013) from Kaggle via kagglehub (label = class).
- ``"cifar10"``: CIFAR-10 via torchvision (label = class).
- ``"folder"``: any directory of images, ImageFolder layout (label = sub-folder) or flat (label 0).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ddpm_lib import toy_cars
from ddpm_lib.checks import check_choice, check_int

DatasetName = Literal["toy_cars", "stanford_cars", "cifar10", "folder"]
Split = Literal["train", "test"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
STANFORD_CARS_HANDLE = "jutrera/stanford-car-dataset-by-classes-folder/versions/2"
STANFORD_CARS_TRAIN_SIZE = 8144
# seconds without an answer (or without download progress) before giving up
NETWORK_TIMEOUT_S = 10.0
_R = TypeVar("_R")


class DatasetUnavailableError(RuntimeError):
    """The data could not be found locally nor downloaded; the message says how to get it."""


class ImageTensorDataset(Dataset):
    """Images held as uint8 ``(N, 3, H, W)`` with int labels; items are ``(float (3, H, W) in [-1, 1], int)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] = ()):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.classes = images, labels.long(), list(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return from_uint8(self.images[index]), int(self.labels[index])

    def batch(
        self, indices: torch.Tensor, device: torch.device | str = "cpu", flip: bool = False
    ) -> torch.Tensor:
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
class UnsupportedPixelsError(ValueError):
    """An image whose pixel values cannot be mapped to 8 bits without guessing (the message says why)."""


def _load_rgb(path: Path, size: int) -> np.ndarray:
    """Decode an image file, convert it to RGB, resize its shorter side to ``size`` and centre-crop: ``(3, size, size)``."""
    with Image.open(path) as img:
        # JPEG: decode at a reduced scale when the file is much larger
        img.draft("RGB", (size, size))
        if img.mode == "F" or img.mode == "I" or img.mode.startswith("I;16"):
            img = _high_bit_to_8bit(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)
        img = img.convert("RGB")
        return _resize_crop(img, size)


def _high_bit_to_8bit(img: Image.Image) -> Image.Image:
    """A one-channel 16-bit (``I;16``, ``I``) or float (``F``) image as 8-bit ``L``, scaled to keep its brightness.

    Pillow's own conversion clips these values to 0..255: a 16-bit photograph turns almost white and
    a float image in [0, 1] black. 16-bit values (0..65535) are divided by 257, floats in [0, 1]
    multiplied by 255; anything else raises :class:`UnsupportedPixelsError`.
    """
    a = np.asarray(img)  # (H, W) uint16, int32 or float32
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode == "F":
        if not (np.isfinite(a).all() and 0.0 <= lo and hi <= 1.0):
            raise UnsupportedPixelsError(
                f"mode F (32-bit float) with values in [{lo:.4g}, {hi:.4g}]: only floats in [0, 1] can be scaled to 8 bits; "
                "save it as an 8- or 16-bit image, or as floats in [0, 1]"
            )
        scaled = a.astype(np.float64) * 255.0
    else:
        if lo < 0 or hi > 65535:
            raise UnsupportedPixelsError(
                f"mode {img.mode} (integer) with values in [{lo:.0f}, {hi:.0f}], outside 16-bit 0..65535: no way to tell its brightness; "
                "save it as an 8- or 16-bit image"
            )
        scaled = a.astype(np.float64) / 257.0  # 65535 / 257 = 255
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def _resize_crop(img: Image.Image, size: int) -> np.ndarray:
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize(
        (max(size, round(w * scale)), max(size, round(h * scale))),
        Image.Resampling.BICUBIC,
        reducing_gap=3.0,
    )
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.array(img.crop((left, top, left + size, top + size)), dtype=np.uint8).transpose(
        2, 0, 1
    )


def _decode_files(
    files: Sequence[Path], labels: Sequence[int], size: int, classes: Sequence[str], source: str
) -> ImageTensorDataset:
    images, kept, bad = [], [], []
    for path, label in zip(files, labels, strict=True):
        try:
            images.append(_load_rgb(path, size))
            kept.append(label)
        except UnsupportedPixelsError as exc:
            bad.append(f"{path} ({exc})")
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            bad.append(f"{path} (unreadable or truncated)")
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        warnings.warn(f"skipped {len(bad)} image(s) in {source}: {shown}", stacklevel=3)
    if not images:
        raise DatasetUnavailableError(
            f"no readable images in {source} ({len(bad)} file(s) failed to decode; the first: {bad[0]})"
        )
    return ImageTensorDataset(torch.from_numpy(np.stack(images)), torch.tensor(kept), classes)


def _image_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


# ---------------------------------------------------------------------------------- sources
def _toy_cars(
    image_size: int, split: Split, num_images: int | None = None, seed: int = 0
) -> ImageTensorDataset:
    n = (
        STANFORD_CARS_TRAIN_SIZE
        if num_images is None
        else check_int(num_images, "num_images", minimum=1)
    )
    check_int(seed, "seed", minimum=0)
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
        raise DatasetUnavailableError(
            f"image folder {root} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
        )
    classes = sorted(
        {p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1}
    )
    index = {c: i for i, c in enumerate(classes)}
    labels = [
        index.get(p.relative_to(root).parts[0], 0) if len(p.relative_to(root).parts) > 1 else 0
        for p in files
    ]
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


class _NoAnswer(TimeoutError):
    """A call that made no progress within its deadline."""


def _call_with_deadline(
    fn: Callable[[], _R], seconds: float, progress: Callable[[], object] | None = None
) -> _R:
    """``fn()`` run in a daemon thread; raise :class:`_NoAnswer` when it runs ``seconds`` without progress.

    A client that passes no timeout to ``requests`` ignores the socket default and can wait forever.
    ``progress()`` returns something that changes while work is done (bytes on disk): each change
    restarts the clock, so a long download that keeps receiving data is never cut short. A call that
    hangs is left in its daemon thread (Python cannot stop a thread), which ends with the process.
    """
    outcome = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="ddpm-lib-download", daemon=True)
    worker.start()
    last, deadline = (progress() if progress else None), time.monotonic() + seconds
    while worker.is_alive():
        worker.join(max(0.0, min(1.0, deadline - time.monotonic())))
        if not worker.is_alive():
            break
        now = progress() if progress else None
        if now != last:
            last, deadline = now, time.monotonic() + seconds
        elif time.monotonic() >= deadline:
            raise _NoAnswer(f"no answer within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _kagglehub_dataset_bytes() -> int:
    """Bytes under kagglehub's cache folder of Stanford Cars: they grow while a download makes progress."""
    cache = Path(os.environ.get("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub")
    folder = cache / "datasets" / Path(STANFORD_CARS_HANDLE).parent.parent
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def _find_stanford_root(base: Path) -> Path | None:
    for candidate in (base / "car_data" / "car_data", base / "car_data", base):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    return None


def _stanford_cars(
    image_size: int, split: Split, root: str | os.PathLike | None
) -> ImageTensorDataset:
    if root is None:
        # kagglehub raises many types offline: connection, auth, HTTP errors
        try:
            import kagglehub

            with _network_timeout(NETWORK_TIMEOUT_S):
                download = functools.partial(kagglehub.dataset_download, STANFORD_CARS_HANDLE)
                base = Path(
                    _call_with_deadline(
                        download, NETWORK_TIMEOUT_S, progress=_kagglehub_dataset_bytes
                    )
                )
        except _NoAnswer:
            raise _unavailable(
                "Stanford Cars",
                f"the Kaggle download of {STANFORD_CARS_HANDLE!r} did not answer within {NETWORK_TIMEOUT_S:g} s "
                "(no network, or a proxy or firewall that swallows requests)",
                "connect to the internet and try again, or download "
                "https://www.kaggle.com/datasets/jutrera/stanford-car-dataset-by-classes-folder yourself and pass "
                "root='path/to/it' (--data-root with python -m ddpm_lib.train)",
            ) from None
        except Exception as exc:
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
        raise _unavailable(
            "Stanford Cars", f"{split_dir} holds no images", "re-download the dataset or fix root="
        )
    labels = [index[p.relative_to(split_dir).parts[0]] for p in files]
    return _decode_files(files, labels, image_size, classes, f"Stanford Cars {split_dir}")


def _cifar10(
    image_size: int, split: Split, root: str | os.PathLike | None, download: bool
) -> ImageTensorDataset:
    from torchvision.datasets import CIFAR10

    root = Path(
        root if root is not None else Path.home() / ".cache" / "ddpm_lib" / "cifar10"
    ).expanduser()
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
    # (N, 32, 32, 3) -> (N, 3, 32, 32)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    if image_size != images.shape[-1]:
        images = torch.stack(
            [torch.from_numpy(_resize_crop(Image.fromarray(a), image_size)) for a in ds.data]
        )
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
    check_choice(name, DatasetName, "dataset")
    check_choice(split, Split, "split")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    allowed = {"toy_cars": {"num_images", "seed"}, "cifar10": {"download"}}.get(name, set())
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for dataset {name!r}; valid: {sorted(allowed) or 'none'}"
        )
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
