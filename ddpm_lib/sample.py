"""Draw samples from a trained model: ``python -m ddpm_lib.sample --help``.

Writes a PNG grid (``--out samples.png``) or, for ``--out samples.npz``, the samples as ``arr_0``,
uint8 ``(N, H, W, 3)``, the format of the ADM evaluation suite (Dhariwal & Nichol 2021).
Without ``--checkpoint`` it uses the pretrained toy-cars weights shipped in ``assets/``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from ddpm_lib.data import to_uint8
from ddpm_lib.training import Precision, load_ema_model, resolve_precision, select_device

PRETRAINED = Path(__file__).resolve().parent.parent / "assets" / "pretrained_toy_cars_32.pt"


def generate(model, diffusion, num_samples: int, image_size: int, sampler: str = "ddim", steps: int | None = 50, eta: float = 1.0,
             seed: int = 0, batch_size: int = 256, device: torch.device | str = "cpu", precision: str = "auto",
             progress: bool = False) -> np.ndarray:  # fmt: skip
    """Sample ``num_samples`` images in batches; returns uint8 ``(N, H, W, 3)``.

    Batch ``i`` uses the generator seeded with ``seed + i``, so the result does not depend on memory
    but is fixed by ``seed`` and ``batch_size``.
    """
    device = torch.device(device)
    dtype = resolve_precision(precision, device)
    out = np.empty((num_samples, image_size, image_size, 3), dtype=np.uint8)
    for i, start in enumerate(range(0, num_samples, batch_size)):
        n = min(batch_size, num_samples - start)
        g = torch.Generator(device).manual_seed(seed + i)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            x = diffusion.sample(model, (n, 3, image_size, image_size), sampler, None if sampler == "ddpm" else steps, eta,
                                 generator=g, device=device, progress=progress)  # fmt: skip
        out[start : start + n] = to_uint8(x.float()).permute(0, 2, 3, 1).cpu().numpy()
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ddpm_lib.sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None, help=f"checkpoint.pt or exported weights (default: {PRETRAINED.name})")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (ddpm always runs all T)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM stochasticity: 0 deterministic, 1 = DDPM variance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None)
    p.add_argument("--precision", choices=get_args(Precision), default="auto")
    p.add_argument("--out", type=Path, required=True, help="a .png grid or a .npz batch (arr_0, uint8 NHWC)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out.suffix not in (".png", ".npz"):
        print(f"error: --out must end in .png or .npz, got {args.out}", file=sys.stderr)
        return 2
    if args.num_samples < 1 or args.batch_size < 1:
        print("error: --num-samples and --batch-size must be >= 1", file=sys.stderr)
        return 2
    checkpoint = args.checkpoint or PRETRAINED
    device = select_device(args.device)
    try:
        model, diffusion, cfg = load_ema_model(checkpoint, device)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    images = generate(model, diffusion, args.num_samples, cfg.image_size, args.sampler, args.steps, args.eta, args.seed,
                      args.batch_size, device, args.precision, progress=True)  # fmt: skip
    elapsed = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".npz":
        np.savez(args.out, arr_0=images)
    else:
        from torchvision.utils import save_image

        grid = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        save_image(grid, args.out, nrow=int(math.ceil(math.sqrt(len(images)))))
    print(
        f"wrote {len(images)} samples to {args.out} ({args.sampler}, {elapsed:.1f} s, {len(images) / elapsed:.1f} img/s) from {checkpoint}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
