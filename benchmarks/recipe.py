"""Which CPU recipe gives the best cars per CPU minute? Quality against training minutes, measured.

A recipe is the CPU recipe the study started from (``CPU_RECIPE_BEFORE_STUDY``) with a few fields changed (``GROUPS``: one axis of the issue's sweep per
group, e.g. learning rate, batch, width, loss). The study has two stages:

    python benchmarks/recipe.py time --out benchmarks/recipe.json      # on the 2-core CPU, nothing else running
    python benchmarks/recipe.py train --budget 10 --device cuda --jobs 8 --out benchmarks/recipe.json

``time`` measures each recipe's seconds per training step on this CPU (the measured precision, channels-last,
data loading and the EMA update included; median of ``--steps`` steps after warm-up). ``train`` then trains each
recipe for the steps that ``--budget`` CPU minutes buy at that speed (budget * 60 / seconds per step), on any
device: the steps are the same computation in the same bf16/fp32 arithmetic, so a fast device only finishes them
sooner. The CPU minutes of every point are steps x the timed seconds per step; ``--device cpu --jobs 1`` on the
timed machine itself gives the same curves by its own clock (the README compares one such run with its
prediction). At each of ``--points`` CPU minutes the EMA weights are scored by the evaluation stage:
``--num-samples`` DDIM-50 (eta = 1) samples against 5,000 training images in the toy-cars feature space (FID,
precision, recall, class_tv), beside as many held-out test images (the real-vs-real baseline).

Order of work: the default at ``--seeds`` and every variant at seed 0; then ``combined``, the default changed by
the best variant of each group whose mean final FID beats the default's mean by more than twice the default's
seed spread (a coordinate-wise search), and ``combined-top3``, the same with the three groups that gain most;
then the variants' further seeds until ``--deadline`` minutes. Results merge into ``--out`` under ``budget_<N>min`` after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ddpm_lib.config import CPU_RECIPE_BEFORE_STUDY, TrainConfig
from ddpm_lib.devices import cpu_signature
from ddpm_lib.outputs import write_text_atomic

GROUPS: dict[str, dict[str, dict]] = {
    "lr": {"lr5e-4": {"lr": 5e-4}, "lr2e-3": {"lr": 2e-3}},
    "warm-up": {"warmup0": {"warmup_steps": 0}, "warmup500": {"warmup_steps": 500}},
    "batch": {"batch32": {"batch_size": 32}, "batch128": {"batch_size": 128}},
    "EMA": {
        "ema0.995": {"ema_decay": 0.995},
        "ema0.9995": {"ema_decay": 0.9995},
        "no-ema-warmup": {"ema_warmup": False},
    },
    "schedule": {"cosine": {"schedule": "cosine"}},
    "T": {"T500": {"num_timesteps": 500}},
    "loss": {
        "v": {"prediction_type": "v_prediction"},
        "minsnr5": {"snr_gamma": 5.0},
        "v-minsnr5": {"prediction_type": "v_prediction", "snr_gamma": 5.0},
    },
    "width": {
        "tiny": {"model": "tiny"},
        "ch24": {"base_channels": 24},
        "ch48": {"base_channels": 48},
    },
    "depth": {"res1": {"num_res_blocks": 1}},
    "attention": {"no-attention": {"attention_resolutions": ()}},
    "dropout": {"dropout0.1": {"dropout": 0.1}},
}
RECIPES: dict[str, dict] = {
    "default": {},
    **{name: o for group in GROUPS.values() for name, o in group.items()},
}
# default = the CPU recipe before the study, TrainConfig.cpu_demo(**CPU_RECIPE_BEFORE_STUDY): small U-Net (ch 32, 2 blocks,
# attention at 16), batch 64, lr 1e-3, warm-up 100, EMA 0.999 with warm-up, linear schedule, T = 1000, eps, no dropout.
# The study's winner is today's TrainConfig.cpu_demo().


def config_of(overrides: dict, seed: int) -> TrainConfig:
    """The recipe: the CPU recipe the study started from, with ``overrides``."""
    return TrainConfig.cpu_demo(
        **{**CPU_RECIPE_BEFORE_STUDY, **overrides}, seed=seed, checkpoint_every=10**9, log_every=10
    )


# ---------------------------------------------------------------- stage 1: seconds per step on this CPU
# all a step's cost depends on
SPEED_FIELDS = (
    "model",
    "base_channels",
    "num_res_blocks",
    "attention_resolutions",
    "batch_size",
)


def speed_key(overrides: dict) -> str:
    """The recipe's network shape and batch, the only fields that change a step's cost."""
    return json.dumps({k: overrides[k] for k in SPEED_FIELDS if k in overrides}, sort_keys=True)


def speeds_to_time() -> dict[str, dict]:
    """Every recipe's shape and batch, and each shape with each batch (so that any combination has a timing)."""
    shapes = [o for n, o in RECIPES.items() if not set(o) - set(SPEED_FIELDS[:-1])]
    batches = [{}, *GROUPS["batch"].values()]
    todo = {speed_key(o): o for o in RECIPES.values()}
    todo.update({speed_key({**s, **b}): {**s, **b} for s in shapes for b in batches})
    return todo


