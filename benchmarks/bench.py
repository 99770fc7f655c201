"""Speed and memory of the default toy-cars model, fp32 and bf16 side by side, measured within one run.

    python benchmarks/bench.py --json benchmarks/results.json [--profile] [--compile] [--steps 10] [--emulate-avx2]

Measures the time to draw the default 8,144 toy cars, then, on the toy-cars model and batch of ``TrainConfig.cpu_demo()``
with attention at 16x16 (the shape of the diffusers peer; the default since the recipe study has none, a 1.28x faster step):
- the matrix-multiply peak in fp32 and bf16 (512x512, the size MEASUREMENTS.md quotes, and 4096x4096);
- a forward pass of the shipped pretrained U-Net, batch 16, 32 px, in fp32 and bf16 autocast;
- training images/s, every variant timed in turn, step after step (A, B, A, B: a busy machine slows them
  alike; ``train_spread_pct`` says how noisy): the plain fp32 eager loop of Algorithm 1, the engine's step
  (``Trainer.train_step``: channels-last, fused Adam, clipping, EMA) in fp32 and in bf16, the precision
  ``"auto"`` chooses, and the peer a user would otherwise pick, diffusers' ``UNet2DModel`` of the same
  shape (blocks 32-64-64, two ResNets per block, attention at 16x16, 1.6M parameters), trained by the same
  engine step in fp32 and in the fast setting (skipped with a note when diffusers is not installed);
  the fast setting is the engine in the precision ``"auto"`` chooses (bf16 on a CPU with bf16 instructions),
  compiled when ``--compile`` measured it faster;
- with ``--profile``: torch.profiler over engine steps in fp32 and in the fast setting, the top operators
  by self CPU time (``profile_fp32``, ``profile_fast``);
- with ``--compile``: the engine's step under torch.compile, its compile time (torch's inductor cache
  keeps the compiled kernels between runs: a second run compiles from it) and its images/s;
- sampling with the one sampling path (``ddpm_lib.sampling.generate``), 32 images, DDIM-10, in fp32, bf16
  and ``"auto"`` (once with its measurement, as a first use pays it, once from the cache), and DDIM-50 of
  64 images with ``"auto"``, against the same sampler on a contiguous (NCHW) model and noise, the layout
  ``generate`` used before it went channels-last;
- achieved training GFLOP/s (torch.utils.flop_counter) against the bf16 matmul peak; peak resident memory;
- the issue's targets, met or not (``targets``): they are stated for a CPU whose bf16 matmul is at least 4x
  its fp32, and say whether this machine is one.
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.flop_counter import FlopCounterMode

from ddpm_lib.build import model_args
from ddpm_lib.checkpoints import load_ema_model
from ddpm_lib.config import TrainConfig
from ddpm_lib.data import from_uint8, load_dataset
from ddpm_lib.devices import PrecisionChoice, cpu_signature
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.outputs import write_text_atomic
from ddpm_lib.sampling import generate
from ddpm_lib.schedules import make_betas
from ddpm_lib.training import Trainer
from ddpm_lib.unet import build_model, count_parameters

# diffusers' UNet2DModel of our "small" U-Net's shape: the peer a user would otherwise pick
PEER_ARGS = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)
# the targets, stated for a CPU whose bf16 matmul is at least 4x its fp32
TARGETS = {
    "fast_vs_fp32_eager": 2.5,
    "fraction_of_bf16_matmul_peak": 0.5,
    "fast_vs_peer_same_precision": 1.5,
    "sample64_ddim50_s_auto_max": 10.0,
}


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


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds of each call of each ``fn``, timed in turn (A, B, A, B, ...) after ``warmup`` calls each.

    A machine that other jobs slow down slows every variant alike, so their ratios hold better than
    those of variants timed one after the other.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def spread_pct(times: list[float]) -> float:
    """(max - min) / median of repeated timings, in percent: how noisy the machine was."""
    return 100 * (max(times) - min(times)) / statistics.median(times)


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


class DiffusersEps(nn.Module):
    """diffusers' ``UNet2DModel`` as an eps_theta(x_t, t) like ours: ``model(x, t) -> unet(x, t).sample``."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def attention_sizes(model: nn.Module, class_names: tuple[str, ...]) -> list[int]:
    """The feature-map sizes (H) that ``model``'s attention modules see on a 32 px input."""
    sizes, hooks = [], []
    for m in model.modules():
        if type(m).__name__ in class_names:
            hooks.append(
                m.register_forward_hook(lambda mod, args, out: sizes.append(args[0].shape[-1]))
            )
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32), torch.tensor([10]))
    for h in hooks:
        h.remove()
    return sizes


