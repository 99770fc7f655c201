"""Score samples against the data: ``python -m ddpm_lib.evaluate --help``.

Two ways in:

- ``--samples FILE.npz`` scores samples already drawn (``arr_0``: uint8 ``(N, H, W, 3)``, the format of
  the ADM evaluation suite and of ``python -m ddpm_lib.sample --out FILE.npz``);
- ``--checkpoint PATH`` (alone: the shipped pretrained toy-cars model) first draws ``--num-samples`` through
  ``ddpm_lib.sampling.generate``, then also estimates the model's negative log-likelihood in bits/dim on
  held-out test images (Ho et al. 2020, Eq. 5, via ``ddpm_lib.bound.bits_per_dim``); ``--write-card``
  adds the scores to the checkpoint's model card.

The reference is ``--num-reference`` images (default 5,000) of the dataset's train split at the samples'
size. Features: the toy-cars feature network (``ddpm_lib.features``) for ``toy_cars``, InceptionV3 for the
other datasets (needs torch-fidelity and ``--inception-weights``). Every figure comes with its noise: the
std over ``--bootstrap`` resamples of the samples, and the real-vs-real baseline, the score of as many
held-out *test* images as there are samples (what a perfect generator would get).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zipfile
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from ddpm_lib.data import DatasetName, DatasetUnavailableError, from_uint8, load_dataset
from ddpm_lib.metrics import (
    InceptionUnavailableError,
    as_uint8_images,
    compute_features,
    evaluate_samples,
    reference_features,
)
from ddpm_lib.model_card import add_metrics, evaluation_metrics
from ddpm_lib.outputs import file_size_limit_as_error, write_atomic, write_text_atomic
from ddpm_lib.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS, Spacing

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
MIN_SAMPLES = 10


class EvaluationInputError(ValueError):
    """Bad input to the evaluation (a file, a shape, a dataset); the CLI prints it as ``error: ...`` and exits 2."""


def load_samples_npz(path: Path) -> np.ndarray:
    """``arr_0`` of an ADM-format ``.npz``, checked: uint8 ``(N, H, W, 3)`` with square images and N >= 10."""
    if not path.is_file():
        raise EvaluationInputError(f"no samples file at {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "arr_0" not in npz.files:
                raise EvaluationInputError(
                    f"{path} has no arr_0 (it holds {', '.join(npz.files) or 'nothing'}); expected ADM's format"
                )
            images = npz["arr_0"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, EvaluationInputError):
            raise
        raise EvaluationInputError(
            f"{path} is not a readable .npz file ({type(exc).__name__})"
        ) from exc
    check_samples(images, str(path))
    return images


def check_samples(images: np.ndarray, what: str) -> None:
    """Refuse anything but uint8 ``(N, H, W, 3)`` square images with N >= ``MIN_SAMPLES``."""
    if images.dtype != np.uint8:
        raise EvaluationInputError(
            f"{what}: arr_0 must be uint8 (N, H, W, 3) in [0, 255], got dtype {images.dtype}"
        )
    if images.ndim != 4 or images.shape[-1] != 3:
        raise EvaluationInputError(
            f"{what}: arr_0 must be uint8 (N, H, W, 3) with 3 colour channels last, got shape {images.shape}"
        )
    if images.shape[1] != images.shape[2] or images.shape[1] < 8:
        raise EvaluationInputError(
            f"{what}: images must be square and at least 8 px, got {images.shape[1]}x{images.shape[2]}"
        )
    if len(images) < MIN_SAMPLES:
        raise EvaluationInputError(
            f"{what}: {len(images)} samples; at least {MIN_SAMPLES} are needed"
        )


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="python -m ddpm_lib.evaluate", description=__doc__, formatter_class=fmt
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples", type=Path, help="a .npz of samples (arr_0: uint8 (N, H, W, 3))")
    src.add_argument(
        "--checkpoint",
        type=Path,
        nargs="?",
        const="pretrained",
        help="sample from this checkpoint first (alone: the shipped pretrained toy-cars model)",
    )
    g = p.add_argument_group("sampling (with --checkpoint)")
    # defaults in SAMPLING_DEFAULTS: an option given with --samples is refused, not ignored
    g.add_argument("--sampler", choices=list(SAMPLERS), help=f"default {DEFAULT_SAMPLER}")
    g.add_argument(
        "--steps",
        type=int,
        help=f"sampler steps (default min({DEFAULT_STEPS}, T); ddpm runs all T)",
    )
    g.add_argument("--spacing", choices=get_args(Spacing), help="default: the sampler's own")
    g.add_argument(
        "--eta",
        type=float,
        help="DDIM stochasticity: 0 deterministic, 1 = DDPM variance (default 1)",
    )
    g.add_argument("--num-samples", type=int, help="default 1000")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, help="default 256")
    g.add_argument("--precision", choices=PRECISIONS, help="default auto")
    g.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)"
    )
    g.add_argument(
        "--save-samples", type=Path, default=None, help="also write the samples drawn to this .npz"
    )
    g.add_argument(
        "--bpd-images",
        type=int,
        help="held-out test images for bits/dim (0: skip; default 64)",
    )
    g.add_argument(
        "--bpd-timesteps",
        type=int,
        help="log-spaced timesteps for bits/dim, an estimate within a few per cent (0: all T, exact; default 50)",
    )
    r = p.add_argument_group("reference and metrics")
    r.add_argument(
        "--dataset",
        default=None,
        help=f"{', '.join(get_args(DatasetName))} (default: the checkpoint's, else toy_cars)",
    )
    r.add_argument(
        "--data-root", default=None, help="where the dataset lives (stanford_cars, cifar10, folder)"
    )
    r.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="reference image size (default: the samples'; must match them)",
    )
    r.add_argument(
        "--num-reference",
        type=int,
        default=5000,
        help="reference images from the train split (default %(default)s)",
    )
    r.add_argument(
        "--features",
        type=Path,
        default=None,
        help="toy-cars feature-network weights (default: the shipped file)",
    )
    r.add_argument(
        "--inception-weights",
        type=Path,
        default=None,
        help="weights-inception-2015-12-05-6726825d.pth, for other datasets",
    )
    r.add_argument(
        "--bootstrap",
        type=int,
        default=10,
        help="bootstrap resamples for the spread (0: none; default %(default)s)",
    )
    r.add_argument("--kid-subsets", type=int, default=100)
    r.add_argument("--kid-subset-size", type=int, default=1000)
    r.add_argument("--no-baseline", action="store_true", help="skip the real-vs-real baseline")
    p.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    p.add_argument(
        "--write-card",
        action="store_true",
        help="with --checkpoint: add the scores to the checkpoint's model card (--info prints them)",
    )
    return p


SAMPLING_DEFAULTS = {
    "sampler": DEFAULT_SAMPLER,
    "steps": None,
    "spacing": None,
    "eta": 1.0,
    "num_samples": 1000,
    "batch_size": 256,
    "precision": "auto",
    "save_samples": None,
    "bpd_images": 64,
    "bpd_timesteps": 50,
}


def check_options(args) -> None:
    """Refuse options that would change nothing, and outputs that cannot be written or are inputs; before any work.

    Fills the sampling defaults (:data:`SAMPLING_DEFAULTS`) in ``args``.
    """
    from ddpm_lib.checkpoints import PRETRAINED
    from ddpm_lib.outputs import check_output

    given = [name for name in SAMPLING_DEFAULTS if getattr(args, name, None) is not None]
    if args.samples is not None and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise EvaluationInputError(
            f"{flags}: sampling option(s), for --checkpoint; --samples scores samples already drawn"
        )
    if args.sampler == "ddpm" and args.steps is not None:
        raise EvaluationInputError("--steps: the ddpm sampler runs all T steps")
    if args.eta is not None and args.sampler not in (None, "ddim"):
        raise EvaluationInputError(
            f"--eta is a DDIM option; the {args.sampler} sampler does not take it"
        )
    for name, default in SAMPLING_DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, default)
    checkpoint = PRETRAINED if str(args.checkpoint) == "pretrained" else args.checkpoint
    if args.write_card and args.checkpoint is None:
        raise EvaluationInputError(
            "--write-card writes a checkpoint's scores into its model card: give --checkpoint FILE"
        )
    inputs = [
        ("the input --samples", args.samples),
        ("the input --checkpoint", checkpoint),
        ("the input --features", args.features),
        ("the input --inception-weights", args.inception_weights),
    ]
    if args.save_samples is not None:
        check_output(args.save_samples, "--save-samples", (".npz",), inputs)
    if args.json is not None:
        check_output(
            args.json, "--json", (), [*inputs, ("the output --save-samples", args.save_samples)]
        )


def _load_model(args, device: torch.device) -> tuple:
    """``(model, diffusion, cfg, path)`` of ``--checkpoint`` (the shipped pretrained model when no path is given)."""
    from ddpm_lib.checkpoints import PRETRAINED, load_ema_model

    path = PRETRAINED if str(args.checkpoint) == "pretrained" else args.checkpoint
    return (*load_ema_model(path, device), path)


def _sample(args, model, diffusion, cfg, path) -> tuple[np.ndarray, dict]:
    """Draw ``--num-samples`` through the project's one sampling path: uint8 NHWC and how they were made."""
    from ddpm_lib.sampling import generate

    samples = generate(
        model,
        diffusion,
        args.num_samples,
        cfg.image_size,
        sampler=args.sampler,
        num_steps=args.steps,  # None for ddpm: check_options refused --steps there
        eta=args.eta,
        spacing=args.spacing,
        seed=args.seed,
        batch_size=args.batch_size,
        precision=args.precision,
        progress=True,
    )
    info = {
        "checkpoint": str(path),
        "sampler": samples.sampler,
        "num_steps": samples.num_steps,
        "spacing": args.spacing,
        "eta": samples.eta,
        "sampling_precision": samples.precision.name,
        "seed": args.seed,
        "sampling_seconds": round(samples.seconds, 1),
    }
    return samples.to_uint8_nhwc(), info