def s_per_step(speeds: dict, overrides: dict) -> tuple[float, bool]:
    """``(seconds per step, measured?)``: the timing of the recipe's shape and batch, or, for a combination not timed,
    the default's time multiplied by the ratio each timed change brings (marked as estimated)."""
    if speed_key(overrides) in speeds:
        return speeds[speed_key(overrides)]["s_per_step"], True
    base = speeds[speed_key({})]["s_per_step"]
    estimate = base
    for k in SPEED_FIELDS:
        if k in overrides:
            estimate *= speeds[speed_key({k: overrides[k]})]["s_per_step"] / base
    return estimate, False


def time_recipe(overrides: dict, steps: int) -> dict:
    from ddpm_lib.training import Trainer

    trainer = Trainer(config_of(overrides, 0), None, device="cpu", progress=False)
    for _ in range(3):  # warm-up: allocator, oneDNN primitives
        trainer.train_step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - start)
    return {
        "s_per_step": statistics.median(times),
        "precision": trainer.precision.name,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
    }


# ---------------------------------------------------------------- stage 2: quality against CPU minutes
def train_recipe(
    overrides: dict,
    seed: int,
    s_per_step: float | None,
    budget: float,
    points: list[float],
    num_samples: int,
    device: str,
    score_raw: bool = False,
) -> dict:
    """Train one recipe and score its EMA weights (and its raw weights, with ``score_raw``) at each of
    ``points`` CPU minutes."""
    from ddpm_lib.data import load_dataset
    from ddpm_lib.features import load_feature_extractor
    from ddpm_lib.metrics import compute_features, evaluate_samples, reference_features
    from ddpm_lib.sampling import generate
    from ddpm_lib.training import Trainer

    extractor = load_feature_extractor(device=device)
    reference = reference_features("toy_cars", 32, 5000, extractor)
    held_out = compute_features(
        load_dataset("toy_cars", 32, "test", num_images=num_samples).images, extractor
    )
    trainer = Trainer(config_of(overrides, seed), None, device=device, progress=False)
    curve, wall = [], 0.0
    for minutes in sorted(m for m in points if m <= budget):
        start = time.perf_counter()
        if s_per_step is None:  # by this machine's clock
            trainer.fit(max_steps=10**9, max_minutes=minutes - wall / 60)
        else:
            trainer.fit(max_steps=max(1, round(minutes * 60 / s_per_step)))
        wall += time.perf_counter() - start
        keep = ("fid", "precision", "recall", "class_tv")

        def score(model):
            out = generate(
                model,
                trainer.diffusion,
                num_samples,
                32,
                num_steps=50,
                eta=1.0,
                seed=seed,
                precision=trainer.sample_precision,
            )
            features = compute_features(out.images, extractor)
            return evaluate_samples(features, reference, extractor, baseline=held_out, bootstrap=0)

        scores = score(trainer.ema.module)
        recent = [r["loss"] for r in trainer.history[-20:]]
        curve.append(
            {
                "cpu_minutes": wall / 60 if s_per_step is None else trainer.step * s_per_step / 60,
                "step": trainer.step,
                "loss": statistics.fmean(recent),
                **{k: scores[k] for k in keep},
                "baseline": {k: scores["baseline"][k] for k in keep},
            }
        )
        if score_raw:  # the weights the optimiser holds, without the average
            raw = score(trainer.model)
            curve[-1]["raw"] = {k: raw[k] for k in keep}
    return {
        "seed": seed,
        "device": str(trainer.device),
        "precision": trainer.precision.name,
        "wall_s": wall,
        "curve": curve,
    }


