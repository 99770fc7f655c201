"""(Re)write the model cards of the shipped weights files, from the table below and the stored results.

    python tools/write_model_cards.py           # write the cards; the weights stay bit-identical
    python tools/write_model_cards.py --check   # exit 1 when a stored card differs from what it would write

A card's command is derived from the file's own config (``ddpm_lib.model_card.train_command``), its
metrics are read from ``benchmarks/*.json``, and its hardware, time and notes come from the project's
history (``git log -- ddpm_lib/weights``, README), written down in ``SHIPPED`` below. Writing checks that
every tensor and every other entry of the file is unchanged, and that the toy-cars images the generator
gives today are the ones ``TOY_CARS_TRAIN_SHA1`` names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ddpm_lib.build import build_model_from_checkpoint
from ddpm_lib.checkpoints import WEIGHTS_DIR, save_atomic
from ddpm_lib.config import TrainConfig
from ddpm_lib.model_card import (
    CARD_VERSION,
    data_entry,
    evaluation_metrics,
    images_fingerprint,
    metric,
    new_card,
    train_command,
)
from ddpm_lib.unet import count_parameters

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
# images_fingerprint of the toy-cars train split (8,144 images, 32 px, seed 0): the same at commit c520efe,
# where the generator was written, and today
TOY_CARS_TRAIN_SHA1 = "f7fe2dd9067f17fa"
FORMER_CPU_PRESET = (
    "the cpu preset was then the former recipe (eps, linear schedule, T = 1000, attention at 16x16), "
    "today's --preset ddpm; today --preset cpu gives v-prediction + Min-SNR-5, cosine, T = 500, no "
    "attention"
)
AMD_CPU = {"device": "cpu", "name": "AMD EPYC", "bf16": True, "threads": 2, "processes": 1}

# What the history says of each file: title, hardware and time, notes. Metrics come from the JSON results.
SHIPPED = {
    "pretrained_toy_cars_32.pt": {
        "title": "the shipped toy-cars DDPM: the CPU recipe (v-prediction + Min-SNR-5, cosine schedule, "
        "T = 500, small U-Net without attention), 3,600 steps",
        "hardware": [
            {
                **AMD_CPU,
                "precision": "bf16",
                "torch": "2.14.1+cu130",
                "steps": 3600,
                "seconds": 2070.0,
            }
        ],
        "timed": "3,600 steps at the 0.575 s per step measured on that CPU",
        "notes": [
            "one uninterrupted run of python -m ddpm_lib.train --preset cpu --out "
            "runs/pretrained_toy_cars_32 --max-steps 3600 --sample-every 900 (commit 670ac4f, "
            "2026-11-26), exported by checkpoints.export_weights (EMA weights in bfloat16)",
            "time: 0.575 s per step measured on that 2-core CPU with AVX-512 BF16 (bf16 as precision "
            "'auto' chose), so 34.5 minutes of training at that rate; the wall clock said 47 minutes "
            "because another job shared the two cores for part of the run (README)",
            "torch version: that of the same CPU's recorded runs that day (benchmarks/recipe.json, "
            "cpu_runs); it was not stored with the run",
        ],
    },
    "ddpm_toy_cars_32.pt": {
        "title": "the paper's DDPM at CPU size (--preset ddpm, notebook 05): eps-prediction, linear "
        "schedule, T = 1000, small U-Net with attention at 16x16, 1,600 steps",
        "hardware": [
            {
                "device": "cpu",
                "name": "not recorded (the project's machine then: a 2-core x86-64 CPU with AVX-512, "
                "benchmarks of commit fec05ec)",
                "processes": 1,
                "precision": "bf16",
                "torch": "not recorded",
                "steps": 1600,
                "seconds": None,
            }
        ],
        "notes": [
            "trained at commit db661d2 (2026-11-22) with python -m ddpm_lib.train --preset cpu --out "
            "runs/pretrained_toy_cars_32 --max-steps 1600 --sample-every 400, stopped and continued twice "
            "with --resume; " + FORMER_CPU_PRESET + "; sample_steps then defaulted to 50",
            "the command above (--preset ddpm, TrainConfig.ddpm_demo) repeats that config",
            "wall time and the CPU's model name were not recorded; precision 'auto' meant bf16 autocast "
            "on every CPU in that version",
            "shipped as the pretrained model until commit 670ac4f replaced it; the same bytes were "
            "study_toy_cars_32.pt from commit 9d27bec and are ddpm_toy_cars_32.pt since the paper's "
            "recipe became notebook 05's",
        ],
    },
    "pretrained_toy_cars_cond_32.pt": {
        "title": "the class-conditional toy-cars DDPM (six body types, label dropout 0.1 for "
        "classifier-free guidance) of the shipped recipe: v-prediction + Min-SNR-5, cosine "
        "schedule, T = 500, small U-Net without attention, batch 64, 3,600 steps",
        "hardware": [
            {
                "device": "cuda",
                "name": "NVIDIA H200",
                "bf16": True,
                "processes": 1,
                "precision": "bf16",
                "torch": "2.11.0+cu130",
                "steps": 3600,
                "seconds": 267.5,
            }
        ],
        "timed": "the optimiser steps; sample grids and checkpoints excluded",
        "notes": [
            "one uninterrupted run of the command above on one NVIDIA H200 (2026-12-04), while other "
            "training jobs shared the GPU, exported by checkpoints.export_weights (EMA weights in "
            "bfloat16)",
            "the same recipe and steps as the unconditional pretrained_toy_cars_32.pt, so the two "
            "compare conditioning alone (benchmarks/guidance_study.json, study.unconditional)",
            "on a CPU the same command repeats the steps: 3,600 steps at the 1.27 s per step measured "
            "on a 2-core AMD EPYC with AVX2 only (benchmarks/ladder.json, cpu_timing) is about 76 "
            "minutes. Without --deterministic CUDA kernels are not bit-reproducible",
        ],
    },
    "flow_toy_cars_32.pt": {
        "title": "flow matching (rectified flow) on the shipped recipe's network: the straight path "
        "(1 - s) x_0 + s eps, velocity eps - x_0 with uniform weight, small U-Net without attention, "
        "T = 500, batch 64, 708 steps (15 minutes of a 2-core AVX2 CPU, the ladder's budget)",
        "hardware": [
            {
                "device": "cpu",
                "name": "AMD EPYC",
                "bf16": False,
                "threads": 2,
                "processes": 1,
                "precision": "fp32",
                "torch": "2.14.1+cu130",
                "steps": 708,
                "seconds": 961.6,
            }
        ],
        "timed": "the optimiser steps; sample grids and checkpoints excluded",
        "notes": [
            "one uninterrupted run of the command above (2026-12-04) on a 2-core AMD EPYC without bf16 "
            "instructions, exported by checkpoints.export_weights (EMA weights in bfloat16); other jobs "
            "shared the two cores for part of it (1.27 s per step alone, benchmarks/ladder.json)",
            "708 steps are the steps 15 CPU minutes buy on that CPU (benchmarks/ladder.json, "
            "cpu_timing); its equal-minute partner, --preset cpu for the same 708 steps (the same "
            "network and batch: a step of either recipe costs the same), trained on 2026-12-05, is "
            "scored beside it in benchmarks/samplers.json (models.cpu-708), not shipped",
        ],
    },
    "toy_cars_classifier.pt": {
        "title": "the toy-cars feature network: a body-type classifier that also regresses the drawing "
        "parameters; its 128-d features score FID, KID, precision and recall",
        "hardware": [
            {
                "device": "cpu",
                "name": "not recorded",
                "processes": 1,
                "precision": "fp32",
                "torch": "not recorded",
                "steps": 5 * (8144 // 128),
                "seconds": None,
            }
        ],
        "notes": [
            "trained at commit 1c4d59a (2026-11-25) by python -m ddpm_lib.features --out "
            "assets/toy_cars_classifier.pt (the 'command' entry of this file); it ships in "
            "ddpm_lib/weights since commit 70d9cd7",
            "its recipe is ddpm_lib.features.train_feature_net's defaults; the file stores the "
            "architecture and the held-out accuracy, not the optimiser settings, and no wall time",
            "the command re-run on 2026-12-04 on a 2-core AMD EPYC without bf16 instructions gave "
            "held-out accuracy 0.9995 again but other weights (largest difference 1.1): float32 "
            "kernels of another CPU sum in another order, so the command reproduces the network's "
            "quality, not its bits",
        ],
    },
}


# ---------------------------------------------------------------------------------- metrics
def _read(name: str) -> dict:
    return json.loads((BENCH / name).read_text())


def pretrained_metrics() -> list[dict]:
    """benchmarks/pretrained_scores.json: python -m ddpm_lib.evaluate on the shipped model."""
    source = "benchmarks/pretrained_scores.json"
    out = evaluation_metrics(_read("pretrained_scores.json"), source)
    study = _read("guidance_study.json")["study"]
    row, sets = study["unconditional"], study["settings"]
    protocol = (
        f"{sets['sets']} sets of {sets['num_samples']} DDIM-{sets['steps']} eta {sets['eta']:g} "
        f"samples vs {sets['num_reference']:,} training images; ± std over the sets; in "
        f"parentheses: {sets['num_samples']} held-out test images"
    )
    source = "benchmarks/guidance_study.json (study.unconditional)"
    for name, key in (
        ("FID", "fid"),
        ("precision (k = 3)", "precision"),
        ("recall (k = 3)", "recall"),
    ):
        base = row["baseline"][key]
        out.append(metric(name, row[key], row[f"{key}_std"], protocol, source, base))
    return out


def ddpm_metrics() -> list[dict]:
    """The README's table (no JSON kept) and eval_study.json's bound."""
    readme = (
        "README.md, 'The pretrained toy-cars model' table of commit 783ebbb (python -m "
        "ddpm_lib.evaluate; its JSON file was not kept)"
    )
    protocol = (
        "1,000 DDIM-50 eta 1 samples vs 5,000 training images, toy-cars feature space; "
        "± bootstrap std; in parentheses: 1,000 held-out test images scored the same way"
    )
    rows = [
        ("FID", 12.11, 0.27, 0.38),
        ("KID", 0.450, 0.037, 0.0003),
        ("precision (k = 3)", 0.333, 0.013, 0.912),
        ("recall (k = 3)", 0.679, 0.031, 0.929),
        ("class TV (body types)", 0.148, 0.014, 0.029),
    ]
    out = [metric(n, v, sd, protocol, readme, base) for n, v, sd, base in rows]
    bound = _read("eval_study.json")["bits_per_dim"]
    protocol = f"{bound['num_images']} test images, {len(bound['timesteps'])} log-spaced t"
    source = "benchmarks/eval_study.json (bits_per_dim)"
    out.append(metric("bits/dim", bound["total"], bound["total_sem"], protocol, source))
    return out


def conditional_metrics() -> list[dict]:
    """benchmarks/guidance_study.json: the unguided model (w = 0) and the best scale (w = 0.5)."""
    study = _read("guidance_study.json")["study"]
    sets = study["settings"]
    protocol = (
        f"{sets['sets']} sets of {sets['num_samples']} DDIM-{sets['steps']} eta {sets['eta']:g} "
        f"samples (the six body types in turn) vs {sets['num_reference']:,} training images, "
        "toy-cars feature space; ± std over the sets; accuracy: the classifier names the body type "
        f"asked for; in parentheses: {sets['num_samples']} held-out test images"
    )
    out = []
    for row in study["rows"]:
        if row["guidance_interval"] is not None or row["guidance_scale"] not in (0, 0.5):
            continue
        w = f"w = {row['guidance_scale']:g}"
        source = f"benchmarks/guidance_study.json (study.rows, guidance {w})"
        for name, key in (
            ("accuracy", "accuracy"),
            ("FID", "fid"),
            ("precision (k = 3)", "precision"),
            ("recall (k = 3)", "recall"),
        ):
            base = row["baseline"].get(key)
            out.append(metric(f"{name} ({w})", row[key], row[f"{key}_std"], protocol, source, base))
    return out


def flow_metrics() -> list[dict]:
    """benchmarks/samplers.json: the flow model under the ladder's protocol sampler and the fastest one."""
    bench = _read("samplers.json")
    sets, model = bench["settings"], bench["models"]["flow-708"]
    out = []
    for run in model["runs"]:
        protocol = (
            f"{sets['num_samples']} {run['label']} samples ({run['nfe']} network evaluations) vs "
            f"{sets['num_reference']:,} training images, toy-cars feature space; ± bootstrap std; "
            f"in parentheses: {sets['num_samples']} held-out test images"
        )
        source = f"benchmarks/samplers.json (models.flow-708, {run['label']} {run['nfe']})"
        for name, key in (
            ("FID", "fid"),
            ("precision (k = 3)", "precision"),
            ("recall (k = 3)", "recall"),
        ):
            base = model["baseline"][key]
            label = f"{name} ({run['label']}, {run['nfe']} NFE)"
            out.append(metric(label, run[key], run[f"{key}_std"], protocol, source, base))
    return out


