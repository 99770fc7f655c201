"""Speed and memory of the default toy-cars model, measured as figures within one run.

    python benchmarks/bench.py --json benchmarks/results.json [--compile] [--steps 20]

Measures, on the default toy-cars model and batch (TrainConfig.cpu_demo()):
- training images/s: the plain fp32 eager loop of Algorithm 1, and the engine's fast settings
  (bf16 autocast + channels-last, the Trainer's own train_step), optionally torch.compile;
- sampling images/s for DDPM with 1000 steps and DDIM with 50 steps (bf16, batch 64; the DDPM figure is
  timed over 100 of its 1000 identical steps and scaled, since every step costs the same);
- achieved training GFLOP/s (torch.utils.flop_counter) against the peak of a large bf16 matmul;
- peak resident memory.
Compare figures within one run only: the machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddpm_lib.data import load_dataset
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.schedules import make_betas
from ddpm_lib.training import TrainConfig, Trainer, build_model_from_config


def timed(fn, steps: int, warmup: int = 3) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls (median of the per-call times)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def matmul_peak_gflops(n: int = 4096, dtype=torch.bfloat16) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, steps=10) / 1e9


def fp32_eager_step(model, diffusion, batch, optimizer):
    loss = diffusion.training_loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def train_flops_per_image(cfg: TrainConfig, diffusion, batch) -> float:
    model = build_model_from_config(cfg)
    with FlopCounterMode(display=False) as counter:
        diffusion.training_loss(model, batch).backward()
    return counter.get_total_flops() / len(batch)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--steps", type=int, default=15, help="timed training steps per variant")
    p.add_argument("--compile", action="store_true", help="also measure the fast settings with torch.compile")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    cfg = TrainConfig.cpu_demo(num_images=1024)
    dataset = load_dataset("toy_cars", image_size=cfg.image_size, num_images=1024)
    diffusion = GaussianDiffusion(make_betas(cfg.schedule, cfg.num_timesteps))
    batch = dataset.images[: cfg.batch_size].float() / 127.5 - 1
    results: dict[str, float | str] = {"machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
                                       "model": cfg.model, "batch_size": cfg.batch_size, "image_size": cfg.image_size}  # fmt: skip

    # 1. the plain fp32 eager loop (Algorithm 1 as a tutorial writes it)
    model = build_model_from_config(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    s = timed(lambda: fp32_eager_step(model, diffusion, batch, opt), args.steps)
    results["train_img_s_fp32_eager"] = cfg.batch_size / s

    # 2. the engine's fast settings: Trainer.train_step (bf16 autocast, channels-last, EMA, clipping)
    trainer = Trainer(cfg, None, dataset=dataset, progress=False)
    s = timed(trainer.train_step, args.steps)
    results["train_img_s_fast"] = cfg.batch_size / s
    if args.compile:
        compiled = Trainer(TrainConfig.cpu_demo(num_images=1024, compile=True), None, dataset=dataset, progress=False)
        s = timed(compiled.train_step, args.steps, warmup=5)
        results["train_img_s_fast_compiled"] = cfg.batch_size / s

    # 3. FLOPs and the matmul peak
    flops = train_flops_per_image(cfg, diffusion, batch)
    results["train_gflop_per_image"] = flops / 1e9
    results["train_gflops_fast"] = flops * results["train_img_s_fast"] / 1e9
    results["matmul_peak_gflops_bf16"] = matmul_peak_gflops()
    results["matmul_peak_gflops_fp32"] = matmul_peak_gflops(dtype=torch.float32)

    # 4. sampling (bf16 autocast, EMA model in eval mode, batch 64)
    ema = trainer.ema.module.eval()
    x = torch.randn(64, 3, cfg.image_size, cfg.image_size).contiguous(memory_format=torch.channels_last)

    def ddpm_steps(k=100):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = x
            for t in range(999, 999 - k, -1):
                y = diffusion.p_sample(ema, y, t)

    s = timed(ddpm_steps, steps=2, warmup=1)
    results["sample_img_s_ddpm1000"] = 64 / (s * 10)  # 100 timed steps of 1000
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = timed(lambda: diffusion.sample(ema, tuple(x.shape), "ddim", 50, 1.0), steps=2, warmup=1)
    results["sample_img_s_ddim50"] = 64 / s

    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["speedup_fast_vs_fp32_eager"] = results["train_img_s_fast"] / results["train_img_s_fp32_eager"]
    results["fraction_of_bf16_matmul_peak"] = results["train_gflops_fast"] / results["matmul_peak_gflops_bf16"]
    for k, v in results.items():
        print(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
