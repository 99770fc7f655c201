"""From the paper's recipe to the shipped one, one change at a time, at equal CPU minutes (notebook 08).

    python benchmarks/ladder.py time --out benchmarks/ladder.json        # on the CPU, nothing else running
    python benchmarks/ladder.py train --device cuda --jobs 8 --out benchmarks/ladder.json

The ladder starts from the paper's objective on the CPU-sized U-Net (``--preset ddpm``: eps-prediction,
linear schedule, T = 1000, attention at 16x16) and makes one change per rung, keeping the ones before:
cosine schedule, T = 500, v-prediction, Min-SNR-5, no attention. Its last rung is ``--preset cpu``, the
recipe of the shipped ``pretrained_toy_cars_32.pt``. Side arms change one thing of a rung: x_0- and
eps-prediction under the same Min-SNR-5 weighting, EMA without its warm-up, and the linear schedule at
T = 500 (notebook 01's warning).

``time`` measures the seconds per training step of the two network shapes on this CPU (with attention
and without; nothing else in a recipe changes a step's cost) with ``recipe.py``'s timer. ``train`` then
trains every recipe for the steps that ``--budget`` CPU minutes buy at that speed, on any device (the same
steps, only sooner; in the precision ``auto`` picks there), ``--seeds`` seeds each, ``--jobs`` processes at
a time. At each of ``--points`` CPU minutes 1,000 DDIM-50 (eta = 1) samples of the EMA weights, and of
the raw weights, are scored by the evaluation stage against 5,000 training images in the toy-cars feature
space. Results merge into ``--out`` after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import recipe
import torch

from ddpm_lib.devices import cpu_signature
from ddpm_lib.outputs import write_text_atomic

# each rung adds one change to the rung before it
RUNG_CHANGES: dict[str, dict] = {
    "paper": {},  # --preset ddpm: eps, linear, T = 1000, attention at 16x16
    "+cosine": {"schedule": "cosine"},
    "+T500": {"num_timesteps": 500},
    "+v": {"prediction_type": "v_prediction"},
    "+min-snr-5": {"snr_gamma": 5.0},
    "-attention": {"attention_resolutions": ()},  # --preset cpu, the shipped recipe
}
# side arms: (the rung they start from, the one change)
ARMS: dict[str, tuple[str, dict]] = {
    "eps+min-snr-5": ("-attention", {"prediction_type": "epsilon"}),
    "x0+min-snr-5": ("-attention", {"prediction_type": "sample"}),
    "no-ema-warmup": ("-attention", {"ema_warmup": False}),
    "linear-T500": ("paper", {"num_timesteps": 500}),
}


def rungs() -> dict[str, dict]:
    """Every rung's overrides of the ``paper`` rung, the changes accumulated in order."""
    out, acc = {}, {}
    for name, change in RUNG_CHANGES.items():
        acc = {**acc, **change}
        out[name] = acc
    return out


def recipes() -> dict[str, dict]:
    """Rungs and arms: each a name and its overrides of the ``paper`` rung (``recipe.config_of``)."""
    ladder = rungs()
    return {**ladder, **{name: {**ladder[base], **c} for name, (base, c) in ARMS.items()}}


def shape(overrides: dict) -> str:
    """The only field of a recipe that changes the cost of a step here."""
    no_attention = overrides.get("attention_resolutions") in ((), [])  # [] after a JSON round trip
    return "no-attention" if no_attention else "attention"


