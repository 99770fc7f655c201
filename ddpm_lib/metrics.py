"""Sample-quality metrics (the evaluation stage): FID, KID, improved precision/recall, class coverage.

Every metric compares a set of generated images with a reference set of real ones in the feature
space of a network (``ddpm_lib.features`` for the toy cars, InceptionV3 for CIFAR-10 and Stanford Cars):

- FID, Frechet distance between Gaussians fitted to the two feature sets (Heusel et al. 2017, Eq. 6),
  ``||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))``: torchmetrics' ``FrechetInceptionDistance``;
- KID, the unbiased squared MMD with the kernel ``(x.y / d + 1)^3`` averaged over random subsets
  (Binkowski et al. 2018, Eq. 4): torchmetrics' ``KernelInceptionDistance``;
- precision and recall (Kynkaanniemi et al. 2019, Eqs. 1-3): the share of generated features inside
  the real manifold (the union of balls reaching each real feature's k-th nearest real neighbour),
  and the share of real features inside the generated manifold;
- ``class_tv``: total-variation distance between the body-type histograms of samples and data, both
  classified by the feature network (so that its rare mistakes count on both sides).

Images are accepted as uint8 NHWC numpy arrays ``(N, H, W, 3)`` (ADM's ``.npz`` format), uint8 tensors
``(N, 3, H, W)``, or float tensors ``(N, 3, H, W)`` in [-1, 1], which are first rounded to uint8 exactly
as a saved sample would be (``data.to_uint8``): a tensor scores the same as its ``.npz``.

Features are computed once per image set and fed to torchmetrics through an identity feature module,
so scoring many sample sets against one reference, bootstraps and baselines cost no extra network passes.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ddpm_lib.data import load_dataset, to_uint8

INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_NAME}"
)


class InceptionUnavailableError(RuntimeError):
    """InceptionV3 features need torch-fidelity and a weights file that cannot be fetched offline."""


@dataclass(eq=False)  # compared and hashed by identity: the baseline cache keys on the objects
class FeatureSet:
    """The features of one image set, computed once and scored against any number of others."""

    features: torch.Tensor  # (N, F), stored float64
    # (N,) classes predicted by the feature network, if it classifies
    labels: torch.Tensor | None = None

    def __post_init__(self):
        self.features = self.features.double()

    def __len__(self) -> int:
        return len(self.features)


# ---------------------------------------------------------------------------------- images and features
def as_uint8_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC numpy ``(N, H, W, 3)``, uint8 ``(N, 3, H, W)`` or float [-1, 1] ``(N, 3, H, W)`` tensors -> uint8 ``(N, 3, H, W)``."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"numpy images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}"
            )
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"image tensors must be (N, 3, H, W), got {getattr(images, 'shape', type(images))}"
        )
    if images.dtype == torch.uint8:
        return images.cpu()
    if not images.is_floating_point():
        raise ValueError(f"image tensors must be uint8 or float in [-1, 1], got {images.dtype}")
    if len(images) and images.min() >= 0:
        warnings.warn(
            "float images have no negative value: images must be in [-1, 1], not [0, 1]",
            stacklevel=2,
        )
    return to_uint8(images.detach().float().cpu())


@torch.no_grad()
def compute_features(
    images: np.ndarray | torch.Tensor, extractor: nn.Module, batch_size: int = 500
) -> FeatureSet:
    """Features ``(N, F)`` of ``images`` (any form :func:`as_uint8_images` takes) and classes ``(N,)`` if ``extractor`` classifies.

    ``extractor`` maps uint8 ``(B, 3, H, W)`` to ``(B, F)``; with a ``classify_features`` method
    (``features (B, F) -> (B,)``, as ``ddpm_lib.features``' network) the classes come from the same pass.
    """
    images = as_uint8_images(images)
    feats, labels = [], []
    classify = getattr(extractor, "classify_features", None)
    for i in range(0, len(images), batch_size):
        f = extractor(images[i : i + batch_size])
        feats.append(f.float().cpu())
        if classify is not None:
            labels.append(classify(f).cpu())
    if not feats:
        raise ValueError("no images to score")
    return FeatureSet(torch.cat(feats), torch.cat(labels) if labels else None)


_REFERENCE_CACHE: dict[tuple, FeatureSet] = {}
_BASELINE_CACHE: dict[
    tuple, dict
] = {}  # real-vs-real scores per (held-out set, reference, options)


def reference_features(
    dataset: str,
    image_size: int,
    count: int,
    extractor: nn.Module,
    split: str = "train",
    root: str | os.PathLike | None = None,
    seed: int = 0,
) -> FeatureSet:
    """Features of ``count`` real images of ``dataset``'s ``split`` at ``image_size``, cached in memory.

    Toy cars: images ``0 .. count - 1`` of the split; other datasets: ``count`` images drawn at random
    (``seed``) without replacement, all of them when the split is smaller. The cache key is
    ``(dataset, image_size, count, split, root, seed, extractor)``.
    """
    # the key keeps the extractor alive
    key = (
        dataset,
        image_size,
        count,
        split,
        str(root),
        seed,
        extractor,
    )
    if key not in _REFERENCE_CACHE:
        if dataset == "toy_cars":
            ds = load_dataset("toy_cars", image_size, split, num_images=count)
            images = ds.images
        else:
            ds = load_dataset(dataset, image_size, split, root=root)
            pick = torch.randperm(len(ds.images), generator=torch.Generator().manual_seed(seed))[
                :count
            ]
            images = ds.images[pick]  # random order: precision/recall take the first images
        _REFERENCE_CACHE[key] = compute_features(images, extractor)
    return _REFERENCE_CACHE[key]


class _Precomputed(nn.Module):
    """Identity "feature network": lets torchmetrics compute its statistics on features computed once."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def inception_feature_extractor(weights_path: str | os.PathLike | None) -> nn.Module:
    """InceptionV3 ``pool3`` features (2048-d) as torchmetrics' ``FrechetInceptionDistance(feature=2048)`` computes them.

    Needs ``torch-fidelity`` and the weights file ``weights-inception-2015-12-05-6726825d.pth`` given as
    ``weights_path`` (nothing is downloaded). Images: uint8 ``(B, 3, H, W)``; floats in [-1, 1] are converted.
    """
    fix = f"download {INCEPTION_WEIGHTS_URL} on a machine with internet and pass its path (--inception-weights PATH)"
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as exc:
        raise InceptionUnavailableError(
            f"InceptionV3 features need torch-fidelity: pip install torch-fidelity; then {fix}"
        ) from exc
    if weights_path is None or not os.path.isfile(weights_path):
        raise InceptionUnavailableError(f"no InceptionV3 weights file at {weights_path}: {fix}")
    inception = FrechetInceptionDistance(
        feature=2048, feature_extractor_weights_path=str(weights_path)
    ).inception

    class _Inception(nn.Module):
        num_features = 2048

        def __init__(self):
            super().__init__()
            self.net = inception

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net(images if images.dtype == torch.uint8 else to_uint8(images))

    return _Inception().eval()


# ---------------------------------------------------------------------------------- the metrics
def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between feature sets ``(N, F)`` and ``(M, F)`` (Heusel et al. 2017, Eq. 6), by torchmetrics in float64."""
    fid = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    return float(fid.compute())


def kernel_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID ``(mean, std over subsets)`` of feature sets ``(N, F)``, ``(M, F)`` (Binkowski et al. 2018, Eq. 4), by torchmetrics.

    ``subset_size`` is capped at the smaller set; a set no larger than it enters every subset whole, so the
    std then only reflects the other set's subsets. Subsets are drawn from a generator seeded with ``seed``.
    """
    subset_size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(
            feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=subset_size
        )
    kid.update(real.double(), real=True)
    kid.update(fake.double(), real=False)
    with torch.random.fork_rng():  # torchmetrics draws the subsets from the global generator
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return float(mean), float(std)


def knn_radii(features: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Distance from each of ``features`` ``(N, F)`` to its k-th nearest other point: ``(N,)`` (Kynkaanniemi et al. 2019, Eq. 2)."""
    if len(features) <= k:
        raise ValueError(
            f"precision/recall with k={k} needs more than {k} points, got {len(features)}"
        )
    radii = []
    for i in range(0, len(features), chunk):
        d = torch.cdist(features[i : i + chunk], features)  # (chunk, N)
        # a point is not its own neighbour
        d[torch.arange(len(d)), torch.arange(i, i + len(d))] = math.inf
        radii.append(d.kthvalue(k, dim=1).values)
    return torch.cat(radii)


def in_manifold(
    points: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """Whether each of ``points`` ``(M, F)`` lies in a ball ``||p - support_j|| <= radii_j``: bool ``(M,)`` (Eq. 1)."""
    return torch.cat(
        [
            (torch.cdist(points[i : i + chunk], support) <= radii).any(dim=1)
            for i in range(0, len(points), chunk)
        ]
    )


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Eq. 3) of feature sets ``(N, F)``, ``(M, F)``.

    Both manifolds are unions of k-NN balls; the paper uses equal set sizes (k-NN radii shrink as sets grow).
    """
    precision = in_manifold(fake, real, knn_radii(real, k)).double().mean()
    recall = in_manifold(real, fake, knn_radii(fake, k)).double().mean()
    return float(precision), float(recall)


def class_tv(
    sample_labels: torch.Tensor, reference_labels: torch.Tensor, num_classes: int
) -> float:
    """Total-variation distance ``(1/2) sum_c |p_samples(c) - p_reference(c)|`` between class histograms of ``(N,)``, ``(M,)`` labels."""
    p = torch.bincount(sample_labels, minlength=num_classes).double() / len(sample_labels)
    q = torch.bincount(reference_labels, minlength=num_classes).double() / len(reference_labels)
    return float((p - q).abs().sum() / 2)


# ---------------------------------------------------------------------------------- scoring a set
def _scores(
    fake: FeatureSet,
    real: FeatureSet,
    num_classes: int | None,
    k: int,
    kid_subsets: int,
    kid_subset_size: int,
    seed: int,
) -> dict[str, float | None]:
    n = min(len(fake), len(real))  # precision/recall on equal set sizes, as in the paper
    precision, recall = precision_recall(real.features[:n], fake.features[:n], k)
    kid_mean, kid_std = kernel_distance(
        real.features, fake.features, kid_subsets, kid_subset_size, seed
    )
    tv = (
        class_tv(fake.labels, real.labels, num_classes)
        if num_classes and fake.labels is not None and real.labels is not None
        else None
    )
    return {
        "fid": frechet_distance(real.features, fake.features),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "class_tv": tv,
        "num_samples": len(fake),
    }


def _bootstrap(
    fake: FeatureSet, real: FeatureSet, num_classes: int | None, k: int, resamples: int, seed: int
) -> dict[str, float | None]:
    """Standard deviation of FID, precision, recall and class_tv over ``resamples`` bootstrap resamples of ``fake``.

    Resamples draw ``len(fake)`` samples with replacement. Precision resamples the per-sample "inside the
    real manifold" flags; recall rebuilds the generated manifold from the distinct samples drawn (a
    duplicate would be its own nearest neighbour), so its spread is that of a set about 63% as large.
    """
    g = torch.Generator().manual_seed(seed)
    n = min(len(fake), len(real))
    real_pr, fake_pr = real.features[:n], fake.features[:n]
    inside = in_manifold(fake_pr, real_pr, knn_radii(real_pr, k)).double()
    fid = FrechetInceptionDistance(
        feature=_Precomputed(real.features.shape[1]), reset_real_features=False
    )
    fid.update(real.features, real=True)  # the reference statistics, accumulated once
    values: dict[str, list[float]] = {"fid": [], "precision": [], "recall": [], "class_tv": []}
    for _ in range(resamples):
        idx = torch.randint(len(fake), (len(fake),), generator=g)
        fid.reset()
        fid.update(fake.features[idx], real=False)
        values["fid"].append(float(fid.compute()))
        pr_idx = idx[idx < n]
        values["precision"].append(float(inside[pr_idx].mean()))
        distinct = fake_pr[pr_idx.unique()]
        if len(distinct) > k:
            values["recall"].append(
                float(in_manifold(real_pr, distinct, knn_radii(distinct, k)).double().mean())
            )
        if num_classes and fake.labels is not None and real.labels is not None:
            values["class_tv"].append(class_tv(fake.labels[idx], real.labels, num_classes))
    return {key: float(np.std(v, ddof=1)) if len(v) > 1 else None for key, v in values.items()}


def evaluate_samples(
    samples: np.ndarray | torch.Tensor | FeatureSet,
    reference: np.ndarray | torch.Tensor | FeatureSet,
    feature_extractor: nn.Module,
    *,
    baseline: np.ndarray | torch.Tensor | FeatureSet | None = None,
    bootstrap: int = 10,
    k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    num_classes: int | None = None,
    seed: int = 0,
) -> dict:
    """Score ``samples`` against ``reference``: FID, KID, precision/recall (k = 3), class_tv, with their noise.

    ``samples``, ``reference`` and ``baseline``: uint8 NHWC numpy ``(N, H, W, 3)``, uint8 or float [-1, 1]
    tensors ``(N, 3, H, W)``, or :class:`FeatureSet` s already computed with ``feature_extractor``.
    ``baseline`` is a held-out set of *real* images, best of the samples' size: it is scored the same way,
    giving the value a perfect generator would get at this sample count. Returns a dict with ``fid``,
    ``kid_mean``, ``kid_std`` (std over KID subsets), ``precision``, ``recall``, ``class_tv`` (None
    without a classifier), ``num_samples``, ``num_reference``; ``spread``: the std of fid, precision,
    recall and class_tv over ``bootstrap`` resamples of the samples; ``baseline``: the same figures for
    the real held-out set (or None).
    """
    fs = [
        x if isinstance(x, FeatureSet) or x is None else compute_features(x, feature_extractor)
        for x in (samples, reference, baseline)
    ]
    fake, real, held_out = fs
    if fake.features.shape[1] != real.features.shape[1]:
        raise ValueError(
            f"samples have {fake.features.shape[1]} features but the reference has {real.features.shape[1]}"
        )
    if num_classes is None:
        num_classes = getattr(feature_extractor, "num_classes", None)
    result = _scores(fake, real, num_classes, k, kid_subsets, kid_subset_size, seed)
    result["num_reference"] = len(real)
    result["spread"] = (
        _bootstrap(fake, real, num_classes, k, bootstrap, seed) if bootstrap > 1 else None
    )
    result["baseline"] = None
    if held_out is not None:
        key = (held_out, real, num_classes, k, kid_subsets, kid_subset_size, seed)
        if key not in _BASELINE_CACHE:
            _BASELINE_CACHE[key] = _scores(
                held_out, real, num_classes, k, kid_subsets, kid_subset_size, seed
            )
        result["baseline"] = dict(_BASELINE_CACHE[key])
    return result
