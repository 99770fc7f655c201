"""Draw samples from a trained model: ``python -m ddpm_lib.sample --help``.

Writes a PNG grid (``--out samples.png``) or, for ``--out samples.npz``, the samples as ``arr_0``,
uint8 ``(N, H, W, 3)``, the format of the ADM evaluation suite (Dhariwal & Nichol 2021).
Without ``--checkpoint`` it uses the pretrained toy-cars weights shipped with the package. A
class-conditional checkpoint draws the classes given by ``--class`` (names or indices, several
cycled over the samples) with classifier-free guidance ``--guidance-scale`` w (Ho & Salimans 2022:
``(1 + w) eps_cond - w eps_uncond``; 0 = the conditional model alone), e.g.
``python -m ddpm_lib.sample --checkpoint ddpm_lib/weights/pretrained_toy_cars_cond_32.pt --class pickup --guidance-scale 3 --out pickups.png``.
``--info`` prints the file's model card (how it was trained, its measured scores, the command that
reproduces it) and exits without sampling.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from ddpm_lib.checkpoints import PRETRAINED, load_ema_model
from ddpm_lib.devices import Precision, device_report, resolve_precision, select_device
from ddpm_lib.model_card import describe_file
from ddpm_lib.outputs import check_output, file_size_limit_as_error, write_atomic
from ddpm_lib.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS, Spacing
from ddpm_lib.sampling import Samples, generate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ddpm_lib.sample",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help=f"checkpoint.pt or exported weights (default: the shipped {PRETRAINED.name})",
    )
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument(
        "--sampler",
        choices=list(SAMPLERS),
        default=DEFAULT_SAMPLER,
        help=f"the sampler (notebook 10 measures them; default {DEFAULT_SAMPLER})",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"steps (noise levels) of the sampler (default: min({DEFAULT_STEPS}, T)); ddpm always runs all T; "
        "heun takes 2 network evaluations a step",
    )
    p.add_argument(
        "--spacing",
        choices=get_args(Spacing),
        default=None,
        help="the levels: the model's timesteps evenly spaced, or EDM's (default: the sampler's own)",
    )
    p.add_argument(
        "--eta",
        type=float,
        default=None,
        help="DDIM stochasticity in [0, 1]: 0 deterministic, 1 = DDPM's variance (default 1)",
    )
    p.add_argument(
        "--class",
        dest="classes",
        nargs="+",
        default=None,
        metavar="CLASS",
        help="class names or indices of a class-conditional checkpoint, cycled over the samples (default: all classes in turn)",
    )
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=0.0,
        help="classifier-free guidance w >= 0 (0: none; needs a class-conditional model)",
    )
    p.add_argument(
        "--guidance-interval",
        type=int,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="guide only at timestep indices LO..HI (0..T-1); the other steps cost one network pass",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N or mps (default: a GPU when present)"
    )
    p.add_argument(
        "--precision",
        choices=get_args(Precision),
        default="auto",
        help="auto: measured on this machine (see README)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="a .png grid or a .npz batch (arr_0, uint8 NHWC)"
    )
    p.add_argument(
        "--info",
        action="store_true",
        help="print the checkpoint's model card (recipe, data, training, metrics, command) and exit",
    )
    return p


def check_writable(path: Path, checkpoint: Path | None = None) -> None:
    """Refuse an output path that cannot be written or is the input checkpoint, before any sampling work."""
    check_output(path, "--out", (".png", ".npz"), [("the input --checkpoint", checkpoint)])


def parse_classes(
    given: list[str] | None, class_names: tuple[str, ...], num_classes: int, num_samples: int
) -> torch.Tensor | None:
    """Labels ``(num_samples,)`` cycling over the ``--class`` names or indices; every class in turn when none are given."""
    if not num_classes:
        if given:
            raise ValueError(
                "--class needs a class-conditional checkpoint (trained with --class-cond); this one was trained without labels"
            )
        return None
    names = list(class_names) or [str(i) for i in range(num_classes)]
    indices = []
    for name in given or [str(i) for i in range(num_classes)]:
        if name in names:
            indices.append(names.index(name))
        elif name.isdigit() and int(name) < num_classes:
            indices.append(int(name))
        else:
            raise ValueError(
                f"unknown class {name!r}; this checkpoint knows {', '.join(names[:20])}{' ...' if len(names) > 20 else ''} "
                f"(or indices 0-{num_classes - 1})"
            )
    return torch.tensor(indices).repeat(num_samples // len(indices) + 1)[:num_samples]


def _write_samples(samples: Samples, out: Path) -> None:
    """A ``.npz`` batch (``arr_0``, uint8 NHWC) or a ``.png`` grid of ``samples``, written atomically."""
    if out.suffix.lower() == ".npz":
        write_atomic(out, lambda f: np.savez(f, arr_0=samples.to_uint8_nhwc()))
    else:
        from torchvision.utils import save_image

        nrow = int(math.ceil(math.sqrt(len(samples.images))))
        write_atomic(
            out, lambda f: save_image((samples.images + 1) / 2, f, format="png", nrow=nrow)
        )


def print_info(checkpoint: Path) -> int:
    """``--info``: print the file's model card, or what a file without one says; samples nothing."""
    try:
        print(describe_file(checkpoint))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint or PRETRAINED
    if args.info:
        return print_info(checkpoint)
    if args.out is None:
        parser.error("the following arguments are required: --out (or --info)")
    file_size_limit_as_error()
    # OSError: FileNotFoundError, a full disk
    try:
        check_writable(args.out, checkpoint)
        if args.eta is not None and args.sampler != "ddim":
            raise ValueError(f"--eta is a DDIM option; the {args.sampler} sampler does not take it")
        device = select_device(args.device)
        model, diffusion, cfg = load_ema_model(checkpoint, device)
        labels = parse_classes(args.classes, cfg.class_names, cfg.num_classes, args.num_samples)
        if args.guidance_scale and labels is None:
            raise ValueError(
                "--guidance-scale needs a class-conditional checkpoint (trained with --class-cond)"
            )
        batch = min(args.batch_size, max(args.num_samples, 1), 32)
        precision = resolve_precision(
            args.precision,
            device,
            model,
            "sample",
            (3, cfg.image_size, cfg.image_size),
            batch=batch,
        )
        print(device_report(device, precision), file=sys.stderr)
        samples = generate(
            model,
            diffusion,
            args.num_samples,
            cfg.image_size,
            sampler=args.sampler,
            num_steps=args.steps,
            eta=1.0 if args.eta is None else args.eta,
            spacing=args.spacing,
            seed=args.seed,
            batch_size=args.batch_size,
            precision=precision,
            progress=True,
            labels=labels,
            guidance_scale=args.guidance_scale,
            guidance_interval=args.guidance_interval,
        )
        _write_samples(samples, args.out)
    except (
        OSError,
        ValueError,
        RuntimeError,
        FloatingPointError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.num_samples} samples to {args.out} ({args.sampler}, {samples.num_steps} steps, {samples.precision.name}, "
        f"{samples.seconds:.1f} s, {samples.images_per_second:.1f} img/s) from {checkpoint}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
