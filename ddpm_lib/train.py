"""Train a DDPM from the command line: ``python -m ddpm_lib.train --help``.

Examples::

    python -m ddpm_lib.train --preset ddpm --out runs/ddpm32 --max-steps 1600  # notebook 05's model
    python -m ddpm_lib.train --preset cpu --out runs/toy32 --max-minutes 10     # notebook 08's recipe
    python -m ddpm_lib.train --out runs/toy32 --resume                  # continue a stopped run
    python -m ddpm_lib.train --preset cpu --class-cond --out runs/toy32_cond  # labels + classifier-free guidance
    python -m ddpm_lib.train --preset flow --out runs/flow32 --max-steps 708   # flow matching, notebook 11
    torchrun --nproc_per_node=4 -m ddpm_lib.train --dataset cifar10 --out runs/cifar --batch-size 128
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from typing import get_args

import torch.distributed

from ddpm_lib.config import PRESETS, Optimizer, TrainConfig
from ddpm_lib.data import DatasetName
from ddpm_lib.devices import Precision, device_report
from ddpm_lib.diffusion import LossType, PredictionType, VarianceType
from ddpm_lib.outputs import file_size_limit_as_error
from ddpm_lib.samplers import SAMPLERS
from ddpm_lib.schedules import SCHEDULES
from ddpm_lib.training import Trainer, TrainingDiverged, TrainingInterrupted
from ddpm_lib.unet import MODEL_PRESETS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ddpm_lib.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, loss.csv, samples/")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt (model options must match)",
    )
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="cpu",
        help="defaults to start from: 'paper' (Ho et al. 2020, CIFAR-10), 'ddpm' (the paper's "
        "objective and schedule on the small U-Net, notebook 05), 'cpu' (the recipe notebook 08 "
        "improves it into: v + Min-SNR-5, cosine, T = 500, no attention) or 'flow' (flow matching on "
        "the cpu recipe's network, notebook 11)",
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)"
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=get_args(DatasetName))
    g.add_argument("--data-root", help="folder of the data (required for --dataset folder)")
    g.add_argument(
        "--num-images", type=int, help="toy_cars: number of training images (default 8144)"
    )
    g.add_argument("--image-size", type=int)
    g = p.add_argument_group("model and diffusion")
    g.add_argument("--model", choices=MODEL_PRESETS)
    g.add_argument("--dropout", type=float)
    g.add_argument(
        "--base-channels",
        type=int,
        help="U-Net width: channels of the first level (default: the preset's)",
    )
    g.add_argument(
        "--num-res-blocks",
        type=int,
        help="U-Net depth: ResBlocks per level (default: the preset's)",
    )
    g.add_argument(
        "--attention-resolutions",
        type=int,
        nargs="*",
        metavar="SIZE",
        help="feature-map sizes with self-attention; none given: no attention (default: the preset's)",
    )
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--num-timesteps", type=int, help="T")
    g.add_argument("--loss-type", choices=get_args(LossType))
    g.add_argument(
        "--prediction-type",
        choices=get_args(PredictionType),
        help="what the network predicts: eps (default) or v",
    )
    g.add_argument(
        "--snr-gamma",
        type=float,
        help="Min-SNR-gamma loss weighting (Hang et al. 2023 use 5; default: none)",
    )
    g.add_argument(
        "--variance-type",
        choices=get_args(VarianceType),
        help="reverse variance of the sample grids",
    )
    g.add_argument(
        "--class-cond",
        action="store_true",
        default=None,
        help="class-conditional on the dataset's labels (toy_cars: body type; a folder: its sub-folders)",
    )
    g.add_argument(
        "--p-uncond",
        type=float,
        help="probability of dropping a label, for classifier-free guidance (default 0.1)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, help="global batch size")
    g.add_argument("--lr", type=float)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--optimizer", choices=get_args(Optimizer))
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--grad-clip", type=float)
    g.add_argument("--ema-decay", type=float)
    g.add_argument(
        "--no-ema-warmup",
        dest="ema_warmup",
        action="store_false",
        default=None,
        help="EMA at --ema-decay from the first step (default: decay_k = min(decay, (1 + k) / (10 + k)))",
    )
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("speed")
    g.add_argument("--precision", choices=get_args(Precision))
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None)
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="CUDA: deterministic kernels, so a resumed run matches an uninterrupted one exactly (slower)",
    )
    g = p.add_argument_group("budget and outputs")
    g.add_argument(
        "--max-steps",
        type=int,
        help="total optimiser steps of the run (a resumed run stops here too)",
    )
    g.add_argument("--max-minutes", type=float, help="wall-clock budget of this invocation")
    g.add_argument("--log-every", type=int)
    g.add_argument(
        "--sample-every", type=int, help="save a sample grid every N steps (0: at the end only)"
    )
    g.add_argument("--checkpoint-every", type=int)
    g.add_argument("--num-sample-images", type=int, help="images in each sample grid")
    g.add_argument(
        "--sample-sampler",
        choices=list(SAMPLERS),
        help="sampler of the grids (default: generate's)",
    )
    g.add_argument("--sample-steps", type=int, help="DDIM steps of the grids (default min(50, T))")
    g.add_argument("--sample-eta", type=float, help="DDIM eta of the grids (default 1)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset's config with every option given on the command line applied on top."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return PRESETS[args.preset](**given)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    file_size_limit_as_error()
    # OSError: FileNotFoundError, a full disk
    try:
        config = config_from_args(args)
        trainer = Trainer(
            config, args.out, resume=args.resume, device=args.device, progress=not args.no_progress
        )
        if trainer.is_main:
            print(device_report(trainer.device, trainer.precision))
            print(trainer.describe(), flush=True)
        status = 0
        try:
            trainer.fit()
        except TrainingInterrupted as exc:  # saved at a step boundary: say how to continue
            status = 128 + exc.signum  # 130 for Ctrl-C, the shell's convention
            if trainer.is_main:
                print(
                    f"interrupted by {signal.Signals(exc.signum).name} at step {exc.step}; checkpoint saved to {exc.path}; "
                    f"continue with: python -m ddpm_lib.train --out {args.out} --resume",
                    file=sys.stderr,
                )
    except (
        ValueError,
        OSError,
        RuntimeError,
        TrainingDiverged,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training began: no traceback
        print(
            f"interrupted; nothing more was saved (a checkpoint in {args.out}, if any, is kept)",
            file=sys.stderr,
        )
        return 130
    if trainer.is_main and status == 0:
        last = trainer.history[-1] if trainer.history else {}
        print(
            f"stopped at step {trainer.step}; loss {last.get('loss', float('nan')):.4f}; checkpoint {args.out}/checkpoint.pt"
        )
    # leave the process group before exit: gloo aborts a process that exits inside one
    if trainer.distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