def estimate_bits_per_dim(
    model,
    diffusion,
    dataset: str,
    image_size: int,
    root,
    num_images: int,
    num_timesteps: int,
    seed: int,
) -> dict:
    """Mean bits/dim (Ho et al. 2020, Eq. 5) of ``num_images`` test images, in float32; an estimate with a timestep subset."""
    from ddpm_lib.bound import bits_per_dim, log_spaced_timesteps

    if dataset == "toy_cars":
        images = load_dataset("toy_cars", image_size, "test", num_images=num_images).images
    else:
        ds = load_dataset(
            dataset, image_size, "test" if dataset != "folder" else "train", root=root
        )
        images = ds.images[
            torch.randperm(len(ds.images), generator=torch.Generator().manual_seed(seed))[
                :num_images
            ]
        ]
    T = diffusion.num_timesteps
    steps = (
        None if num_timesteps == 0 or num_timesteps >= T else log_spaced_timesteps(T, num_timesteps)
    )
    device = next(model.parameters()).device
    out = bits_per_dim(
        diffusion,
        model,
        from_uint8(images).to(device),
        torch.Generator(device).manual_seed(seed),
        steps,
        progress=True,
    )
    total = out["total"].double().cpu()
    return {
        "bits_per_dim": float(total.mean()),
        "bits_per_dim_sem": float(total.std() / math.sqrt(len(total))) if len(total) > 1 else None,
        "bpd_images": len(total),
        "bpd_timesteps": len(out["timesteps"]),
        "bpd_exact": steps is None,
    }


