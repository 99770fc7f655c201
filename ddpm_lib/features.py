"""The feature network of the evaluation stage: a small CNN trained on the toy cars.

FID (Heusel et al. 2017), KID (Binkowski et al. 2018) and improved precision/recall (Kynkaanniemi et al.
2019) compare two sets of images in the feature space of a network trained on images like them. The
usual network, InceptionV3 trained on ImageNet, knows nothing about 32x32 drawings of cars and needs a
weights download, so the toy cars get their own: a six-layer CNN that classifies the six body types
(``toy_cars.BODY_TYPES``). Its penultimate layer, the globally average-pooled last convolution (128
numbers, like Inception's 2048-d ``pool3``), is the feature space of ``ddpm_lib.metrics``.

A body-type classifier alone would learn to ignore colour, sky and road: the features would not see a
model that paints the sky off the data's palette. So the network also regresses, from the same
features, the other 29 drawing parameters of each car (``toy_cars.sample_params``: colours, position,
proportions, facing, ...), an auxiliary loss that keeps those factors in the feature space.

Input convention, one for the whole evaluation stage: images ``(B, 3, H, W)`` either as **float in
[-1, 1]** (the project's convention) or as **uint8 in [0, 255]** (what torchmetrics passes with its
default ``normalize=False``); float images in [0, 1] are *not* accepted. Images of another size are
resized to the network's 32x32 with antialiasing.

Train the shipped weights with ``python -m ddpm_lib.features --out ddpm_lib/weights/toy_cars_classifier.pt``.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lib import toy_cars
from ddpm_lib.data import from_uint8

WEIGHTS_NAME = "toy_cars_classifier.pt"
# shipped inside the package, when installed so
PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights" / WEIGHTS_NAME
# the repository's assets/ folder beside the package
REPO_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / WEIGHTS_NAME
TRAIN_COMMAND = "python -m ddpm_lib.features --out ddpm_lib/weights/toy_cars_classifier.pt"
NUM_DRAWING_PARAMS = toy_cars.NUM_PARAMS - 1  # every parameter but the body type (column 0)
# auxiliary targets (parameter columns 1..) that a horizontal flip changes: facing is negated, the centre x mirrored
FLIP_NEGATE, FLIP_MIRROR = toy_cars.PARAM_INDEX["facing"] - 1, toy_cars.PARAM_INDEX["cx"] - 1


@dataclass(frozen=True)
class FeatureNetConfig:
    """Architecture of :class:`ToyCarsFeatureNet` (saved in the weights file)."""

    # channels of the three stages (two 3x3 convs each, then 2x2 max-pool)
    widths: tuple[int, ...] = (
        32,
        64,
        128,
    )
    image_size: int = 32  # inputs of another size are resized to this
    num_classes: int = len(toy_cars.BODY_TYPES)  # body types
    num_aux: int = NUM_DRAWING_PARAMS  # drawing parameters regressed by the auxiliary head

    @property
    def num_features(self) -> int:
        return self.widths[-1]


class ToyCarsFeatureNet(nn.Module):
    """CNN ``images (B, 3, H, W) -> features (B, F)``; ``logits`` adds the body-type head ``(B, 6)``."""

    def __init__(self, cfg: FeatureNetConfig = FeatureNetConfig()):
        super().__init__()
        self.cfg = cfg
        self.num_features = cfg.num_features  # read by torchmetrics instead of a dummy forward pass
        self.num_classes = cfg.num_classes
        layers, c_in = [], 3
        for c in cfg.widths:
            for c_a, c_b in ((c_in, c), (c, c)):
                layers += [
                    nn.Conv2d(c_a, c_b, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_b),
                    nn.ReLU(inplace=True),
                ]
            layers.append(nn.MaxPool2d(2))
            c_in = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, cfg.num_classes)  # body type
        # standardized drawing parameters (training only)
        self.aux_head = nn.Linear(c_in, cfg.num_aux)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] or float [-1, 1] ``(B, 3, H, W)`` -> float [-1, 1] ``(B, 3, 32, 32)`` on the weights' device."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        w = self.head.weight
        x = images.to(w.device)
        x = (from_uint8(x) if x.dtype == torch.uint8 else x).to(w.dtype)
        if x.shape[-2:] != (self.cfg.image_size,) * 2:
            x = F.interpolate(
                x,
                size=(self.cfg.image_size,) * 2,
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, F)``: the global average pool of the last convolution (post-ReLU)."""
        return self.body(self.preprocess(images)).mean(dim=(2, 3))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Body-type logits ``(B, num_classes)``."""
        return self.head(self(images))

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted body type ``(B,)`` int64, an index into ``toy_cars.BODY_TYPES``."""
        return self.classify_features(self(images))

    @torch.no_grad()
    def classify_features(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted body type ``(B,)`` from features ``(B, F)`` already computed (no second pass)."""
        return self.head(features.to(self.head.weight.dtype)).argmax(dim=1)


class FrozenFeatureNet(ToyCarsFeatureNet):
    """A trained :class:`ToyCarsFeatureNet` that stays in eval mode (torchmetrics may call ``.train()`` on it)."""

    def train(self, mode: bool = True) -> FrozenFeatureNet:
        return super().train(False)


def default_weights_path() -> Path:
    """``ddpm_lib/weights/toy_cars_classifier.pt`` when it exists, else ``assets/toy_cars_classifier.pt`` beside the package."""
    return PACKAGE_WEIGHTS if PACKAGE_WEIGHTS.is_file() else REPO_WEIGHTS


def load_feature_extractor(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> FrozenFeatureNet:
    """The shipped feature network, frozen, in eval mode, float32, on ``device``.

    Usable as torchmetrics' ``FrechetInceptionDistance(feature=net)`` (it has ``num_features``): it maps
    images ``(B, 3, H, W)`` (uint8, or float in [-1, 1]) to features ``(B, F)`` and ``net.classify(images)``
    to body types ``(B,)``. Raises ``FileNotFoundError`` naming the train command when the file is missing.
    """
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        where = f"{path}" if path != REPO_WEIGHTS else f"{PACKAGE_WEIGHTS} nor {REPO_WEIGHTS}"
        raise FileNotFoundError(
            f"no feature-network weights at {where}; train them (a few minutes on a CPU) with: {TRAIN_COMMAND}"
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    arch = saved["config"]
    net = FrozenFeatureNet(FeatureNetConfig(**{**arch, "widths": tuple(arch["widths"])}))
    net.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in saved["state_dict"].items()}
    )
    net.test_accuracy = float(saved.get("test_accuracy", float("nan")))
    return net.requires_grad_(False).to(device).eval()


# ---------------------------------------------------------------------------------- training
def _toy_cars_with_params(
    n: int, split: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``images`` uint8 ``(n, 3, 32, 32)``, ``labels`` ``(n,)`` and drawing parameters ``(n, NUM_DRAWING_PARAMS)``."""
    images, labels = toy_cars.generate(n, 32, seed=seed, split=split)
    params = torch.from_numpy(
        np.stack([toy_cars.sample_params(seed, split, i) for i in range(n)])[:, 1:]
    ).float()
    return images, labels, params


@torch.no_grad()
def accuracy(
    net: ToyCarsFeatureNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500
) -> float:
    """Fraction of ``images`` ``(N, 3, H, W)`` whose body type ``net`` predicts right."""
    was_training = net.training
    net.eval()
    right = sum(
        int((net.classify(images[i : i + batch_size]) == labels[i : i + batch_size]).sum())
        for i in range(0, len(images), batch_size)
    )
    net.train(was_training)
    return right / len(images)


def train_feature_net(
    num_train: int = 8144,
    num_test: int = 2000,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 3e-3,
    aux_weight: float = 0.5,
    seed: int = 0,
    data_seed: int = 0,
    log=print,
) -> tuple[ToyCarsFeatureNet, float]:
    """Train on the toy-cars train split with random flips; returns ``(net, held-out test accuracy)``.

    Loss: cross-entropy on the body type + ``aux_weight`` x mean squared error on the standardized
    drawing parameters (a horizontal flip negates ``facing`` and mirrors the centre). AdamW with a
    one-cycle learning rate. Deterministic given ``seed`` (weights, order, flips) and ``data_seed`` (images).
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    images, labels, params = _toy_cars_with_params(num_train, "train", data_seed)
    test_images, test_labels = toy_cars.generate(num_test, 32, seed=data_seed, split="test")
    mean, std = params.mean(0), params.std(0).clamp(min=1e-6)
    net = ToyCarsFeatureNet()
    steps = epochs * (num_train // batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(num_train, generator=g)
        for i in range(num_train // batch_size):
            idx = order[i * batch_size : (i + 1) * batch_size]
            # (B, 3, 32, 32) uint8, (B,), (B, 29)
            x, y, p = (
                images[idx],
                labels[idx],
                params[idx].clone(),
            )
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            p[flip, FLIP_NEGATE] = -p[flip, FLIP_NEGATE]
            p[flip, FLIP_MIRROR] = 1.0 - p[flip, FLIP_MIRROR]
            feats = net(x)
            loss = F.cross_entropy(net.head(feats), y) + aux_weight * F.mse_loss(
                net.aux_head(feats), (p - mean) / std
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log(
            f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}, test accuracy {accuracy(net, test_images, test_labels):.4f}"
        )
    return net.eval(), accuracy(net, test_images, test_labels)


def save_feature_net(
    net: ToyCarsFeatureNet,
    path: str | os.PathLike,
    test_accuracy: float,
    command: str,
    dtype=torch.float16,
) -> int:
    """Write weights (``dtype``), architecture, held-out accuracy and the training command; returns the file size."""
    arch = {**asdict(net.cfg), "widths": list(net.cfg.widths)}
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "config": arch,
            "state_dict": state,
            "test_accuracy": test_accuracy,
            "command": command,
            "classes": list(toy_cars.BODY_TYPES),
        },
        path,
    )
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ddpm_lib.features",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO_WEIGHTS,
        help="weights file to write (default: %(default)s)",
    )
    p.add_argument(
        "--num-train", type=int, default=8144, help="toy-cars train images (default: %(default)s)"
    )
    p.add_argument(
        "--num-test",
        type=int,
        default=2000,
        help="held-out toy-cars test images (default: %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule"
    )
    p.add_argument(
        "--aux-weight",
        type=float,
        default=0.5,
        help="weight of the drawing-parameter regression (0: classifier only)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    net, acc = train_feature_net(
        args.num_train,
        args.num_test,
        args.epochs,
        args.batch_size,
        args.lr,
        args.aux_weight,
        args.seed,
    )
    minutes = (time.perf_counter() - t0) / 60
    command = "python -m ddpm_lib.features " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    size = save_feature_net(net, args.out, acc, command.strip())
    print(
        f"held-out accuracy {acc:.4f} on {args.num_test} test images; trained in {minutes:.1f} min; wrote {args.out} ({size / 1024:.0f} KiB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