def one_run_command(
    out: Path, overrides: dict, seed: int, s_per_step: float, args, score_raw: bool = False
) -> list[str]:
    """The ``recipe.py one`` command that trains one recipe for ``args.budget`` CPU minutes into ``out``
    (``args``: the parsed options of a study: budget, num_samples, device, points)."""
    return [
        sys.executable,
        __file__,
        "one",
        "--out",
        str(out),
        "--overrides",
        json.dumps(overrides),
        "--seed",
        str(seed),
        "--s-per-step",
        str(s_per_step),
        "--budget",
        str(args.budget),
        "--num-samples",
        str(args.num_samples),
        "--device",
        args.device,
        *(["--score-raw"] if score_raw else []),
        "--points",
        *map(str, args.points),
    ]


def final_fids(run: dict) -> list[float]:
    return [r["curve"][-1]["fid"] for r in run.get("seeds", [])]


def combined_overrides(runs: dict, top: int | None = None) -> tuple[dict, dict]:
    """The default changed by each group's best variant that beats it clearly (only the ``top`` groups that gain
    most, when given); and the evidence."""
    base = final_fids(runs["default"])
    spread = statistics.stdev(base) if len(base) > 1 else 0.0
    bar = statistics.fmean(base) - 2 * spread
    chosen, evidence = (
        {},
        {"default_fid": statistics.fmean(base), "default_spread": spread, "bar": bar, "groups": {}},
    )
    for group, variants in GROUPS.items():
        scored = {
            n: statistics.fmean(final_fids(runs[n]))
            for n in variants
            if final_fids(runs.get(n, {}))
        }
        if not scored:
            continue
        best = min(scored, key=scored.get)
        evidence["groups"][group] = {"best": best, "fid": scored[best], "taken": scored[best] < bar}
    taken = sorted(
        (g for g, e in evidence["groups"].items() if e["taken"]),
        key=lambda g: evidence["groups"][g]["fid"],
    )
    for group in taken[:top]:
        chosen.update(RECIPES[evidence["groups"][group]["best"]])
    return chosen, evidence


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "stage",
        choices=["time", "train", "cpu", "one"],
        help="time: this CPU's seconds per step; train: the curves; cpu: recipes by this CPU's own clock",
    )
    p.add_argument("--name", default="custom", help="cpu: the name of the --overrides recipe")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--steps", type=int, default=10, help="time: steps timed per recipe")
    p.add_argument("--budget", type=float, default=10.0, help="train: CPU minutes per recipe")
    p.add_argument(
        "--points",
        type=float,
        nargs="+",
        default=[1, 2, 3, 5, 7.5, 10],
        help="train: CPU minutes scored",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="train: seeds of the default and combined recipes",
    )
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="train: runs at once (each a process with its own threads)",
    )
    p.add_argument(
        "--combined-seeds", type=int, default=3, help="train: seeds of each combined recipe"
    )
    p.add_argument(
        "--variant-seeds",
        type=int,
        default=2,
        help="train: seeds of each variant (the first at once, the rest last)",
    )
    p.add_argument(
        "--deadline", type=float, default=None, help="train: start no run after this many minutes"
    )
    p.add_argument(
        "--overrides",
        type=json.loads,
        help="cpu: a recipe as JSON TrainConfig fields (stage one: for --jobs)",
    )
    p.add_argument(
        "--score-raw", action="store_true", help="one: score the raw weights beside the EMA's"
    )
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--s-per-step", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # recipes trained on this CPU by its own clock, beside the curves predicted from its timing
    if args.stage == "cpu":
        result = json.loads(args.out.read_text()) if args.out.exists() else {}
        section = result.setdefault(f"budget_{args.budget:g}min", {}).setdefault("cpu_runs", {})
        named = (
            {n: RECIPES[n] for n in args.recipes}
            if args.overrides is None
            else {args.name: args.overrides}
        )
        for name, overrides in named.items():
            run = train_recipe(
                overrides, args.seed, None, args.budget, args.points, args.num_samples, "cpu"
            )
            section[name] = {
                "overrides": overrides,
                "machine": f"{cpu_signature()}, torch {torch.__version__}",
                **run,
            }
            last = run["curve"][-1]
            print(
                f"{name}: {last['cpu_minutes']:.1f} min, step {last['step']}: FID {last['fid']:.2f} precision {last['precision']:.3f} "
                f"recall {last['recall']:.3f}",
                flush=True,
            )
            write_text_atomic(args.out, json.dumps(result, indent=1))
        return 0
    if args.stage == "one":
        run = train_recipe(
            args.overrides,
            args.seed,
            args.s_per_step,
            args.budget,
            args.points,
            args.num_samples,
            args.device,
            score_raw=args.score_raw,
        )
        write_text_atomic(args.out, json.dumps(run))
        return 0
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    machine = f"{cpu_signature()}, torch {torch.__version__}"
    if args.stage == "time":
        timing = result.setdefault("cpu_timing", {})
        timing["machine"], speeds = machine, timing.setdefault("speeds", {})
        for key, overrides in speeds_to_time().items():
            speeds[key] = time_recipe(overrides, args.steps)
            print(
                f"{key:>70}: {speeds[key]['s_per_step'] * 1000:6.0f} ms/step ({speeds[key]['precision']})",
                flush=True,
            )
            write_text_atomic(args.out, json.dumps(result, indent=1))
        return 0
    speeds = result.get("cpu_timing", {}).get("speeds", {})
    missing = [n for n in [*args.recipes, "default"] if speed_key(RECIPES[n]) not in speeds]
    if missing:
        p.error(
            f"no CPU timing for {', '.join(missing)}: run `python benchmarks/recipe.py time --out {args.out}` on the CPU first"
        )
    section = result.setdefault(f"budget_{args.budget:g}min", {})
    section["settings"] = {
        "num_samples": args.num_samples,
        "points": args.points,
        "sampler": "DDIM-50, eta 1",
        "device": args.device,
        "train_machine": machine,
        "cpu_minutes_of": result["cpu_timing"]["machine"],
    }
    runs = section.setdefault("runs", {})
    started = time.perf_counter()

    def run_all(todo: list[tuple[str, dict, int]]) -> None:
        """Run (name, overrides, seed) jobs, --jobs at a time, each in a subprocess; merge as they finish."""
        pending, active = list(todo), []
        while pending or active:
            late = (
                args.deadline is not None and (time.perf_counter() - started) / 60 > args.deadline
            )
            while pending and len(active) < args.jobs and not late:
                name, overrides, seed = pending.pop(0)
                tmp = Path(tempfile.mkstemp(suffix=".json")[1])
                cmd = one_run_command(tmp, overrides, seed, s_per_step(speeds, overrides)[0], args)
                env = {
                    **os.environ,
                    "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // args.jobs)),
                }
                active.append((name, overrides, seed, tmp, subprocess.Popen(cmd, env=env)))
            if late:
                pending.clear()
            for job in list(active):
                name, overrides, seed, tmp, proc = job
                if proc.poll() is None:
                    continue
                active.remove(job)
                text = tmp.read_text()
                tmp.unlink()  # the worker's result file: read once, then gone
                if proc.returncode != 0:
                    print(f"{name} seed {seed}: failed (exit {proc.returncode})", flush=True)
                    continue
                run = json.loads(text)
                entry = runs.setdefault(
                    name,
                    {
                        "overrides": overrides,
                        "s_per_step": s_per_step(speeds, overrides)[0],
                        "s_per_step_measured": s_per_step(speeds, overrides)[1],
                        "seeds": [],
                    },
                )
                entry["seeds"] = [r for r in entry["seeds"] if r["seed"] != seed] + [run]
                last = run["curve"][-1]
                print(
                    f"{name:>13} seed {seed}: {last['cpu_minutes']:4.1f} CPU min, step {last['step']:>5}: FID {last['fid']:6.2f} "
                    f"precision {last['precision']:.3f} recall {last['recall']:.3f}  ({run['wall_s']:.0f} s)",
                    flush=True,
                )
                write_text_atomic(args.out, json.dumps(result, indent=1))
            time.sleep(0.5)

    variants = [n for n in args.recipes if n != "default"]
    run_all(
        [("default", {}, s) for s in args.seeds if "default" in args.recipes]
        + [(n, RECIPES[n], 0) for n in variants]
    )
    candidates = {
        "combined": combined_overrides(runs),
        "combined-top3": combined_overrides(runs, top=3),
    }
    section["combined_choice"] = {
        name: {"overrides": o, **evidence} for name, (o, evidence) in candidates.items()
    }
    todo = [
        (name, o, s)
        for s in args.seeds[: args.combined_seeds]
        for name, (o, _) in candidates.items()
        if o
    ]
    for name, _, _ in todo:
        runs.pop(name, None)
    run_all(todo)
    run_all([(n, RECIPES[n], s) for s in args.seeds[1 : args.variant_seeds] for n in variants])
    write_text_atomic(args.out, json.dumps(result, indent=1))
    print(f"wrote {args.out} after {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