def engine_with_model(config: TrainConfig, dataset, net: nn.Module) -> Trainer:
    """The engine's step (precision, layout, optimizer, clipping, EMA) training ``net`` instead of its own U-Net."""
    trainer = Trainer(config, None, dataset=dataset, progress=False)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    trainer.model = trainer.train_model = net
    trainer.ema = AveragedModel(net, multi_avg_fn=trainer._ema_update, use_buffers=True)
    trainer.ema.requires_grad_(False)
    # the same Adam, fused on a CPU
    trainer.optimizer = type(trainer.optimizer)(net.parameters(), **trainer.optimizer.defaults)
    return trainer


def profile_table(step: Callable[[], object], steps: int = 3, top: int = 10) -> list[dict]:
    """The ``top`` operators by self CPU time over ``steps`` calls of ``step``: {op, self_ms (per step), pct}."""
    from torch.profiler import ProfilerActivity, profile

    step()  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1000 / steps,
            "pct": 100 * e.self_cpu_time_total / total,
        }
        for e in rows
    ]


def print_profile(name: str, rows: list[dict]) -> None:
    print(f"\nprofile, {name}: top operators by self CPU time, per training step of 64 images")
    print(f"  {'operator':58s} {'self ms':>9s} {'%':>6s}")
    for row in rows:
        print(f"  {row['op'][:58]:58s} {row['self_ms']:9.1f} {row['pct']:6.1f}")