def run_jobs(args, todo: list[tuple[str, int]], result: dict) -> None:
    """Run (recipe, seed) jobs, ``--jobs`` at a time, each through ``recipe.py one``; merge as they end."""
    speeds, runs = result["cpu_timing"]["speeds"], result.setdefault("runs", {})
    started, pending, active = time.perf_counter(), list(todo), []
    threads = str(max(1, (os.cpu_count() or 2) // args.jobs))
    while pending or active:
        late = args.deadline is not None and (time.perf_counter() - started) / 60 > args.deadline
        while pending and len(active) < args.jobs and not late:
            name, seed = pending.pop(0)
            overrides = recipes()[name]
            tmp = Path(tempfile.mkstemp(suffix=".json")[1])
            s_per_step = speeds[shape(overrides)]["s_per_step"]
            cmd = recipe.one_run_command(tmp, overrides, seed, s_per_step, args, score_raw=True)
            proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": threads})
            active.append((name, seed, tmp, proc))
        if late:
            pending.clear()
        for job in list(active):
            name, seed, tmp, proc = job
            if proc.poll() is None:
                continue
            active.remove(job)
            text = tmp.read_text()
            tmp.unlink()
            if proc.returncode != 0:
                print(f"{name} seed {seed}: failed (exit {proc.returncode})", flush=True)
                continue
            run = json.loads(text)
            entry = runs.setdefault(name, {"overrides": recipes()[name], "seeds": []})
            entry["shape"] = shape(entry["overrides"])
            entry["seeds"] = [r for r in entry["seeds"] if r["seed"] != seed] + [run]
            last = run["curve"][-1]
            print(
                f"{name:>14} seed {seed}: step {last['step']:>5}, FID {last['fid']:6.2f} "
                f"(raw {last['raw']['fid']:6.2f}), recall {last['recall']:.3f} "
                f"({run['wall_s']:.0f} s)",
                flush=True,
            )
            write_text_atomic(args.out, json.dumps(result, indent=1))
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("stage", choices=["time", "train"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=12, help="time: steps timed per shape")
    p.add_argument("--budget", type=float, default=15.0, help="train: CPU minutes per run")
    p.add_argument("--points", type=float, nargs="+", default=[5, 10, 15])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arm-seeds", type=int, default=1, help="train: seeds of each side arm")
    p.add_argument("--recipes", nargs="+", choices=list(recipes()), default=list(recipes()))
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1, help="train: runs at once")
    p.add_argument(
        "--deadline", type=float, default=None, help="train: start no run after this many minutes"
    )
    p.add_argument(
        "--add",
        action="store_true",
        help="train: keep the runs in --out (same settings) and run only the missing ones",
    )
    args = p.parse_args(argv)
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    machine = f"{cpu_signature()}, torch {torch.__version__}"
    if args.stage == "time":
        speeds = {}
        for name, overrides in {"attention": {}, "no-attention": rungs()["-attention"]}.items():
            speeds[name] = recipe.time_recipe(overrides, args.steps)
            print(f"{name}: {1000 * speeds[name]['s_per_step']:.0f} ms per step", flush=True)
        result["cpu_timing"] = {"machine": machine, "speeds": speeds}
        write_text_atomic(args.out, json.dumps(result, indent=1))
        return 0
    if "cpu_timing" not in result:
        p.error(f"no CPU timing in {args.out}: run `python benchmarks/ladder.py time` on the CPU")
    gpu = f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""
    result["settings"] = {
        "budget_cpu_minutes": args.budget,
        "points": args.points,
        "num_samples": args.num_samples,
        "sampler": "DDIM-50, eta 1",
        "train_machine": f"{machine}{gpu}, {args.jobs} runs at a time",
        "cpu_minutes_of": result["cpu_timing"]["machine"],
    }
    if not args.add:  # a new ladder: no mixing with an earlier one's runs
        result.pop("runs", None)
    done = {(n, r["seed"]) for n, run in result.get("runs", {}).items() for r in run["seeds"]}
    ladder = [(n, s) for s in args.seeds for n in RUNG_CHANGES if n in args.recipes]
    arms = [(n, s) for s in args.seeds[: args.arm_seeds] for n in ARMS if n in args.recipes]
    todo = [job for job in ladder + arms if job not in done]
    started = time.perf_counter()
    run_jobs(args, todo, result)
    write_text_atomic(args.out, json.dumps(result, indent=1))
    print(f"wrote {args.out} after {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