def _feature_extractor(dataset: str, args, device: torch.device):
    if dataset == "toy_cars":
        from ddpm_lib.features import load_feature_extractor

        return load_feature_extractor(args.features, device), "toy-cars feature network"
    from ddpm_lib.metrics import inception_feature_extractor

    return inception_feature_extractor(args.inception_weights).to(device), "InceptionV3 pool3"


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def format_table(result: dict) -> str:
    """The figures as a text table: metric, value, +- spread, real-vs-real baseline."""
    spread, base = result.get("spread") or {}, result.get("baseline") or {}
    rows = [
        ("FID", "fid", spread.get("fid")),
        ("KID", "kid_mean", result.get("kid_std")),
        ("precision (k=3)", "precision", spread.get("precision")),
        ("recall (k=3)", "recall", spread.get("recall")),
        ("class TV", "class_tv", spread.get("class_tv")),
    ]
    lines = [f"{'metric':<16} {'value':>10} {'± spread':>10} {'real-vs-real':>13}"]
    lines += [
        f"{name:<16} {_fmt(result.get(key)):>10} {_fmt(sd):>10} {_fmt(base.get(key)):>13}"
        for name, key, sd in rows
    ]
    if "bits_per_dim" in result:
        lines.append(
            f"{'bits/dim':<16} {_fmt(result['bits_per_dim']):>10} {_fmt(result.get('bits_per_dim_sem')):>10} {'-':>13}"
        )
    lines.append(
        f"{result['num_samples']} samples against {result['num_reference']} reference images ({result['features']}); "
        "spread: std over bootstrap resamples (KID: std over subsets; bits/dim: standard error)"
    )
    return "\n".join(lines)


