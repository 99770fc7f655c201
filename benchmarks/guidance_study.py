"""Classifier-free guidance, measured: the fidelity-diversity trade-off behind notebook 09 and the README.

    python benchmarks/guidance_study.py --out benchmarks/guidance_study.json            # the trade-off over scales
    python benchmarks/guidance_study.py --timing-only --out benchmarks/guidance_study.json  # + the cost of a guided step here

For each guidance scale w (Ho & Salimans 2022: ``(1 + w) eps_cond - w eps_uncond``) the class-conditional
toy-cars model draws ``--sets`` independent sets of ``--num-samples`` images, the six body types in turn
(DDIM, ``--steps`` steps, eta ``--eta``). Each set is scored with the evaluation stage in the toy-cars
feature space (``ddpm_lib.metrics.evaluate_samples`` against 5,000 train images, beside as many held-out
test images: the real-vs-real baseline): FID, KID, precision, recall, and the **class accuracy**, the
fraction of samples the body-type classifier (99.95 % on real cars) assigns to the class asked for. Error
bars are the std over the independent sets. The unconditional shipped model is scored the same way, as
the recall to compare with.

``--timing-only`` measures one DDIM step of the conditional network on this machine (after warm-up, the
median of ``--repeats``), unguided (w = 0: one pass over B images) against guided (one batched pass over
2B images), at several batch sizes, in the precision ``auto`` picks; it is merged into ``--out`` under
``timing`` beside the study, which it keeps.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from ddpm_lib.checkpoints import PRETRAINED, WEIGHTS_DIR, load_checkpoint, load_ema_model
from ddpm_lib.data import load_dataset
from ddpm_lib.devices import cpu_signature, resolve_precision, select_device
from ddpm_lib.features import load_feature_extractor
from ddpm_lib.metrics import compute_features, evaluate_samples, reference_features
from ddpm_lib.outputs import write_text_atomic
from ddpm_lib.sampling import generate

CONDITIONAL = WEIGHTS_DIR / "pretrained_toy_cars_cond_32.pt"


def score_set(images: torch.Tensor, labels: torch.Tensor, extractor, reference, held_out) -> dict:
    """Class accuracy (overall and per class) and the evaluation stage's scores of one sample set."""
    feats = compute_features(images, extractor)
    correct = feats.labels == labels
    per_class = [correct[labels == c].float().mean().item() for c in range(int(labels.max()) + 1)]
    scores = evaluate_samples(feats, reference, extractor, baseline=held_out, bootstrap=0)
    keep = ("fid", "kid_mean", "precision", "recall", "class_tv")
    return {
        "accuracy": correct.float().mean().item(),
        "per_class_accuracy": per_class,
        **{k: scores[k] for k in keep},
        "baseline": {k: scores["baseline"][k] for k in keep},
    }


def summarise(sets: list[dict]) -> dict:
    """Mean and std over the independent sets of every score."""
    out = {}
    for key in ("accuracy", "fid", "kid_mean", "precision", "recall", "class_tv"):
        values = [s[key] for s in sets if s[key] is not None]
        if values:
            out[key] = statistics.fmean(values)
            out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    out["per_class_accuracy"] = [
        statistics.fmean(v) for v in zip(*(s["per_class_accuracy"] for s in sets))
    ]
    out["baseline"] = sets[0]["baseline"]
    return out


