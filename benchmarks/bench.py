"""Speed and memory of the default toy-cars model, fp32 and bf16 side by side, measured within one run.

    python benchmarks/bench.py --json benchmarks/results.json [--compile] [--steps 15] [--emulate-avx2]

Measures the time to draw the default 8,144 toy cars, then, on the default toy-cars model and batch
(``TrainConfig.cpu_demo()``):
- the matrix-multiply peak in fp32 and bf16 (512x512, the size MEASUREMENTS.md quotes, and 4096x4096);
- a forward pass of the shipped pretrained U-Net, batch 16, 32 px, in fp32 and bf16 autocast;
- training images/s: the plain fp32 eager loop of Algorithm 1, the engine's step (``Trainer.train_step``)
  in fp32 and in bf16 (both channels-last), and the precision ``"auto"`` chooses;
- sampling with the one sampling path (``ddpm_lib.sampling.generate``), 32 images, DDIM-10, in fp32, bf16
  and ``"auto"`` (once with its measurement, as a first use pays it, once from the cache), and DDIM-50 of
  64 images with ``"auto"``;
- achieved training GFLOP/s (torch.utils.flop_counter) against the bf16 matmul peak; peak resident memory.
With ``--emulate-avx2`` it repeats the precision measurement in a subprocess with
``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``: a CPU without bf16 instructions, emulated.
Compare figures within one run only: the machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddpm_lib.checkpoints import load_ema_model, model_args
from ddpm_lib.config import TrainConfig
from ddpm_lib.data import from_uint8, load_dataset
from ddpm_lib.devices import PrecisionChoice, cpu_signature
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.sampling import generate
from ddpm_lib.schedules import make_betas
from ddpm_lib.training import Trainer
from ddpm_lib.unet import build_model


def timed(fn, steps: int, warmup: int = 2) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls (median of the per-call times)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def matmul_gflops(n: int, dtype: torch.dtype, steps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, steps=steps) / 1e9


def fp32_eager_step(model, diffusion, batch, optimizer):
    loss = diffusion.training_loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def forward_ms(model, precision: str, batch: int = 16) -> float:
    x, t = torch.randn(batch, 3, 32, 32), torch.randint(0, 1000, (batch,))
    choice = PrecisionChoice(precision, "cpu", "argument")

    def run():
        with torch.no_grad(), choice.autocast():
            model(x, t)

    return 1000 * timed(run, steps=3, warmup=1)


def emulated_avx2_ratio() -> dict:
    """The precision measurement in a subprocess whose oneDNN and ATen kernels are limited to AVX2."""
    code = (
        "import json, torch; from ddpm_lib.checkpoints import load_ema_model; from ddpm_lib.devices import resolve_precision;"
        "m, _, _ = load_ema_model(); c = resolve_precision('auto', 'cpu', m, 'sample', (3, 32, 32), use_cache=False);"
        "print(json.dumps({'name': c.name, 'speedup': c.speedup}))"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    p.add_argument("--compile", action="store_true", help="also measure the engine's step with torch.compile")
    p.add_argument("--emulate-avx2", action="store_true", help="also measure the precision choice with kernels limited to AVX2")
    args = p.parse_args(argv)
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp()  # measure afresh: "auto" pays its measurement here
    torch.manual_seed(0)
    cfg = TrainConfig.cpu_demo(num_images=1024)
    dataset = load_dataset("toy_cars", image_size=cfg.image_size, num_images=1024)
    diffusion = GaussianDiffusion(make_betas(cfg.schedule, cfg.num_timesteps))
    batch = from_uint8(dataset.images[: cfg.batch_size])
    r: dict[str, float | str] = {"machine": f"{cpu_signature()}, torch {torch.__version__}, {platform.machine()}",
                                 "model": cfg.model, "batch_size": cfg.batch_size, "image_size": cfg.image_size}  # fmt: skip

    t0 = time.perf_counter()
    load_dataset("toy_cars", image_size=32)  # the default 8,144 training images
    r["toy_cars_8144_seconds"] = time.perf_counter() - t0

    # 1. matmul peaks
    for n in (512, 4096):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            r[f"matmul{n}_gflops_{name}"] = matmul_gflops(n, dtype, steps=10 if n == 4096 else 50)
    # 2. forward of the shipped model, batch 16
    pretrained, _, _ = load_ema_model()
    for name in ("fp32", "bf16"):
        r[f"forward16_ms_{name}"] = forward_ms(pretrained, name)

    # 3. training: the plain fp32 eager loop, then the engine in fp32, bf16 and auto
    model = build_model(**model_args(cfg)).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    r["train_img_s_fp32_eager"] = cfg.batch_size / timed(lambda: fp32_eager_step(model, diffusion, batch, opt), args.steps)
    for name in ("fp32", "bf16", "auto"):
        trainer = Trainer(TrainConfig.cpu_demo(num_images=1024, precision=name), None, dataset=dataset, progress=False)
        r[f"train_img_s_engine_{name}"] = cfg.batch_size / timed(trainer.train_step, args.steps)
        if name == "auto":
            r["auto_train_choice"] = str(trainer.precision)
    if args.compile:
        compiled = Trainer(TrainConfig.cpu_demo(num_images=1024, compile=True), None, dataset=dataset, progress=False)
        t0 = time.perf_counter()
        compiled.train_step()
        r["compile_seconds"] = time.perf_counter() - t0
        r["train_img_s_engine_auto_compiled"] = cfg.batch_size / timed(compiled.train_step, args.steps)
    with FlopCounterMode(display=False) as counter:
        diffusion.training_loss(build_model(**model_args(cfg)), batch).backward()
    flops = counter.get_total_flops() / len(batch)
    r["train_gflop_per_image"] = flops / 1e9
    best_train = max(r["train_img_s_engine_fp32"], r["train_img_s_engine_bf16"])
    r["train_gflops_best"] = flops * best_train / 1e9
    r["fraction_of_bf16_matmul_peak"] = r["train_gflops_best"] / r["matmul4096_gflops_bf16"]

    # 4. sampling through the one sampling path, the shipped model
    model, diffusion32, _ = load_ema_model()
    for name in ("fp32", "bf16"):
        s = generate(model, diffusion32, 32, 32, num_steps=10, precision=name)  # warm-up
        r[f"sample32_ddim10_s_{name}"] = min(generate(model, diffusion32, 32, 32, num_steps=10, precision=name).seconds for _ in range(2))
    t0 = time.perf_counter()
    s = generate(model, diffusion32, 32, 32, num_steps=10, precision="auto")
    r["sample32_ddim10_s_auto_incl_measurement"] = time.perf_counter() - t0
    r["auto_sample_choice"] = str(s.precision)
    r["sample32_ddim10_s_auto_cached"] = generate(model, diffusion32, 32, 32, num_steps=10, precision="auto").seconds
    best = min(r["sample32_ddim10_s_fp32"], r["sample32_ddim10_s_bf16"])
    r["auto_vs_best_sampling_first_use"] = r["sample32_ddim10_s_auto_incl_measurement"] / best
    r["auto_vs_best_sampling_cached"] = r["sample32_ddim10_s_auto_cached"] / best
    r["sample64_ddim50_s_auto"] = generate(model, diffusion32, 64, 32, num_steps=50, precision="auto").seconds
    if args.emulate_avx2:
        emu = emulated_avx2_ratio()
        r["emulated_avx2_choice"], r["emulated_avx2_bf16_speedup"] = emu["name"], emu["speedup"]

    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r["bf16_vs_fp32_matmul512"] = r["matmul512_gflops_bf16"] / r["matmul512_gflops_fp32"]
    r["bf16_vs_fp32_forward16"] = r["forward16_ms_fp32"] / r["forward16_ms_bf16"]
    r["bf16_vs_fp32_train_engine"] = r["train_img_s_engine_bf16"] / r["train_img_s_engine_fp32"]
    r["speedup_best_engine_vs_fp32_eager"] = best_train / r["train_img_s_fp32_eager"]
    for k, v in r.items():
        print(f"{k:40s} {v:.3f}" if isinstance(v, float) else f"{k:40s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return r


if __name__ == "__main__":
    main()
