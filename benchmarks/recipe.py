"""Which CPU recipe gives the best cars per CPU minute? Quality against training minutes, measured.

    python benchmarks/recipe.py --budget 3 --out benchmarks/recipe.json                 # every recipe, 3 minutes each
    python benchmarks/recipe.py --budget 10 --recipes default lr2e-3 --out benchmarks/recipe.json

Each recipe is ``TrainConfig.cpu_demo()`` with a few fields changed (``RECIPES``). It trains on the toy cars for
``--budget`` minutes of wall clock on this machine (all its threads: run nothing else meanwhile), and at each of
``--evals`` evenly spaced points its EMA weights are scored by the evaluation stage: ``--num-samples`` DDIM-50
(eta = 1) samples against 5,000 training images in the toy-cars feature space (FID, precision, recall,
class_tv), beside as many held-out test images (the real-vs-real baseline). Scoring time is not counted in the
budget. Every run's curve (quality against training minutes) is merged into ``--out`` under
``budget_<N>min``, with the machine it ran on; rerunning a recipe replaces its curve.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ddpm_lib.config import TrainConfig
from ddpm_lib.data import load_dataset
from ddpm_lib.devices import cpu_signature
from ddpm_lib.features import load_feature_extractor
from ddpm_lib.metrics import compute_features, evaluate_samples, reference_features
from ddpm_lib.sampling import generate
from ddpm_lib.training import Trainer

RECIPES: dict[str, dict] = {
    "default": {},  # TrainConfig.cpu_demo(): small U-Net, batch 64, lr 1e-3, warm-up 100, EMA 0.999, linear, T = 1000
    "lr2e-3": {"lr": 2e-3},
    "lr5e-4": {"lr": 5e-4},
    "batch32": {"batch_size": 32},
    "batch128": {"batch_size": 128},
    "cosine": {"schedule": "cosine"},
    "tiny": {"model": "tiny"},
    "ema0.995": {"ema_decay": 0.995},
    "T500": {"num_timesteps": 500},
}


def score(trainer: Trainer, extractor, reference, held_out, num_samples: int) -> dict:
    out = generate(trainer.ema.module, trainer.diffusion, num_samples, trainer.config.image_size, num_steps=50, eta=1.0,
                   precision=trainer.sample_precision)  # fmt: skip
    scores = evaluate_samples(compute_features(out.images, extractor), reference, extractor, baseline=held_out, bootstrap=0)
    keep = ("fid", "precision", "recall", "class_tv")
    return {**{k: scores[k] for k in keep}, "baseline": {k: scores["baseline"][k] for k in keep}}


def run(name: str, budget_min: float, evals: int, num_samples: int, extractor, reference, held_out) -> dict:
    cfg = TrainConfig.cpu_demo(**RECIPES[name], checkpoint_every=10**9)
    trainer = Trainer(cfg, None, progress=False)  # no run folder: no checkpoint or sample grid inside the timed budget
    curve, trained_s = [], 0.0
    for i in range(1, evals + 1):
        start = time.perf_counter()
        trainer.fit(max_steps=10**9, max_minutes=budget_min * i / evals - trained_s / 60)
        trained_s += time.perf_counter() - start
        point = {"minutes": trained_s / 60, "step": trainer.step, "images_seen": trainer.step * cfg.batch_size,
                 "loss": trainer.history[-1]["loss"] if trainer.history else None,
                 **score(trainer, extractor, reference, held_out, num_samples)}  # fmt: skip
        curve.append(point)
        print(f"{name:>9} {point['minutes']:5.1f} min step {point['step']:>5}: FID {point['fid']:6.2f} precision "
              f"{point['precision']:.3f} recall {point['recall']:.3f}", flush=True)  # fmt: skip
    return {"overrides": RECIPES[name], "precision": trainer.precision.name, "curve": curve}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=3.0, help="training minutes per recipe")
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--evals", type=int, default=2, help="scoring points per run, evenly spaced in the budget")
    p.add_argument("--num-samples", type=int, default=250)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    extractor = load_feature_extractor()
    reference = reference_features("toy_cars", 32, 5000, extractor)
    held_out = compute_features(load_dataset("toy_cars", 32, "test", num_images=args.num_samples).images, extractor)
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    key = f"budget_{args.budget:g}min"
    section = result.setdefault(key, {"runs": {}})
    section["machine"] = f"{cpu_signature()}, torch {torch.__version__}"
    section["settings"] = {"num_samples": args.num_samples, "evals": args.evals, "sampler": "DDIM-50, eta 1"}
    print(
        f"{len(args.recipes)} recipes x {args.budget:g} min + scoring: about {len(args.recipes) * (args.budget + args.evals * 0.8):.0f} min"
    )
    for name in args.recipes:
        section["runs"][name] = run(name, args.budget, args.evals, args.num_samples, extractor, reference, held_out)
        args.out.write_text(json.dumps(result, indent=1))  # after every run: a stopped study keeps what it measured
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