def classifier_metrics(saved: dict) -> list[dict]:
    """The held-out accuracy that ``python -m ddpm_lib.features`` stored in the file."""
    protocol = "body type of 2,000 held-out toy-cars test images (seed 0)"
    source = "this file's test_accuracy, written by python -m ddpm_lib.features"
    return [metric("held-out accuracy", saved["test_accuracy"], None, protocol, source)]


# ---------------------------------------------------------------------------------- cards
def diffusion_card(name: str, ckpt: dict, metrics: list[dict]) -> dict:
    """The card of a shipped diffusion model: its own config, the table's history, the metrics."""
    entry = SHIPPED[name]
    cfg = TrainConfig.from_dict(ckpt["config"])
    return new_card(
        cfg,
        title=entry["title"],
        command=train_command(cfg, f"runs/{Path(name).stem}"),
        steps=ckpt["step"],
        sessions=entry["hardware"],
        data=data_entry(cfg, cfg.num_images or 8144, TOY_CARS_TRAIN_SHA1),
        parameters=count_parameters(build_model_from_checkpoint(ckpt)),
        metrics=metrics,
        notes=entry["notes"],
        timed=entry.get("timed", "not recorded"),
    )


def classifier_card(saved: dict) -> dict:
    """The feature network's card: its architecture and train_feature_net's defaults."""
    entry = SHIPPED["toy_cars_classifier.pt"]
    recipe = {
        **saved["config"],
        "epochs": 5,
        "batch_size": 128,
        "optimizer": "adamw, weight decay 5e-4, one-cycle learning rate (peak 3e-3, 15% warm-up)",
        "loss": "cross-entropy on the body type + 0.5 x MSE on the standardized drawing parameters",
        "augmentation": "random horizontal flips",
        "seed": 0,
        "weights_dtype": "float16",
        "parameters": sum(v.numel() for v in saved["state_dict"].values() if v.is_floating_point()),
    }
    return {
        "card_version": CARD_VERSION,
        "title": entry["title"],
        "recipe": recipe,
        "data": {
            "dataset": "toy_cars",
            "split": "train (test: 2,000 held-out images)",
            "image_size": 32,
            "num_images": 8144,
            "seed": 0,
            "images_sha1": TOY_CARS_TRAIN_SHA1,
        },
        "training": {
            "steps": entry["hardware"][0]["steps"],
            "seconds": None,
            "timed": "not recorded",
            "hardware": entry["hardware"],
        },
        "command": "python -m ddpm_lib.features --out ddpm_lib/weights/toy_cars_classifier.pt",
        "metrics": classifier_metrics(saved),
        "notes": entry["notes"],
    }


