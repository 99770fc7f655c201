"""The measurements behind notebook 07: every figure with its spread and its real-vs-real baseline.

    OMP_NUM_THREADS=1 python benchmarks/eval_study.py --out benchmarks/eval_study.json   # 36 minutes on one thread
    python benchmarks/eval_study.py --quick --out /tmp/eval_study_quick.json             # a smoke run, a few minutes

Scores sample sets with the evaluation stage (``ddpm_lib.metrics.evaluate_samples``: FID, KID, improved
precision/recall with k = 3, class_tv, each with the std over bootstrap resamples) against 5,000 train
images in the toy-cars feature space, beside held-out *test* images scored the same way (the real-vs-real
baseline: what a perfect generator would get at that sample count). The studies:

1. ``samplers``: the study's model (``DDPM_MODEL``, the toy-cars model shipped before the recipe study) with DDIM at 10/20/50/100 steps and
   eta in {0, 0.5, 1} (``--num-samples`` each), and the long samplers, DDIM-250 and DDPM-1000 with both
   reverse variances (``--num-samples-long`` each, fewer: they cost 2.5 to 10 times more);
2. ``precision``: DDIM-50 at eta 0 and 1 sampled in bf16 and in fp32 from the same noise;
3. ``clipping``: DDIM-10 and DDIM-50 at eta 0 and 1 without clipping x0_pred to [-1, 1] at each step;
4. ``seeds``: DDIM-10 at eta 0 and 1 with other seeds, to check the bootstrap spread against the spread
   over independent sample sets;
5. ``training``: two short runs of the former CPU recipe (``CPU_RECIPE_BEFORE_STUDY``) (linear and cosine schedule, same seed, same
   steps), each scored from its EMA and its raw weights with the same noise (DDIM-50, eta 1), and from its
   EMA weights at eta 0 too (does the gap between eta 0 and 1 depend on training length?);
6. ``bits_per_dim``: the variational bound of the pretrained model per timestep on held-out images (the
   training rows carry their own). The total is ``ddpm_lib.bound``'s log-spaced estimate; every row
   also stores the per-timestep terms and weights, since the estimate's linear interpolation spreads a
   term that spikes at one index (the cosine schedule's last, beta clipped at 0.999) over the indices
   around it.

The 36 minutes (the stored JSON's ``meta.seconds``) were measured at 7.5 ms per network evaluation of one
image (the small U-Net, bf16, one thread of an AVX-512 BF16 CPU), the two training runs taking 4 minutes each.

Every row also carries ``grain``: the noise level left in the samples, a robust estimate of the std of
pixel noise (median absolute response to Immerkaer's 3x3 noise mask; 0 for the flat-shaded data).

FID is biased upward at small N (and at N below the 128 feature dimensions the covariance is singular):
compare rows only at equal ``num_samples``. Rows with more samples also hold ``at_n``, the scores of their
first ``--num-samples-long`` and ``--num-samples-train`` samples, which share their starting noise x_T with
the smaller runs' (``generate`` seeds batch i with seed + i, and every run uses the same batch size).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm_lib.bound import bits_per_dim, log_spaced_timesteps
from ddpm_lib.checkpoints import DDPM_MODEL, load_checkpoint, load_ema_model
from ddpm_lib.config import CPU_RECIPE_BEFORE_STUDY, TrainConfig
from ddpm_lib.data import from_uint8, load_dataset, to_uint8
from ddpm_lib.devices import cpu_signature
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.features import load_feature_extractor
from ddpm_lib.metrics import FeatureSet, compute_features, evaluate_samples, reference_features
from ddpm_lib.sampling import generate
from ddpm_lib.training import Trainer

IMAGE_SIZE = 32
GRID_STEPS = (10, 20, 50, 100)
ETAS = (0.0, 0.5, 1.0)
LONG_DDIM_STEPS = 250
SEED_OFFSET = 1000  # seeds of the seed check: generate seeds batch i with seed + i, so nearby seeds would share batches


@dataclass(frozen=True)
class Sizes:
    num_samples: int = 128  # DDIM 10-100, the precision pairs, the seed check
    num_samples_long: int = 32  # DDIM-250 and DDPM-1000
    num_samples_train: int = 64  # each training run, EMA and raw weights
    # one batch size everywhere: the first batch of every run starts from the same x_T
    batch_size: int = 32
    num_reference: int = 5000  # train images
    bootstrap: int = 20
    extra_seeds: int = 2  # seed check: DDIM-10 sets with this many other seeds
    train_steps: int = 135  # optimiser steps of each training run
    bpd_images: int = 64
    bpd_timesteps: int = 50
    bpd_images_train: int = 32
    bpd_timesteps_train: int = 25


QUICK = Sizes(
    num_samples=16,
    num_samples_long=8,
    num_samples_train=16,
    batch_size=8,
    num_reference=500,
    bootstrap=3,
    extra_seeds=1,
    train_steps=4,
    bpd_images=4,
    bpd_timesteps=10,
    bpd_images_train=4,
    bpd_timesteps_train=5,
)


# ---------------------------------------------------------------------------------- measures
# Immerkaer 1996: blind to planes and edges
NOISE_MASK = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
MEDIAN_ABS_OF_STD_NORMAL = 0.6744897501960817  # median |z| for z ~ N(0, 1)


def noise_level(images: torch.Tensor) -> torch.Tensor:
    """Std of the pixel noise in each image ``(N, 3, H, W)`` in [-1, 1]: ``(N,)``, in the images' units.

    The mask's response to i.i.d. noise of std s has std 6 s (the root of the sum of its squared entries),
    so ``median |mask * image| / (6 * 0.6745)`` estimates s; the median ignores the few pixels on edges.
    """
    x = images.float()
    r = F.conv2d(
        x, NOISE_MASK.to(x).view(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1), groups=x.shape[1]
    )
    return r.abs().flatten(1).median(dim=1).values / (6 * MEDIAN_ABS_OF_STD_NORMAL)


def as_saved(images: torch.Tensor) -> torch.Tensor:
    """Float images rounded to uint8 and back, as a saved sample is (the metrics see the same)."""
    return from_uint8(to_uint8(images.float().clamp(-1, 1)))


def _round(x, digits: int = 6):
    if isinstance(x, dict):
        return {k: _round(v, digits) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_round(v, digits) for v in x]
    if isinstance(x, float):
        return round(x, digits) if math.isfinite(x) else None
    return x


class Study:
    """The feature network, the reference and the baselines, and the JSON written after every stage."""

    def __init__(self, sizes: Sizes, out: Path, argv: list[str]):
        self.sizes, self.out = sizes, out
        self.start = time.perf_counter()
        self.net = load_feature_extractor()
        t0 = time.perf_counter()
        self.reference = reference_features(
            "toy_cars", IMAGE_SIZE, sizes.num_reference, self.net, "train"
        )
        self.result = {
            "meta": {
                "command": "python benchmarks/eval_study.py " + " ".join(argv),
                "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "machine": cpu_signature(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "checkpoint": DDPM_MODEL.name,
                "checkpoint_steps": int(load_checkpoint(DDPM_MODEL)["step"]),
                "sizes": asdict(sizes),
                "reference": f"{sizes.num_reference} toy-cars train images, features of ddpm_lib.features (128-d)",
                "baseline": "held-out toy-cars test images (the first N), scored like the samples",
                "spread": "std over bootstrap resamples of the samples (KID: std over its subsets)",
                "grain": "noise std left in the images, median |Immerkaer mask response| / (6 * 0.6745), in [-1, 1] units",
                "notes": [
                    "FID is biased upward at small N: compare rows at equal num_samples (at_n holds the scores of the "
                    f"first {sizes.num_samples_long} and {sizes.num_samples_train} samples of the larger rows)",
                    "every run uses the same seed and batch size, so rows share their starting noise x_T batch by batch",
                    "the sampling models are converted to channels-last memory format (faster on CPUs; the same maths)",
                ],
                "reference_seconds": round(time.perf_counter() - t0, 1),
                "complete": False,
            },
            "baselines": [],
            "rows": [],
        }
        self.baseline_features: dict[int, FeatureSet] = {}
        real_test = load_dataset(
            "toy_cars",
            IMAGE_SIZE,
            "test",
            num_images=max(sizes.num_samples, sizes.num_samples_train, 256),
        )
        self.real_grain = noise_level(from_uint8(real_test.images))
        for n in sorted({sizes.num_samples, sizes.num_samples_long, sizes.num_samples_train}):
            fs = reference_features("toy_cars", IMAGE_SIZE, n, self.net, "test")
            self.baseline_features[n] = fs
            scores = self.evaluate(fs)
            grain = self.real_grain[:n]
            self.result["baselines"].append(
                {"num_samples": n, **scores, "grain": float(grain.mean()), "grain_sem": _sem(grain)}
            )
        self.save()

    def log(self, msg: str) -> None:
        print(f"[{(time.perf_counter() - self.start) / 60:5.1f} min] {msg}", flush=True)

    def evaluate(self, fs: FeatureSet) -> dict:
        res = evaluate_samples(fs, self.reference, self.net, bootstrap=self.sizes.bootstrap, seed=0)
        res.pop("baseline", None)
        return res

    def score(self, images: torch.Tensor) -> dict:
        """FID, KID, precision/recall, class_tv with spreads, grain; and the same at the small N for a larger set."""
        saved = as_saved(images)
        fs = compute_features(saved, self.net)
        scores = self.evaluate(fs)
        grain = noise_level(saved)
        scores.update(grain=float(grain.mean()), grain_sem=_sem(grain))
        smaller = sorted(
            n for n in {self.sizes.num_samples_long, self.sizes.num_samples_train} if n < len(fs)
        )
        if smaller:
            scores["at_n"] = {}
        for n in smaller:
            subset = self.evaluate(FeatureSet(fs.features[:n], fs.labels[:n]))
            subset.update(grain=float(grain[:n].mean()), grain_sem=_sem(grain[:n]))
            scores["at_n"][str(n)] = subset
        return scores

    def sample_and_score(
        self,
        study: str,
        model,
        diffusion: GaussianDiffusion,
        sampler: str,
        steps: int | None,
        eta: float | None,
        n: int,
        seed: int = 0,
        precision: str = "auto",
        clip_denoised: bool = True,
        **info,
    ) -> tuple[dict, torch.Tensor]:
        s = generate(
            model,
            diffusion,
            n,
            IMAGE_SIZE,
            sampler=sampler,
            num_steps=steps,
            eta=1.0 if eta is None else eta,
            seed=seed,
            batch_size=self.sizes.batch_size,
            precision=precision,
            clip_denoised=clip_denoised,
        )
        row = {
            "study": study,
            "sampler": sampler,
            "steps": s.num_steps,
            "eta": eta,
            "variance": diffusion.variance_type,
            "sampling_precision": s.precision.name,
            "clip_denoised": clip_denoised,
            "seed": seed,
            **info,
            "nfe": s.num_steps,
            "seconds": round(s.seconds, 2),
            "ms_per_evaluation": round(1000 * s.seconds / (n * s.num_steps), 3),
        }
        row.update(self.score(s.images))
        self.result["rows"].append(row)
        label = (
            f"{sampler.upper()}-{s.num_steps}"
            + ("" if eta is None else f" eta={eta:g}")
            + f" {diffusion.variance_type}"
        )
        label += "" if clip_denoised else " no-clip"
        self.log(
            f"{study:9s} {label:28s} {s.precision.name} N={n:4d} FID {row['fid']:7.2f} ± {(row['spread'] or {}).get('fid') or 0:5.2f} "
            f"P {row['precision']:.3f} R {row['recall']:.3f} grain {row['grain']:.4f} ({s.seconds:.0f} s)"
        )
        return row, s.images

    def save(self) -> None:
        self.result["meta"]["seconds_so_far"] = round(time.perf_counter() - self.start, 1)
        write_json_atomic(self.out, _round(self.result))


def _sem(x: torch.Tensor) -> float | None:
    return float(x.std() / math.sqrt(len(x))) if len(x) > 1 else None


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def bpd_summary(
    model, diffusion: GaussianDiffusion, num_images: int, num_timesteps: int, seed: int = 0
) -> dict:
    """Bits/dim of held-out test images (Ho et al. 2020, Eq. 5) with its per-timestep terms, in float32."""
    x0 = from_uint8(load_dataset("toy_cars", IMAGE_SIZE, "test", num_images=num_images).images)
    steps = log_spaced_timesteps(diffusion.num_timesteps, num_timesteps)
    t0 = time.perf_counter()
    out = bits_per_dim(diffusion, model, x0, torch.Generator().manual_seed(seed), steps)
    terms, w = out["terms"].double(), out["weights"]  # (B, S), (S,)
    total = out["total"].double()
    return {
        "num_images": num_images,
        "timesteps": out["timesteps"].tolist(),
        "weights": w.tolist(),
        "terms_mean": terms.mean(0).tolist(),
        "terms_sem": (terms.std(0) / math.sqrt(len(terms))).tolist() if len(terms) > 1 else None,
        "prior": float(out["prior"].double().mean()),
        "decoder": float(out["decoder"].double().mean()),
        "total": float(total.mean()),
        "total_sem": _sem(total),
        "seconds": round(time.perf_counter() - t0, 1),
    }


# ---------------------------------------------------------------------------------- the studies
def sampler_study(st: Study, model, diffusion: GaussianDiffusion) -> dict:
    """DDIM grid at num_samples; DDIM-250 and DDPM-1000 (both variances) at num_samples_long. Returns the images of DDIM-50."""
    kept = {}
    for steps in GRID_STEPS:
        for eta in ETAS:
            _, images = st.sample_and_score(
                "samplers", model, diffusion, "ddim", steps, eta, st.sizes.num_samples
            )
            if steps == 50 and eta in (0.0, 1.0):
                kept[eta] = images
        st.save()
    for eta in ETAS:
        st.sample_and_score(
            "samplers", model, diffusion, "ddim", LONG_DDIM_STEPS, eta, st.sizes.num_samples_long
        )
    st.save()
    large = GaussianDiffusion(diffusion.betas, variance_type="fixed_large")
    for d in (diffusion, large):
        st.sample_and_score("samplers", model, d, "ddpm", None, None, st.sizes.num_samples_long)
        st.save()
    return kept


def precision_study(st: Study, model, diffusion: GaussianDiffusion, kept: dict) -> None:
    """DDIM-50 at eta 0 and 1 in the precision "auto" did not choose, from the same noise; the paired differences."""
    pairs = []
    for eta, auto_images in kept.items():
        auto_row = next(
            r
            for r in st.result["rows"]
            if r["study"] == "samplers" and r["steps"] == 50 and r["eta"] == eta
        )
        other = "fp32" if auto_row["sampling_precision"] != "fp32" else "bf16"
        row, images = st.sample_and_score(
            "precision", model, diffusion, "ddim", 50, eta, st.sizes.num_samples, precision=other
        )
        a, b = as_saved(auto_images), as_saved(images)
        # in [-1, 1] units; one uint8 level is 2/255
        pairs.append(
            {
                "eta": eta,
                "precisions": [auto_row["sampling_precision"], other],
                "mean_abs_pixel_difference": float((a - b).abs().mean()),
                "share_of_pixels_differing": float((to_uint8(a) != to_uint8(b)).double().mean()),
                "grain_difference": auto_row["grain"] - row["grain"],
                "fid_difference": auto_row["fid"] - row["fid"],
                "speedup": row["ms_per_evaluation"] / auto_row["ms_per_evaluation"],
            }
        )
    st.result["precision_pairs"] = pairs
    st.save()


def clipping_study(st: Study, model, diffusion: GaussianDiffusion) -> None:
    """DDIM-10 and DDIM-50 at eta 0 and 1 without clipping x0_pred at each step (the samplers' rows clip it)."""
    for steps in (10, 50):
        for eta in (0.0, 1.0):
            st.sample_and_score(
                "clipping",
                model,
                diffusion,
                "ddim",
                steps,
                eta,
                st.sizes.num_samples,
                clip_denoised=False,
            )
        st.save()


def seed_study(st: Study, model, diffusion: GaussianDiffusion) -> None:
    """DDIM-10 at eta 0 and 1 with other seeds: the std over independent sets, beside the bootstrap std."""
    for eta in (0.0, 1.0):
        for k in range(1, st.sizes.extra_seeds + 1):
            st.sample_and_score(
                "seeds",
                model,
                diffusion,
                "ddim",
                10,
                eta,
                st.sizes.num_samples,
                seed=k * SEED_OFFSET,
            )
        st.save()


def training_study(st: Study) -> None:
    """Linear against cosine schedule at the same budget, each scored from its EMA and its raw weights (DDIM-50, eta 1; EMA at eta 0 too)."""
    sz = st.sizes
    # what the trainer would load (num_images None, seed 0)
    data = load_dataset("toy_cars", IMAGE_SIZE, "train", seed=0)
    for schedule in ("linear", "cosine"):
        cfg = TrainConfig.cpu_demo(
            **{**CPU_RECIPE_BEFORE_STUDY, "schedule": schedule}, max_steps=sz.train_steps
        )
        with tempfile.TemporaryDirectory(prefix="eval_study_") as tmp:
            trainer = Trainer(cfg, Path(tmp) / schedule, dataset=data, progress=False)
            t0 = time.perf_counter()
            history = trainer.fit(max_steps=sz.train_steps)
            train_seconds = time.perf_counter() - t0
        last = history[-max(1, len(history) // 5) :]  # the last fifth of the logged rows
        info = {
            "schedule": schedule,
            "train_steps": trainer.step,
            "train_seconds": round(train_seconds, 1),
            "train_precision": trainer.precision.name,
            "final_loss": sum(r["loss"] for r in last) / len(last),
        }
        st.log(
            f"training  {schedule}: {trainer.step} steps in {train_seconds / 60:.1f} min, loss {info['final_loss']:.4f}"
        )
        for weights, net in (("ema", trainer.ema.module), ("raw", trainer.model)):
            net = net.to(memory_format=torch.channels_last).eval()
            row, _ = st.sample_and_score(
                "training",
                net,
                trainer.diffusion,
                "ddim",
                50,
                1.0,
                sz.num_samples_train,
                weights=weights,
                **info,
            )
            row["bits_per_dim"] = bpd_summary(
                net, trainer.diffusion, sz.bpd_images_train, sz.bpd_timesteps_train
            )
            st.log(f"training  {schedule} {weights}: {row['bits_per_dim']['total']:.3f} bits/dim")
            # the same weights at eta 0: is the eta gap a matter of training length?
            if weights == "ema":
                st.sample_and_score(
                    "training",
                    net,
                    trainer.diffusion,
                    "ddim",
                    50,
                    0.0,
                    sz.num_samples_train,
                    weights=weights,
                    **info,
                )
            st.save()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/eval_study.json"),
        help="the JSON to write (default %(default)s)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes: a smoke run of every path (minutes); overrides the sizes",
    )
    d = Sizes()
    p.add_argument(
        "--num-samples",
        type=int,
        default=d.num_samples,
        help="DDIM 10-100, precision and seed rows (default %(default)s)",
    )
    p.add_argument(
        "--num-samples-long",
        type=int,
        default=d.num_samples_long,
        help="DDIM-250 and DDPM-1000 rows (default %(default)s)",
    )
    p.add_argument(
        "--num-samples-train",
        type=int,
        default=d.num_samples_train,
        help="training-run rows (default %(default)s)",
    )
    p.add_argument(
        "--train-steps",
        type=int,
        default=d.train_steps,
        help="optimiser steps per training run (default %(default)s)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=d.bootstrap,
        help="bootstrap resamples per row (default %(default)s)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["samplers", "precision", "clipping", "seeds", "training", "bpd"],
        help="studies to leave out",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = (
        QUICK
        if args.quick
        else Sizes(
            num_samples=args.num_samples,
            num_samples_long=args.num_samples_long,
            num_samples_train=args.num_samples_train,
            train_steps=args.train_steps,
            bootstrap=args.bootstrap,
        )
    )
    if any(
        n % sizes.batch_size
        for n in (sizes.num_samples, sizes.num_samples_long, sizes.num_samples_train)
    ):
        p.error(
            f"sample counts must be multiples of the batch size {sizes.batch_size} (so that runs share their x_T batch by batch)"
        )
    st = Study(sizes, args.out, argv)
    st.log(f"reference and baselines ready; {cpu_signature()}, torch {torch.__version__}")
    model, diffusion, cfg = load_ema_model(DDPM_MODEL)
    model = model.to(memory_format=torch.channels_last)
    if "bpd" not in args.skip:
        st.result["bits_per_dim"] = bpd_summary(
            model, diffusion, sizes.bpd_images, sizes.bpd_timesteps
        )
        st.log(f"bits/dim of the pretrained model: {st.result['bits_per_dim']['total']:.3f}")
        st.save()
    kept = sampler_study(st, model, diffusion) if "samplers" not in args.skip else {}
    if "precision" not in args.skip and kept:
        precision_study(st, model, diffusion, kept)
    if "clipping" not in args.skip:
        clipping_study(st, model, diffusion)
    if "seeds" not in args.skip:
        seed_study(st, model, diffusion)
    if "training" not in args.skip:
        training_study(st)
    st.result["meta"]["complete"] = True
    st.result["meta"]["seconds"] = round(time.perf_counter() - st.start, 1)
    st.save()
    st.log(f"done: wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