def run(args) -> dict:
    """Everything ``main`` does but printing: returns the result dict (raises on bad input)."""
    from ddpm_lib.devices import select_device

    check_options(args)
    for name in ("num_samples", "batch_size", "num_reference", "kid_subsets", "kid_subset_size"):
        if getattr(args, name) < 1:
            raise EvaluationInputError(
                f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
            )
    if args.bootstrap < 0 or args.bpd_images < 0 or args.bpd_timesteps < 0:
        raise EvaluationInputError("--bootstrap, --bpd-images and --bpd-timesteps must be >= 0")
    device = select_device(args.device)
    t0 = time.perf_counter()
    info, trained = {}, None
    if args.samples is not None:
        images = load_samples_npz(args.samples)
        size, dataset, root = images.shape[1], args.dataset or "toy_cars", args.data_root
    else:
        trained = _load_model(args, device)  # (model, diffusion, cfg, path)
        cfg = trained[2]
        size, dataset, root = (
            cfg.image_size,
            args.dataset or cfg.dataset,
            args.data_root or cfg.data_root,
        )
    # every check before the slow part (sampling, the reference)
    if dataset not in get_args(DatasetName):
        raise EvaluationInputError(
            f"unknown dataset {dataset!r}; valid choices: {', '.join(get_args(DatasetName))}"
        )
    if args.image_size is not None and args.image_size != size:
        raise EvaluationInputError(
            f"the samples are {size}x{size} but the reference is {args.image_size}x{args.image_size}"
        )
    extractor, features_name = _feature_extractor(dataset, args, device)
    if trained is not None:
        images, info = _sample(args, *trained)
        if args.save_samples is not None:
            write_atomic(args.save_samples, lambda f: np.savez(f, arr_0=images))
    t1 = time.perf_counter()
    reference = reference_features(dataset, size, args.num_reference, extractor, "train", root)
    baseline = None
    if not args.no_baseline and dataset != "folder":
        baseline = reference_features(dataset, size, len(images), extractor, "test", root, seed=1)
    samples = compute_features(as_uint8_images(images), extractor)
    result = evaluate_samples(
        samples,
        reference,
        extractor,
        baseline=baseline,
        bootstrap=args.bootstrap,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        seed=args.seed,
    )
    seconds = round(time.perf_counter() - t1, 1)
    result.update(
        dataset=dataset,
        image_size=size,
        features=features_name,
        bootstrap=args.bootstrap,
        scoring_seconds=seconds,
        **info,
    )
    if trained is not None and args.bpd_images > 0:
        model, diffusion = trained[:2]
        result.update(
            estimate_bits_per_dim(
                model,
                diffusion,
                dataset,
                size,
                root,
                args.bpd_images,
                args.bpd_timesteps,
                args.seed,
            )
        )
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    file_size_limit_as_error()
    try:
        result = run(args)
        print(format_table(result))
        if args.json is not None:
            write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.json}")
        if args.write_card:
            source = f"python -m ddpm_lib.evaluate{f' --json {args.json}' if args.json else ''}"
            add_metrics(result["checkpoint"], evaluation_metrics(result, source))
            print(f"wrote the scores into the model card of {result['checkpoint']}")
    except (
        EvaluationInputError,
        DatasetUnavailableError,
        InceptionUnavailableError,
        OSError,
        ValueError,
    ) as exc:
        # one line, whatever the message
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:  # a diverged model: not bad input, but no traceback either
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