def card_for(name: str, saved: dict) -> dict:
    """The card the table and the results give the shipped file ``name`` (whose contents are ``saved``)."""
    if name == "toy_cars_classifier.pt":
        return classifier_card(saved)
    metrics = {
        "pretrained_toy_cars_32.pt": pretrained_metrics,
        "ddpm_toy_cars_32.pt": ddpm_metrics,
        "pretrained_toy_cars_cond_32.pt": conditional_metrics,
        "flow_toy_cars_32.pt": flow_metrics,
    }[name]()
    return diffusion_card(name, saved, metrics)


def without_card(saved: dict) -> dict:
    return {k: v for k, v in saved.items() if k != "model_card"}


def same_contents(a, b) -> bool:
    """Equal nested containers whose tensors are equal bit for bit (dtype, shape, values)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same_contents(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_contents, a, b))
    return a == b


def check_data() -> None:
    """Refuse to write when today's toy-cars train images are not those the models were trained on."""
    from ddpm_lib.data import load_dataset

    images = load_dataset("toy_cars", image_size=32, split="train", seed=0).images
    found = images_fingerprint(images)
    if found != TOY_CARS_TRAIN_SHA1:
        raise SystemExit(
            f"error: the toy-cars generator now gives other images (sha1 {found}, the cards say "
            f"{TOY_CARS_TRAIN_SHA1}); the commands no longer reproduce the shipped models"
        )


def write_card(path: Path) -> None:
    """Write the card into ``path`` atomically and check that nothing else in the file changed."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    save_atomic({**without_card(saved), "model_card": card_for(path.name, saved)}, path)
    again = torch.load(path, map_location="cpu", weights_only=True)
    if not same_contents(without_card(again), without_card(saved)):
        raise SystemExit(f"error: writing the card changed the contents of {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--check", action="store_true", help="compare the stored cards; write nothing")
    p.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR, help="default: %(default)s")
    args = p.parse_args(argv)
    paths = [args.weights_dir / name for name in SHIPPED]
    if args.check:
        stale = []
        for path in paths:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("model_card") != card_for(path.name, saved):
                stale.append(path.name)
        print(f"stale cards: {', '.join(stale)}" if stale else "every card is up to date")
        return 1 if stale else 0
    check_data()
    for path in paths:
        write_card(path)
        print(f"wrote the card of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