def inductor_cache_entries() -> int:
    """How many entries torch's inductor cache holds (0: a cold cache, the compile starts from scratch)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return sum(1 for _ in Path(cache_dir()).rglob("*"))
    except (ImportError, OSError):
        return 0


def emulated_avx2_ratio() -> dict:
    """The precision measurement in a subprocess whose oneDNN and ATen kernels are limited to AVX2."""
    code = (
        "import json, torch; from ddpm_lib.checkpoints import load_ema_model; from ddpm_lib.devices import resolve_precision;"
        "m, _, _ = load_ema_model(); c = resolve_precision('auto', 'cpu', m, 'sample', (3, 32, 32), use_cache=False);"
        "print(json.dumps({'name': c.name, 'speedup': c.speedup}))"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile the engine's step, fp32 and fast, by operator",
    )
    p.add_argument(
        "--compile", action="store_true", help="also measure the engine's step with torch.compile"
    )
    p.add_argument("--no-peer", action="store_true", help="skip diffusers' UNet2DModel")
    p.add_argument(
        "--emulate-avx2",
        action="store_true",
        help="also measure the precision choice with kernels limited to AVX2",
    )
    args = p.parse_args(argv)
    start = time.perf_counter()
    # measure afresh: "auto" pays its measurement here
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp()
    torch.manual_seed(0)
    # the shape, the peer's: attention at 16x16
    cfg = TrainConfig.cpu_demo(num_images=1024, attention_resolutions=(16,))
    dataset = load_dataset("toy_cars", image_size=cfg.image_size, num_images=1024)
    diffusion = GaussianDiffusion(make_betas(cfg.schedule, cfg.num_timesteps))
    batch = from_uint8(dataset.images[: cfg.batch_size])
    r: dict = {
        "machine": f"{cpu_signature()}, torch {torch.__version__}, {platform.machine()}",
        "model": cfg.model,
        "batch_size": cfg.batch_size,
        "image_size": cfg.image_size,
    }

    # 0. a time estimate in fp32 steps: sampling and the rest about 82, a profile 8, a training round 3.4 (6.1 with the peer)
    model = build_model(**model_args(cfg)).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step_s = min(
        timed(lambda: fp32_eager_step(model, diffusion, batch, opt), steps=1, warmup=1)
        for _ in range(2)
    )
    estimate = step_s * (82 + 8 * args.profile + (3.4 if args.no_peer else 6.1) * (args.steps + 2))
    print(
        f"one fp32 training step: {step_s:.2f} s on {torch.get_num_threads()} threads; this run takes about "
        f"{estimate / 60:.1f} min"
        + (
            ", plus the compile (minutes when torch's inductor cache is cold)"
            if args.compile
            else ""
        ),
        flush=True,
    )

    t0 = time.perf_counter()
    load_dataset("toy_cars", image_size=32)  # the default 8,144 training images
    r["toy_cars_8144_seconds"] = time.perf_counter() - t0

    # 1. matmul peaks
    for n in (512, 4096):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            r[f"matmul{n}_gflops_{name}"] = matmul_gflops(n, dtype, steps=10 if n == 4096 else 50)
    r["bf16_vs_fp32_matmul4096"] = r["matmul4096_gflops_bf16"] / r["matmul4096_gflops_fp32"]
    # 2. forward of the shipped model, batch 16
    pretrained, _, _ = load_ema_model()
    for name in ("fp32", "bf16"):
        r[f"forward16_ms_{name}"] = forward_ms(pretrained, name)

    # 3. training, every variant in turn: the plain fp32 eager loop, the engine in fp32, bf16 and auto, the peer
    demo = lambda **kw: TrainConfig.cpu_demo(num_images=1024, attention_resolutions=(16,), **kw)  # noqa: E731
    trainers = {
        name: Trainer(demo(precision=name), None, dataset=dataset, progress=False)
        for name in ("fp32", "bf16", "auto")
    }
    auto = trainers["auto"].precision
    r["auto_train_choice"] = str(auto)
    steps: dict[str, Callable[[], object]] = {
        "fp32_eager": lambda: fp32_eager_step(model, diffusion, batch, opt)
    }
    steps |= {f"engine_{name}": t.train_step for name, t in trainers.items()}
    fast_name = auto.name  # the fast setting: the engine in the precision "auto" chose
    fast_trainer = trainers[fast_name]
    try:
        import diffusers
    except ImportError:
        diffusers = None
    if diffusers is None or args.no_peer:
        r["peer"] = "skipped: " + (
            "--no-peer" if args.no_peer else "diffusers is not installed (pip install diffusers)"
        )
    else:
        peer = DiffusersEps(diffusers.UNet2DModel(**PEER_ARGS))
        ours = build_model(**model_args(cfg))
        r["peer"] = (
            f"diffusers {diffusers.__version__} UNet2DModel{tuple(PEER_ARGS['block_out_channels'])}, the engine's step"
        )
        r["params_ours"], r["params_peer"] = count_parameters(ours), count_parameters(peer)
        r["attention_sizes_ours"] = attention_sizes(ours, ("AttentionBlock",))
        r["attention_sizes_peer"] = attention_sizes(peer, ("Attention",))
        heads = {m.heads for m in peer.modules() if type(m).__name__ == "Attention"}
        r["attention_heads_ours_peer"] = (
            f"{ours.config.num_heads} vs {','.join(map(str, sorted(heads)))}"
        )
        print(
            f"parameters: ours {r['params_ours']:,}, peer {r['params_peer']:,}; attention at sizes "
            f"{r['attention_sizes_ours']} (ours), {r['attention_sizes_peer']} (peer); heads {r['attention_heads_ours_peer']}"
        )
        steps["peer_fp32"] = engine_with_model(demo(precision="fp32"), dataset, peer).train_step
        peer_fast = DiffusersEps(diffusers.UNet2DModel(**PEER_ARGS))
        steps["peer_fast"] = engine_with_model(
            demo(precision=fast_name), dataset, peer_fast
        ).train_step
    if args.compile:
        compiled = Trainer(
            demo(precision=fast_name, compile=True), None, dataset=dataset, progress=False
        )
        r["inductor_cache_entries_before"] = inductor_cache_entries()
        t0 = time.perf_counter()
        compiled.train_step()
        r["compile_seconds"] = time.perf_counter() - t0
        steps["engine_compiled"] = compiled.train_step
    times = interleaved(steps, args.steps)
    img_s = {name: cfg.batch_size / statistics.median(ts) for name, ts in times.items()}
    r["train_img_s_fp32_eager"] = img_s["fp32_eager"]
    for name in ("fp32", "bf16", "auto"):
        r[f"train_img_s_engine_{name}"] = img_s[f"engine_{name}"]
    if args.compile:
        r["train_img_s_engine_compiled"] = img_s["engine_compiled"]
        if img_s["engine_compiled"] > img_s[f"engine_{fast_name}"]:
            fast_trainer = compiled
    r["fast_setting"] = (
        f"engine, {fast_name}"
        + (", channels-last" if cfg.channels_last else "")
        + ", fused Adam"
        + (", torch.compile" if fast_trainer is not trainers[fast_name] else "")
    )
    r["train_img_s_fast"] = (
        img_s["engine_compiled"]
        if fast_trainer is not trainers[fast_name]
        else img_s[f"engine_{fast_name}"]
    )
    if "peer_fp32" in img_s:
        r["train_img_s_peer_fp32"], r["train_img_s_peer_fast"] = (
            img_s["peer_fp32"],
            img_s["peer_fast"],
        )
        r["engine_fp32_vs_peer_fp32"] = r["train_img_s_engine_fp32"] / r["train_img_s_peer_fp32"]
        r["fast_vs_peer_fast"] = r["train_img_s_fast"] / r["train_img_s_peer_fast"]
    r["train_rounds"] = args.steps
    r["train_spread_pct"] = {name: round(spread_pct(ts), 1) for name, ts in times.items()}

    with FlopCounterMode(display=False) as counter:
        diffusion.training_loss(build_model(**model_args(cfg)), batch).backward()
    flops = counter.get_total_flops() / len(batch)
    r["train_gflop_per_image"] = flops / 1e9
    r["train_gflops_best"] = flops * r["train_img_s_fast"] / 1e9
    r["fraction_of_bf16_matmul_peak"] = r["train_gflops_best"] / r["matmul4096_gflops_bf16"]

    if args.profile:  # where the time goes, by operator
        r["profile_fp32"] = profile_table(trainers["fp32"].train_step)
        r["profile_fast"] = profile_table(fast_trainer.train_step)
    del trainers, steps, fast_trainer

    # 4. sampling through the one sampling path, the shipped model
    model, diffusion32, _ = load_ema_model()
    for name in ("fp32", "bf16"):
        s = generate(model, diffusion32, 32, 32, num_steps=10, precision=name)  # warm-up
        r[f"sample32_ddim10_s_{name}"] = min(
            generate(model, diffusion32, 32, 32, num_steps=10, precision=name).seconds
            for _ in range(2)
        )
    t0 = time.perf_counter()
    s = generate(model, diffusion32, 32, 32, num_steps=10, precision="auto")
    r["sample32_ddim10_s_auto_incl_measurement"] = time.perf_counter() - t0
    r["auto_sample_choice"] = str(s.precision)
    r["sample32_ddim10_s_auto_cached"] = generate(
        model, diffusion32, 32, 32, num_steps=10, precision="auto"
    ).seconds
    best = min(r["sample32_ddim10_s_fp32"], r["sample32_ddim10_s_bf16"])
    r["auto_vs_best_sampling_first_use"] = r["sample32_ddim10_s_auto_incl_measurement"] / best
    r["auto_vs_best_sampling_cached"] = r["sample32_ddim10_s_auto_cached"] / best
    # DDIM-50 of 64 images; against it, the same sampler on the contiguous (NCHW) model and noise: generate before channels-last
    nchw = load_ema_model()[0].to(memory_format=torch.contiguous_format)

    def nchw_sample() -> float:
        t0 = time.perf_counter()
        with s.precision.autocast():
            diffusion32.sample(
                nchw, (64, 3, 32, 32), "ddim", 50, 1.0, generator=torch.Generator().manual_seed(0)
            )
        return time.perf_counter() - t0

    runs = {"channels_last": [], "nchw": []}
    for _ in range(2):  # in turn: A, B, A, B
        runs["channels_last"].append(
            generate(model, diffusion32, 64, 32, num_steps=50, precision="auto").seconds
        )
        runs["nchw"].append(nchw_sample())
    r["sample64_ddim50_s_auto"] = min(runs["channels_last"])
    r["sample64_ddim50_s_auto_nchw"] = min(runs["nchw"])
    r["sampling_channels_last_speedup"] = (
        r["sample64_ddim50_s_auto_nchw"] / r["sample64_ddim50_s_auto"]
    )
    r["sampling_spread_pct"] = {k: round(spread_pct(v), 1) for k, v in runs.items()}
    if args.emulate_avx2:
        emu = emulated_avx2_ratio()
        r["emulated_avx2_choice"], r["emulated_avx2_bf16_speedup"] = emu["name"], emu["speedup"]

    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r["bf16_vs_fp32_matmul512"] = r["matmul512_gflops_bf16"] / r["matmul512_gflops_fp32"]
    r["bf16_vs_fp32_forward16"] = r["forward16_ms_fp32"] / r["forward16_ms_bf16"]
    r["bf16_vs_fp32_train_engine"] = r["train_img_s_engine_bf16"] / r["train_img_s_engine_fp32"]
    r["speedup_best_engine_vs_fp32_eager"] = r["train_img_s_fast"] / r["train_img_s_fp32_eager"]
    measured = {
        "fast_vs_fp32_eager": r["speedup_best_engine_vs_fp32_eager"],
        "fraction_of_bf16_matmul_peak": r["fraction_of_bf16_matmul_peak"],
        "fast_vs_peer_same_precision": r.get("fast_vs_peer_fast"),
        "sample64_ddim50_s_auto_max": r["sample64_ddim50_s_auto"],
    }
    r["targets"] = {
        "stated_for": "bf16 matmul >= 4x fp32",
        "this_machine_bf16_vs_fp32_matmul": round(r["bf16_vs_fp32_matmul4096"], 2),
        "apply_here": r["bf16_vs_fp32_matmul4096"] >= 4,
    }
    for key, target in TARGETS.items():
        value = measured[key]
        met = (
            None if value is None else (value < target if key.endswith("_max") else value >= target)
        )
        r["targets"][key] = {
            "measured": None if value is None else round(value, 3),
            "target": target,
            "met": met,
        }
    r["total_seconds"] = time.perf_counter() - start

    for k, v in r.items():
        if k.startswith("profile_"):
            continue
        print(f"{k:40s} {v:.3f}" if isinstance(v, float) else f"{k:40s} {v}")
    for k in ("profile_fp32", "profile_fast"):
        if k in r:
            print_profile("fp32" if k == "profile_fp32" else r["fast_setting"], r[k])
    if args.json:
        write_text_atomic(args.json, json.dumps(r, indent=2))
    return r


if __name__ == "__main__":
    main()
