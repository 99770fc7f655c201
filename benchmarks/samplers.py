"""Quality against network evaluations for every sampler of the family, measured (notebooks 10 and 11).

    python benchmarks/samplers.py --out benchmarks/samplers.json                      # the shipped model
    python benchmarks/samplers.py --out benchmarks/samplers.json --model flow-708 \\
        --checkpoint flow-708=ddpm_lib/weights/flow_toy_cars_32.pt --grid equal-minutes

For each (sampler, levels, steps) of ``--grid`` a model draws ``--num-samples`` images from the same seed,
scored by the evaluation stage in the toy-cars feature space against 5,000 training images (FID, KID,
precision, recall, with the std of ``--bootstrap`` resamples of the samples), beside as many held-out real
images (the real-vs-real baseline). Then a timing pass draws ``--time-images`` images per grid point
with nothing else of this script running and records seconds per image (``--extend`` scores only
the points a model's entry lacks and times them all again, in one pass). Results merge into ``--out``
under ``models.<name>``; ``choice`` names, for the shipped model, the best 50-evaluation sampler and the
fewest-evaluation one that matches it (FID within the best's bootstrap std, precision and recall within
0.03), with the speedup.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ddpm_lib.checkpoints import (
    DDPM_MODEL,
    PRETRAINED,
    WEIGHTS_DIR,
    load_checkpoint,
    load_ema_model,
)
from ddpm_lib.data import load_dataset
from ddpm_lib.devices import cpu_signature
from ddpm_lib.features import load_feature_extractor
from ddpm_lib.metrics import compute_features, evaluate_samples, reference_features
from ddpm_lib.outputs import write_text_atomic
from ddpm_lib.samplers import network_evaluations
from ddpm_lib.sampling import generate

CHECKPOINTS = {
    "shipped": PRETRAINED,
    "ddpm": DDPM_MODEL,
    "flow-708": WEIGHTS_DIR / "flow_toy_cars_32.pt",
}
# (sampler, spacing, eta, steps): eta only for DDIM
GRIDS = {
    "full": [
        ("ddim", "timesteps", 1.0, [10, 15, 20, 50]),
        ("ddim", "timesteps", 0.0, [10, 20, 50]),
        ("euler", "karras", None, [10, 20]),
        ("heun", "karras", None, [5, 10]),
        ("dpmpp_2m", "karras", None, [5, 10, 15, 20, 50]),
        ("dpmpp_2m", "timesteps", None, [10, 20]),
        ("dpmpp_2m_sde", "karras", None, [10, 15, 20, 50]),
    ],
    "equal-minutes": [
        ("ddim", "timesteps", 1.0, [50]),
        ("ddim", "timesteps", 0.0, [20]),
        ("euler", "karras", None, [10]),
        ("dpmpp_2m", "karras", None, [10, 20]),
        ("dpmpp_2m_sde", "karras", None, [10, 20]),
    ],
}
MATCH_PR = 0.03  # precision and recall of a match lie within this of the best's


def label(sampler: str, spacing: str, eta: float | None) -> str:
    return f"{sampler} eta={eta:g}" if sampler == "ddim" else f"{sampler} {spacing}"


def grid_points(grid: str) -> list[dict]:
    return [
        {"label": label(s, sp, eta), "sampler": s, "spacing": sp, "eta": eta, "steps": n}
        for s, sp, eta, steps in GRIDS[grid]
        for n in steps
    ]


def draw(model, diffusion, point: dict, num: int, seed: int):
    return generate(
        model,
        diffusion,
        num,
        32,
        sampler=point["sampler"],
        num_steps=point["steps"],
        eta=1.0 if point["eta"] is None else point["eta"],
        spacing=point["spacing"],
        seed=seed,
        batch_size=250,
        precision="fp32",
    )


def choose(runs: list[dict]) -> dict:
    """The best 50-evaluation run by FID, and the fewest-evaluation run that matches it."""
    best = min((r for r in runs if r["nfe"] == 50), key=lambda r: r["fid"])
    matching = [
        r
        for r in runs
        if r["fid"] <= best["fid"] + best["fid_std"]
        and abs(r["precision"] - best["precision"]) <= MATCH_PR
        and abs(r["recall"] - best["recall"]) <= MATCH_PR
    ]
    fastest = min(matching, key=lambda r: (r["nfe"], r["fid"]))
    return {
        "best_50": best,
        "fastest_matching": fastest,
        "speedup": best["nfe"] / fastest["nfe"],
        "wall_speedup": best["seconds_per_image"] / fastest["seconds_per_image"],
        "rule": f"FID <= best FID + its bootstrap std; precision and recall within {MATCH_PR}",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="shipped", help="name of the model's entry in --out")
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a model file for a name beyond " + ", ".join(CHECKPOINTS),
    )
    p.add_argument("--description", default="")
    p.add_argument("--grid", choices=list(GRIDS), default="full")
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--bootstrap", type=int, default=10)
    p.add_argument("--time-images", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--extend",
        action="store_true",
        help="keep the model's scored runs in --out, score only the grid's new points, re-time all",
    )
    args = p.parse_args(argv)
    paths = {**CHECKPOINTS, **dict(c.split("=", 1) for c in args.checkpoint)}
    if args.model not in paths:
        p.error(f"no file for model {args.model!r}: give --checkpoint {args.model}=PATH")
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result["machine"] = f"{cpu_signature()}, torch {torch.__version__}"
    result["settings"] = {
        "num_samples": args.num_samples,
        "num_reference": 5000,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "precision": "fp32",
        "time_images": args.time_images,
    }
    model, diffusion, cfg = load_ema_model(paths[args.model])
    extractor = load_feature_extractor()
    reference = reference_features("toy_cars", 32, 5000, extractor)
    held_out = compute_features(
        load_dataset("toy_cars", 32, "test", num_images=args.num_samples).images, extractor
    )
    old = result.get("models", {}).get(args.model, {}) if args.extend else {}
    runs = list(old.get("runs", []))
    done = {(r["label"], r["steps"]) for r in runs}
    baseline = old.get("baseline")  # real vs real: the same for every point
    for point in grid_points(args.grid):
        if (point["label"], point["steps"]) in done:
            continue
        start = time.perf_counter()
        out = draw(model, diffusion, point, args.num_samples, args.seed)
        scores = evaluate_samples(
            compute_features(out.images, extractor),
            reference,
            extractor,
            baseline=held_out,
            bootstrap=args.bootstrap,
            seed=args.seed,
        )
        baseline = scores["baseline"]
        run = {**point, "nfe": network_evaluations(point["sampler"], point["steps"])}
        for key in ("fid", "kid_mean", "kid_std", "precision", "recall"):
            run[key] = scores[key]
        for key in ("fid", "precision", "recall"):
            run[f"{key}_std"] = scores["spread"][key]
        runs.append(run)
        print(
            f"{run['label']:>20} {run['nfe']:>3} NFE: FID {run['fid']:6.2f} +- {run['fid_std']:.2f}, "
            f"precision {run['precision']:.3f}, recall {run['recall']:.3f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    for run in runs:  # the timing pass
        draw(model, diffusion, run, 4, args.seed)  # warm-up
        out = draw(model, diffusion, run, args.time_images, args.seed)
        run["seconds_per_image"] = out.seconds / args.time_images
    result.setdefault("models", {})[args.model] = {
        "checkpoint": Path(paths[args.model]).name,
        "description": args.description or old.get("description", ""),
        "steps_trained": load_checkpoint(paths[args.model]).get("step"),
        "config": {k: getattr(cfg, k) for k in ("schedule", "num_timesteps", "prediction_type")},
        "baseline": {k: baseline[k] for k in ("fid", "precision", "recall")},
        "runs": runs,
    }
    if "shipped" in result["models"]:
        result["choice"] = {"model": "shipped", **choose(result["models"]["shipped"]["runs"])}
    write_text_atomic(args.out, json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