def study(args, device) -> dict:
    extractor = load_feature_extractor()
    reference = reference_features("toy_cars", 32, args.num_reference, extractor)
    held_out = compute_features(
        load_dataset("toy_cars", 32, "test", num_images=args.num_samples).images, extractor
    )
    model, diffusion, cfg = load_ema_model(args.checkpoint, device)
    if not cfg.num_classes:
        raise SystemExit(f"{args.checkpoint} is not class-conditional")
    labels = torch.arange(args.num_samples) % cfg.num_classes
    common = dict(
        num_steps=args.steps, eta=args.eta, batch_size=args.batch_size, precision=args.precision
    )
    visited = diffusion.sampling_timesteps("ddim", args.steps)
    rows = []
    T = diffusion.num_timesteps
    # default: the upper 40%, the middle 40% and the lower 40% of the timestep indices
    intervals = args.intervals or [
        (round(0.6 * T), T - 1),
        (round(0.3 * T), round(0.7 * T)),
        (0, round(0.4 * T)),
    ]
    runs = [(w, None) for w in args.scales] + [
        (w, iv) for iv in intervals for w in args.interval_scales
    ]
    for w, interval in runs:
        sets = []
        for s in range(args.sets):
            out = generate(
                model,
                diffusion,
                args.num_samples,
                cfg.image_size,
                seed=1000 * s,
                labels=labels,
                guidance_scale=w,
                guidance_interval=interval,
                **common,
            )
            sets.append(score_set(out.images, labels, extractor, reference, held_out))
        guided = (
            sum(1 for t in visited if interval is None or interval[0] <= t <= interval[1])
            if w
            else 0
        )
        row = {
            "guidance_scale": w,
            "guidance_interval": interval,
            "cost": 1 + guided / len(visited),
            **summarise(sets),
            "sets": sets,
        }
        rows.append(row)
        print(
            f"w={w:<4} interval {interval} cost {row['cost']:.2f}x accuracy {row['accuracy']:.3f}±{row['accuracy_std']:.3f}  FID {row['fid']:.2f}±{row['fid_std']:.2f}  "
            f"precision {row['precision']:.3f}  recall {row['recall']:.3f}±{row['recall_std']:.3f}",
            flush=True,
        )
    uncond_model, uncond_diffusion, ucfg = load_ema_model(args.uncond_checkpoint, device)
    usets = []
    for s in range(args.sets):
        out = generate(
            uncond_model,
            uncond_diffusion,
            args.num_samples,
            ucfg.image_size,
            seed=1000 * s,
            **common,
        )
        # accuracy: chance level, 1/6
        usets.append(score_set(out.images, labels, extractor, reference, held_out))
    uncond = summarise(usets)
    print(
        f"unconditional model: FID {uncond['fid']:.2f}  precision {uncond['precision']:.3f}  recall {uncond['recall']:.3f}"
    )
    return {
        "rows": rows,
        "unconditional": {
            **uncond,
            "checkpoint": Path(args.uncond_checkpoint).name,
            "step": load_checkpoint(args.uncond_checkpoint).get("step"),
        },
        "checkpoint": Path(args.checkpoint).name,
        "step": load_checkpoint(args.checkpoint).get("step"),
        "class_names": list(cfg.class_names),
        "settings": {
            k: getattr(args, k)
            for k in ("num_samples", "sets", "steps", "eta", "num_reference", "precision")
        },
    }


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: one-time setup is not a step's cost
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timing(args, device) -> dict:
    """One DDIM step, unguided vs guided, per batch size: the price of one batched pass over 2B images."""
    model, diffusion, cfg = load_ema_model(args.checkpoint, device)
    shape = (3, cfg.image_size, cfg.image_size)
    choice = resolve_precision(args.precision, device, model, "sample", shape, batch=16)
    rows = []
    for b in args.batch_sizes:
        x = torch.randn(b, *shape, device=device)
        labels = torch.arange(b, device=device) % cfg.num_classes

        def step(w, b=b, x=x, labels=labels):
            def run():
                with choice.autocast():
                    steps = diffusion.sample_progressive(
                        model, (b, *shape), "ddim", 50, 1.0, x_T=x, labels=labels, guidance_scale=w
                    )
                    next(steps)  # one step: the network pass and the update

            return run

        plain, guided = (
            _median_seconds(step(0.0), args.repeats),
            _median_seconds(step(3.0), args.repeats),
        )
        rows.append(
            {
                "batch": b,
                "unguided_ms": 1000 * plain,
                "guided_ms": 1000 * guided,
                "ratio": guided / plain,
            }
        )
        print(
            f"batch {b:>3}: unguided {1000 * plain:7.1f} ms, guided {1000 * guided:7.1f} ms per step ({guided / plain:.2f}x)",
            flush=True,
        )
    return {
        "rows": rows,
        "precision": choice.name,
        "threads": torch.get_num_threads(),
        "cpu": cpu_signature(),
        "device": str(device),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--checkpoint", type=Path, default=CONDITIONAL, help="a class-conditional checkpoint"
    )
    p.add_argument(
        "--uncond-checkpoint",
        type=Path,
        default=PRETRAINED,
        help="the unconditional model to compare with (default: the shipped one, the conditional model's "
        "recipe and steps)",
    )
    p.add_argument("--scales", type=float, nargs="+", default=[0, 0.5, 1, 2, 4, 8])
    p.add_argument(
        "--intervals",
        type=lambda v: tuple(int(x) for x in v.split(":")),
        nargs="*",
        default=None,
        help="guidance intervals LO:HI of timestep indices to measure at --interval-scales "
        "(default: the upper, middle and lower 40%% of the model's T)",
    )
    p.add_argument("--interval-scales", type=float, nargs="*", default=[2])
    p.add_argument(
        "--num-samples",
        type=int,
        default=600,
        help="images per set (a multiple of the class count keeps classes balanced)",
    )
    p.add_argument(
        "--sets",
        type=int,
        default=2,
        help="independent sample sets per scale (error bars: their std)",
    )
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--num-reference", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=300)
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default=None)
    p.add_argument(
        "--timing-only",
        action="store_true",
        help="measure the cost of a guided step only, keep the stored study",
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    device = select_device(args.device)
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    start = time.perf_counter()
    if args.timing_only:
        result["timing"] = timing(args, device)
    else:
        result["study"] = study(args, device)
        result["study"]["meta"] = {
            "seconds": time.perf_counter() - start,
            "device": str(device),
            "cpu": cpu_signature(),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "argv": sys.argv[1:],
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=1))
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
