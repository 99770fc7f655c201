"""Name what is wrong with a trained model: ``python -m ddpm_lib.diagnose RUN_OR_CHECKPOINT``.

Reads a run folder (``checkpoint.pt``, ``loss.csv``, ``samples/``) or a weights file (config and EMA
weights) and runs each check below on what it offers. Every check is a small function that returns
:class:`Finding` s (a problem, a warning, a note, or ok), each one line: what was found, the numbers
that show it, and the fix. The checks on tensors are pure functions, so a notebook or a test can call
them on images it made itself; :func:`diagnose` runs them all and returns the findings.

- ``finite_weights``: NaN or inf in the EMA or raw weights.
- ``terminal_signal``: sqrt(bar-alpha_T) of the schedule; x_T must be pure noise (Lin et al. 2023).
- ``sampling_schedule``: the schedule, T and target you sample with against the training ones.
- ``data_range``: the range and statistics of the training data (recorded, or measured offline).
- ``loss_per_noise_level``: the eps-MSE per band of t against predicting zero noise.
- ``ema_age``: the EMA's weight on the run's earliest weights (decay and warm-up against the steps).
- ``sample_colours``: colour statistics of a small batch of samples against the data's.
- ``memorisation``: each sample's nearest training image against held-out images' nearest distance.
- ``quality_measured``: whether FID and friends have been measured (the card, or an evaluate JSON).

Exit status: 0 with ``no problem found`` when no finding is a problem (warnings do not count unless
``--strict``), 1 when one is, 2 for bad input (one ``error:`` line).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn

from ddpm_lib.build import build_model_from_checkpoint, diffusion_from_config
from ddpm_lib.checkpoints import (
    CHECKPOINT_NAME,
    LOG_NAME,
    CheckpointError,
    load_checkpoint,
    state_mismatch,
)
from ddpm_lib.checks import check_choice, check_float, check_int
from ddpm_lib.config import TrainConfig
from ddpm_lib.data import (
    STANFORD_CARS_TRAIN_SIZE,
    DatasetUnavailableError,
    ImageTensorDataset,
    from_uint8,
    load_dataset,
)
from ddpm_lib.diffusion import GaussianDiffusion, PredictionType, model_device
from ddpm_lib.outputs import check_output, write_text_atomic
from ddpm_lib.sampling import generate
from ddpm_lib.schedules import SCHEDULES, make_betas, terminal_signal
from ddpm_lib.training import ema_decay

Severity = Literal["problem", "warning", "info", "ok"]
SEVERITIES: tuple[str, ...] = get_args(Severity)
Weights = Literal["ema", "raw"]

# One line per check for --help; the thresholds are the constants below, each with its measurement.
CHECKS: dict[str, str] = {
    "finite_weights": "NaN or inf in the EMA or raw weights (problem)",
    "terminal_signal": "sqrt(bar-alpha_T) > 0.05: x_T keeps signal, grey images (problem; > 0.01 warning)",
    "sampling_schedule": "the --schedule / --num-timesteps / --prediction-type / --steps you sample "
    "with differ from the training run's (problem)",
    "data_range": "training data outside [-1, 1], or only in [0, 1] (problem)",
    "loss_per_noise_level": "a band of t whose eps-MSE is >= 0.5 of predicting zero noise (problem)",
    "ema_age": ">= 50% of the EMA's weight on the run's first 10% of steps (problem; >= 20% warning)",
    "sample_colours": "samples much flatter than the data (grey, problem), colour mean shift, "
    "channel std or brightness spread off (warning)",
    "memorisation": ">= 50% of samples far closer to a training image than held-out images are "
    "(problem; >= 20% warning)",
    "quality_measured": "no FID / precision / recall measured yet (a note, never a failure)",
}

# -------------------------------------------------------------------------------- thresholds
# linear T = 1000 (the paper) leaves 0.0064: below; linear T = 300 leaves 0.22
TERMINAL_WARNING = 0.01
TERMINAL_PROBLEM = 0.05  # Lin et al. 2023 find 0.068 (Stable Diffusion) already limits brightness
# eps-MSE / MSE of predicting 0 in one band of t: 1 for a network that learned nothing; the shipped models'
# worst band (t < T/10) measures 0.12 (pretrained), 0.06 (study), 0.03 (conditional)
LOSS_RATIO_PROBLEM = 0.5
EMA_EARLY_SHARE = 0.1  # "the run's earliest weights": its first 10% of steps
EMA_WARNING, EMA_PROBLEM = 0.2, 0.5  # share of the EMA's weight on them
GREY_RATIO = 0.25  # samples' median per-image std below this fraction of the data's: grey
GREY_ABSOLUTE = 0.05  # without data: per-image std below 6/255 is grey
MEAN_SHIFT = 0.15  # per-channel mean difference (in [-1, 1] units, i.e. 19/255)
STD_RATIO = 1.3  # per-channel std ratio beyond 1.3 or below 1/1.3
SPREAD_RATIO = 1.5  # spread of image brightness (std of per-image means) beyond 1.5x or below 1/1.5
COPY_FRACTION = 0.5  # a sample nearer a training image than 0.5x the held-out median is a "copy"
COPY_WARNING, COPY_PROBLEM = 0.2, 0.5  # share of copies among the samples


@dataclass(frozen=True)
class Finding:
    """One result of a check: ``severity``, the ``check``'s name, ``what`` was found with its numbers, the ``fix``."""

    check: str
    severity: Severity
    what: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.severity} [{self.check}] {self.what}" + (
            f" -> fix: {self.fix}" if self.fix else ""
        )


class DiagnoseInputError(ValueError):
    """Input the tool cannot read (a missing file, not a checkpoint); the CLI prints it and exits 2."""


def _ok(check: str, what: str) -> list[Finding]:
    return [Finding(check, "ok", what)]


def _fmt3(values) -> str:
    return "(" + ", ".join(f"{float(v):+.2f}" for v in values) + ")"


# -------------------------------------------------------------------------------- 1. weights
def check_finite_weights(weights: dict[str, dict[str, torch.Tensor]]) -> list[Finding]:
    """NaN / inf in any floating tensor of each named state dict (``{"ema": ..., "model": ...}``)."""
    found = []
    for name, state in weights.items():
        bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            found.append(
                Finding(
                    "finite_weights",
                    "problem",
                    f"the {name} weights hold NaN or inf in {len(bad)} of {len(state)} tensors "
                    f"(first: {bad[0]}): the run diverged",
                    "restore an earlier checkpoint, or restart in a new folder with a lower --lr "
                    "(and --precision fp32); never resume from these weights",
                )
            )
    return found or _ok("finite_weights", f"every {' and '.join(weights)} weight is finite")


# -------------------------------------------------------------------------------- 2. schedule
def check_terminal_signal(betas: torch.Tensor, schedule: str = "") -> list[Finding]:
    """sqrt(bar-alpha_T) (Ho et al. 2020, Eq. 4 at t = T) against pure noise (Lin et al. 2023, Sec. 3.1).

    Algorithm 2 starts from x_T ~ N(0, I); a schedule that leaves a signal s at T trained the network
    on x_T = s x_0 + sqrt(1 - s^2) eps instead, so samples keep the mean brightness of the noise: grey.
    """
    s, T = terminal_signal(betas), len(betas)
    where = f"sqrt(bar-alpha_T) = {s:.3g} ({schedule + ', ' if schedule else ''}T = {T})"
    fix = (
        "train with a longer schedule (linear needs T >= 1000) or --schedule cosine, or rescale "
        "the betas to zero terminal SNR (Lin et al. 2023, Algorithm 1)"
    )
    if s > TERMINAL_PROBLEM:
        what = f"x_T is not pure noise: {where} > {TERMINAL_PROBLEM}; samples come out grey and washed out"
        return [Finding("terminal_signal", "problem", what, fix)]
    if s > TERMINAL_WARNING:
        what = f"x_T keeps a little signal: {where} > {TERMINAL_WARNING}; brightness may be limited"
        return [Finding("terminal_signal", "warning", what, fix)]
    return _ok("terminal_signal", f"x_T is pure noise: {where} <= {TERMINAL_WARNING}")


@dataclass(frozen=True)
class SamplingPlan:
    """How one samples a checkpoint, to check against its training run; None: not given.

    ``betas`` ``(T,)`` compares a hand-built process too (:meth:`from_diffusion`).
    """

    schedule: str | None = None
    num_timesteps: int | None = None
    prediction_type: str | None = None
    num_steps: int | None = None
    betas: torch.Tensor | None = None

    @classmethod
    def from_diffusion(cls, diffusion: GaussianDiffusion, num_steps: int | None = None):
        """The plan of a :class:`GaussianDiffusion` one samples with (its betas, T and target)."""
        return cls(
            num_timesteps=diffusion.num_timesteps,
            prediction_type=diffusion.prediction_type,
            num_steps=num_steps,
            betas=diffusion.betas,
        )

    def given(self) -> bool:
        return any(getattr(self, f) is not None for f in self.__dataclass_fields__)


def check_sampling_schedule(cfg: TrainConfig, plan: SamplingPlan) -> list[Finding]:
    """The schedule, T, target and step count one samples with against the run's (all must agree)."""
    if not plan.given():
        return _ok("sampling_schedule", "no sampling plan given: sampled with the checkpoint's own")
    T = cfg.num_timesteps
    differ = [
        f"{name} {mine!r} vs trained {theirs!r}"
        for name, mine, theirs in (
            ("schedule", plan.schedule, cfg.schedule),
            ("T", plan.num_timesteps, T),
            ("prediction_type", plan.prediction_type, cfg.prediction_type),
        )
        if mine is not None and mine != theirs
    ]
    if plan.betas is not None and len(plan.betas) == T and "T" not in " ".join(differ):
        trained = make_betas(cfg.schedule, T)
        gap = (plan.betas.double() - trained).abs().max().item()
        if gap > 1e-6:
            differ.append(
                f"betas differ from the trained {cfg.schedule} schedule by up to {gap:.3g}"
            )
    if plan.num_steps is not None and not 1 <= plan.num_steps <= T:
        differ.append(f"{plan.num_steps} sampler steps for T = {T} (DDIM takes 1..T)")
    if differ:
        what = "sampling does not match training: " + "; ".join(differ)
        fix = (
            f"sample with the process the checkpoint trained with ({cfg.schedule}, T = {T}, "
            f"{cfg.prediction_type}: checkpoints.diffusion_from_config or load_ema_model); for fewer "
            "steps use DDIM (--steps N), never a smaller T"
        )
        return [Finding("sampling_schedule", "problem", what, fix)]
    return _ok("sampling_schedule", f"the sampling plan matches training ({cfg.schedule}, T = {T})")


# -------------------------------------------------------------------------------- 4. data
def data_statistics(images: torch.Tensor) -> dict:
    """Range and per-channel mean and std of images ``(N, C, H, W)`` as they enter training (plain floats)."""
    x = images.float()
    return {
        "min": x.min().item(),
        "max": x.max().item(),
        "mean": x.mean(dim=(0, 2, 3)).tolist(),
        "std": x.std(dim=(0, 2, 3)).tolist(),
    }


def check_data_range(stats: dict | None, source: str = "") -> list[Finding]:
    """Training data must span [-1, 1] (Ho et al. 2020, Sec. 3.3): out of range, or only [0, 1], is a problem."""
    if stats is None:
        return [
            Finding(
                "data_range",
                "info",
                f"the data's range is not recorded and the data is not available offline{source}",
                "check that the training images are scaled with x / 127.5 - 1 (data.from_uint8)",
            )
        ]
    lo, hi = stats["min"], stats["max"]
    seen = f"range [{lo:.3g}, {hi:.3g}], mean {_fmt3(stats['mean'])}, std {_fmt3(stats['std'])}{source}"
    fix = "scale uint8 images with x / 127.5 - 1 (data.from_uint8) and train again"
    if lo < -1.001 or hi > 1.001:
        what = f"training data outside [-1, 1]: {seen}; the noise no longer dominates x_T"
        return [Finding("data_range", "problem", what, fix)]
    if lo > -0.05 and hi - lo > 0.5:
        what = f"training data only in [0, 1]: {seen}; samples come out washed out"
        return [Finding("data_range", "problem", what, fix)]
    return _ok("data_range", f"training data in [-1, 1]: {seen}")


# -------------------------------------------------------------------------------- 5. loss
def band_edges(num_timesteps: int, num_bands: int = 10) -> list[tuple[int, int]]:
    """``num_bands`` contiguous bands ``[lo, hi)`` of t covering 0..T-1 (fewer when T is smaller)."""
    n = max(1, min(num_bands, num_timesteps))
    cuts = [round(i * num_timesteps / n) for i in range(n + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(n)]


@torch.no_grad()
def loss_per_band(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    labels: torch.Tensor | None = None,
    num_bands: int = 10,
    seed: int = 0,
    batch_size: int = 64,
) -> list[dict]:
    """eps-MSE of the model and of predicting zero noise per band of t, on x0 ``(N, C, H, W)`` in [-1, 1].

    Each band gets every image of ``x0`` once at a t drawn uniformly in it. A v-prediction network's output
    is turned into eps (:meth:`GaussianDiffusion.eps_from_output`) so every model is measured alike:
    the eps-MSE is near 1 (predicting zero, E[eps^2]) for a network that has learned nothing.
    """
    g = torch.Generator().manual_seed(seed)
    bands = band_edges(diffusion.num_timesteps, num_bands)
    n = len(x0)
    t = torch.cat([torch.randint(lo, hi, (n,), generator=g) for lo, hi in bands])  # (bands * N,)
    noise = torch.randn((len(t), *x0.shape[1:]), generator=g)
    x0_all = x0.repeat(len(bands), 1, 1, 1)
    labels_all = labels.repeat(len(bands)) if labels is not None else None
    device = model_device(model)
    errors = torch.empty(len(t))
    for i in range(0, len(t), batch_size):
        part = slice(i, i + batch_size)
        x_t = diffusion.q_sample(x0_all[part], t[part], noise[part])
        lab = labels_all[part].to(device) if labels_all is not None else None
        x_in = x_t.to(device).contiguous(
            memory_format=torch.channels_last
        )  # as the network's weights
        out = diffusion.model_output(model, x_in, t[part].to(device), lab).float().cpu()
        eps = diffusion.eps_from_output(x_t, t[part], out)
        errors[part] = (eps - noise[part]).pow(2).flatten(1).mean(1)
    trivial = noise.pow(2).flatten(1).mean(1)
    return [
        {
            "band": band,
            "loss": errors[k * n : (k + 1) * n].mean().item(),
            "trivial": trivial[k * n : (k + 1) * n].mean().item(),
        }
        for k, band in enumerate(bands)
    ]


def check_loss_bands(rows: list[dict], source: str = "") -> list[Finding]:
    """Flag bands of t whose eps-MSE is not clearly below predicting zero noise (``rows``: :func:`loss_per_band`)."""
    ratios = [r["loss"] / r["trivial"] for r in rows]
    text = ", ".join(f"t {r['band'][0]}-{r['band'][1] - 1}: {r['loss']:.3f}" for r in rows)
    stuck = [r["band"] for r, q in zip(rows, ratios) if not q < LOSS_RATIO_PROBLEM]
    if stuck:
        where = ", ".join(f"{lo}-{hi - 1}" for lo, hi in stuck)
        what = (
            f"the network predicts the noise no better than zero at t {where}: eps-MSE "
            f"{max(ratios):.2f}x that of predicting 0 ({text}){source}"
        )
        fix = (
            "train longer (or sample the raw weights if the EMA is young); if the loss stopped "
            "falling, check the data range, the learning rate (try 2e-4 .. 1e-3) and that the "
            "model sees t"
        )
        return [Finding("loss_per_noise_level", "problem", what, fix)]
    return _ok(
        "loss_per_noise_level",
        f"eps-MSE below {LOSS_RATIO_PROBLEM} of predicting 0 in every band, at most "
        f"{max(ratios):.2f}x ({text}){source}",
    )


BAND_COLUMN = re.compile(r"^eps_mse_t(\d+)_(\d+)$")  # a loss.csv column: eps-MSE for t in [lo, hi]


def read_loss_log(path: Path) -> tuple[list[dict], list[dict]]:
    """``loss.csv`` as ``(rows, bands)``: its rows as floats, and the per-band eps-MSE of its last row.

    ``bands`` comes from columns ``eps_mse_t{lo}_{hi}`` (t in [lo, hi], both included) when the log has
    them, in :func:`loss_per_band`'s form (trivial = 1, E[eps^2]); otherwise it is empty.
    """
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                rows.append({k: float(v) for k, v in r.items() if k is not None})
            except (TypeError, ValueError):
                continue
    bands = []
    if rows:
        for key, value in rows[-1].items():
            m = BAND_COLUMN.match(key)
            if m:
                band = (int(m[1]), int(m[2]) + 1)
                bands.append({"band": band, "loss": value, "trivial": 1.0})
    return rows, sorted(bands, key=lambda b: b["band"])


def check_loss_log(rows: list[dict]) -> list[Finding]:
    """The logged training loss: every row finite, and where it ended against where it started."""
    losses = [r["loss"] for r in rows if "loss" in r]
    if not losses:
        return [Finding("loss_per_noise_level", "info", "loss.csv holds no loss rows yet")]
    bad = [r.get("step", float("nan")) for r in rows if not math.isfinite(r.get("loss", 0.0))]
    if bad:
        what = f"the logged loss is NaN or inf from step {bad[0]:.0f} ({len(bad)} rows)"
        fix = "restore an earlier checkpoint or restart with a lower --lr (or --precision fp32)"
        return [Finding("loss_per_noise_level", "problem", what, fix)]
    k = max(1, len(losses) // 10)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return _ok(
        "loss_per_noise_level",
        f"logged loss finite over {len(losses)} rows: {first:.4f} in the first tenth, {last:.4f} "
        "in the last",
    )


# -------------------------------------------------------------------------------- 6. EMA
def ema_decays(decay: float, warmup: bool, updates: int) -> torch.Tensor:
    """The decay of each EMA update k = 1 .. updates-1, float64 ``(updates - 1,)``.

    The trainer's own rule, :func:`ddpm_lib.training.ema_decay`.
    """
    return ema_decay(decay, warmup, torch.arange(1, max(updates, 1)))


def ema_step_weights(decay: float, warmup: bool, updates: int) -> torch.Tensor:
    """The weight of the model after each optimiser step 1..updates in the EMA, float64 ``(updates,)``, sum 1."""
    if updates < 1:
        return torch.zeros(0, dtype=torch.float64)
    d = ema_decays(decay, warmup, updates)
    # the weights of step j survive the decays of updates j .. updates-1
    survive = torch.cat([torch.flip(torch.cumprod(torch.flip(d, [0]), 0), [0]), d.new_ones(1)])
    gain = torch.cat([d.new_ones(1), 1 - d])  # step 1 is copied; step j > 1 enters with 1 - decay
    return gain * survive


def check_ema_age(decay: float, warmup: bool, steps: int) -> list[Finding]:
    """The EMA's weight on the run's first 10% of steps (its nearly untrained weights) against its length."""
    if steps < 1:
        return [
            Finding(
                "ema_age",
                "problem",
                "no optimiser step taken: the EMA holds the initial (random) weights",
                "train the model first",
            )
        ]
    w = ema_step_weights(decay, warmup, steps)
    early = max(1, int(EMA_EARLY_SHARE * steps))
    share = w[:early].sum().item()
    last = ema_decays(decay, warmup, steps)
    d_now = last[-1].item() if len(last) else 0.0
    horizon = 1 / (1 - d_now) if d_now < 1 else float("inf")
    rule = "with warm-up" if warmup else "without warm-up"
    what = (
        f"EMA decay {decay:g} {rule}: decay now {d_now:.4f} (averages ~"
        f"{horizon:,.0f} steps), {share:.1%} of its weight on the first {early:,} of {steps:,} steps"
    )
    fix = (
        "sample the raw weights (--weights raw), lower --ema-decay (0.999 for short runs), keep "
        "the EMA warm-up on, or train longer"
    )
    if share >= EMA_PROBLEM:
        return [
            Finding("ema_age", "problem", f"the EMA is still mostly the early weights: {what}", fix)
        ]
    if share >= EMA_WARNING:
        return [Finding("ema_age", "warning", f"the EMA is young: {what}", fix)]
    return _ok("ema_age", f"the EMA has forgotten the early weights: {what}")


# -------------------------------------------------------------------------------- 7. colours
def colour_statistics(images: torch.Tensor) -> dict:
    """Colour statistics of images ``(N, C, H, W)`` in [-1, 1] (plain floats).

    ``mean``/``std``: per channel over all pixels; ``spread``: the std of the images' mean brightness;
    ``contrast``: the median over images of each image's std over its pixels (0 for a flat image).
    """
    x = images.float()
    return {
        "mean": x.mean(dim=(0, 2, 3)).tolist(),
        "std": x.std(dim=(0, 2, 3)).tolist(),
        "spread": x.mean(dim=(1, 2, 3)).std().item() if len(x) > 1 else 0.0,
        "contrast": x.flatten(1).std(dim=1).median().item(),
    }


def check_sample_colours(samples: torch.Tensor, data: torch.Tensor | None) -> list[Finding]:
    """Samples ``(N, C, H, W)`` against the training ``data`` ``(M, C, H, W)``, both in [-1, 1].

    Grey samples (a contrast below a quarter of the data's) are a problem; a shifted colour mean, a channel
    std or a brightness spread off by the ratios above are warnings.
    """
    s = colour_statistics(samples)
    if data is None:
        if s["contrast"] < GREY_ABSOLUTE:
            what = f"the samples are flat (grey): median per-image std {s['contrast']:.3f} < {GREY_ABSOLUTE}"
            return [Finding("sample_colours", "problem", what, _GREY_FIX)]
        return _ok(
            "sample_colours",
            f"samples not flat (median per-image std {s['contrast']:.3f}); no data to compare colours",
        )
    d = colour_statistics(data)
    if s["contrast"] < GREY_RATIO * d["contrast"]:
        what = (
            f"the samples are grey: median per-image std {s['contrast']:.3f} against the data's "
            f"{d['contrast']:.3f} (< {GREY_RATIO:g}x); channel means {_fmt3(s['mean'])}"
        )
        return [Finding("sample_colours", "problem", what, _GREY_FIX)]
    shift = max(abs(a - b) for a, b in zip(s["mean"], d["mean"]))
    ratios = [a / max(b, 1e-6) for a, b in zip(s["std"], d["std"])]
    spread = s["spread"] / max(d["spread"], 1e-6)
    issues = []
    if shift > MEAN_SHIFT:
        issues.append(
            f"channel means {_fmt3(s['mean'])} vs data {_fmt3(d['mean'])} (shift {shift:.2f})"
        )
    if max(ratios) > STD_RATIO or min(ratios) < 1 / STD_RATIO:
        issues.append(f"channel std {_fmt3(s['std'])} vs data {_fmt3(d['std'])}")
    if spread > SPREAD_RATIO or spread < 1 / SPREAD_RATIO:
        issues.append(
            f"brightness spread {s['spread']:.3f} vs data {d['spread']:.3f} ({spread:.2f}x)"
        )
    numbers = (
        f"mean shift {shift:.2f}, std ratios {', '.join(f'{r:.2f}' for r in ratios)}, "
        f"brightness spread {spread:.2f}x, contrast {s['contrast']:.3f} vs {d['contrast']:.3f}"
    )
    if issues:
        what = f"sample colours differ from the data's ({len(samples)} samples): " + "; ".join(
            issues
        )
        fix = (
            "check the data range and x0 clipping at sampling, the schedule's terminal signal, and "
            "train longer; a few-step sampler or a young EMA shifts colours too"
        )
        return [Finding("sample_colours", "warning", what, fix)]
    return _ok(
        "sample_colours", f"sample colours match the data's ({len(samples)} samples): {numbers}"
    )


_GREY_FIX = (
    "check the terminal signal and the sampling schedule (both above), that sampling starts from "
    "N(0, I) and runs the reverse process to t = 0, and that the EMA is not young"
)


# -------------------------------------------------------------------------------- 8. memorisation
def nearest_distances(
    queries: torch.Tensor, reference: torch.Tensor, exclude_self: bool = False, chunk: int = 512
) -> torch.Tensor:
    """RMS pixel distance of each query ``(N, C, H, W)`` to its nearest reference image or its mirror.

    ``reference`` ``(M, C, H, W)``; mirrored copies count because training flips images. With
    ``exclude_self`` (queries is reference) an image's own copies are skipped. Returns ``(N,)``.
    """
    q = queries.float().flatten(1)
    refs = [reference.float().flatten(1), reference.float().flip(-1).flatten(1)]
    dim = q.shape[1]
    out = torch.empty(len(q))
    for i in range(0, len(q), chunk):
        d = torch.stack([torch.cdist(q[i : i + chunk], r) for r in refs]).amin(0)
        if exclude_self:
            rows = torch.arange(i, min(i + chunk, len(q)))
            d[rows - i, rows] = float("inf")
        out[i : i + chunk] = d.amin(1)
    return out / math.sqrt(dim)


def check_memorisation(
    samples: torch.Tensor, train: torch.Tensor, held_out: torch.Tensor | None = None
) -> list[Finding]:
    """Samples much nearer a training image than held-out images are: copies (Carlini et al. 2023).

    The scale is the median nearest distance of ``held_out`` images ``(K, C, H, W)`` to ``train`` ``(M, C,
    H, W)`` (else of each training image to the others); a sample nearer than ``COPY_FRACTION`` of it is a copy.
    """
    if len(train) < 2 and held_out is None:
        return [
            Finding(
                "memorisation", "info", "fewer than 2 training images: no scale to compare with"
            )
        ]
    d = nearest_distances(samples, train)
    ref = (
        nearest_distances(held_out, train)
        if held_out is not None
        else nearest_distances(train, train, True)
    )
    scale = ref.median().item()
    copies = (d < COPY_FRACTION * scale).float().mean().item()
    whose = "held-out images'" if held_out is not None else "training images' (to each other)"
    numbers = (
        f"median nearest distance {d.median().item():.3f} vs {scale:.3f} for the {whose}, "
        f"{copies:.0%} of {len(samples)} samples nearer than {COPY_FRACTION:g}x that "
        f"({len(train)} training images)"
    )
    fix = (
        "more training data (or augmentation), fewer steps or a smaller model; check samples "
        "against their nearest training images"
    )
    if copies >= COPY_PROBLEM:
        return [
            Finding(
                "memorisation", "problem", f"the model copies its training images: {numbers}", fix
            )
        ]
    if copies >= COPY_WARNING:
        return [Finding("memorisation", "warning", f"some samples are near-copies: {numbers}", fix)]
    return _ok("memorisation", f"samples are not copies: {numbers}")


# -------------------------------------------------------------------------------- 9. quality
def check_quality_measured(card: dict | None, results: list[Path], command: str) -> list[Finding]:
    """Whether sample quality has been measured: the card's ``metrics``, or evaluate JSON files ``results``."""
    metrics = (card or {}).get("metrics") or []
    if metrics:
        shown = "; ".join(
            f"{m.get('name')} {m.get('value'):.3g}"
            if isinstance(m.get("value"), float)
            else str(m.get("name"))
            for m in metrics[:3]
        )
        return _ok("quality_measured", f"the model card records {len(metrics)} scores: {shown}")
    for path in results:
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(result, dict) and isinstance(result.get("fid"), (int, float)):
            return _ok(
                "quality_measured",
                f"{path.name}: FID {result['fid']:.3g} ({result.get('num_samples')} samples)",
            )
    what = "sample quality has not been measured (no metrics in a model card, no evaluate JSON beside it)"
    return [Finding("quality_measured", "info", what, f"measure it: {command}")]


# -------------------------------------------------------------------------------- reading the input
@dataclass
class _Input:
    """What the tool reads: the checkpoint dict, its config, and the run folder or file it came from."""

    ckpt: dict
    cfg: TrainConfig
    name: str
    file: Path | None = None
    folder: Path | None = None  # a run folder (loss.csv beside the checkpoint)


def _read_input(source: str | os.PathLike | dict) -> _Input:
    """A checkpoint dict, a weights file or a run folder, each refused with one line when unusable."""
    file = folder = None
    if isinstance(source, dict):
        if not {"config", "ema"} <= set(source):
            raise DiagnoseInputError("a checkpoint dict needs 'config' and 'ema' (weights)")
        ckpt, name = source, "the checkpoint given"
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            if not (path / CHECKPOINT_NAME).is_file():
                raise DiagnoseInputError(
                    f"{path} is a folder without {CHECKPOINT_NAME}: not a run folder; give a run "
                    "folder or a weights file"
                )
            folder, path = path, path / CHECKPOINT_NAME
        try:
            ckpt = load_checkpoint(path)
        except (FileNotFoundError, CheckpointError) as exc:
            raise DiagnoseInputError(str(exc)) from exc
        file, name = path, str(folder or path)
    try:
        cfg = TrainConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise DiagnoseInputError(f"{name} holds a config this version cannot read: {exc}") from exc
    return _Input(ckpt, cfg, name, file, folder)


def _network(inp: _Input, weights: Weights) -> nn.Module:
    """The checkpoint's network with its EMA or raw weights, float32 and in eval mode, on the CPU."""
    key = "ema" if weights == "ema" else "model"
    if key not in inp.ckpt:
        raise DiagnoseInputError(
            f"{inp.name} holds no raw weights (exported weights keep the EMA only); use --weights ema"
        )
    try:
        model = build_model_from_checkpoint(inp.ckpt)
    except (TypeError, ValueError) as exc:
        raise DiagnoseInputError(f"{inp.name}: cannot build its network: {exc}") from exc
    state = {
        k.removeprefix("module."): v.float() if v.is_floating_point() else v
        for k, v in inp.ckpt[key].items()
        if k != "n_averaged"
    }
    mismatch = state_mismatch(model.state_dict(), state)
    if mismatch:
        raise DiagnoseInputError(
            f"{inp.name}: its {key} weights do not fit its network ({mismatch})"
        )
    model.load_state_dict(state)
    return model.to(memory_format=torch.channels_last).eval()


@dataclass
class _Data:
    """Training images as they enter training (float ``(N, C, H, W)``), their labels, held-out images."""

    x0: torch.Tensor
    labels: torch.Tensor | None
    held_out: torch.Tensor | None
    source: str


def _dataset_offline(cfg: TrainConfig, split: str, n: int) -> ImageTensorDataset:
    """Up to ``n`` images of the config's dataset without a download (toy_cars is generated)."""
    if cfg.dataset == "toy_cars":
        total = (cfg.num_images or STANFORD_CARS_TRAIN_SIZE) if split == "train" else n
        return _toy_cars(cfg.image_size, split, min(n, total), cfg.seed)
    if cfg.dataset == "cifar10":
        return load_dataset("cifar10", cfg.image_size, split, cfg.data_root, download=False)
    if cfg.data_root is None or not Path(cfg.data_root).expanduser().exists():
        raise DatasetUnavailableError(f"{cfg.dataset} needs its data_root, which is not here")
    return load_dataset(cfg.dataset, cfg.image_size, split, cfg.data_root)


@functools.lru_cache(maxsize=8)
def _toy_cars(image_size: int, split: str, n: int, seed: int) -> ImageTensorDataset:
    """Toy cars, kept for the next diagnosis in this process (a notebook diagnoses run after run)."""
    return load_dataset("toy_cars", image_size, split, num_images=n, seed=seed)


def _load_data(cfg: TrainConfig, n: int, given) -> _Data | None:
    """The data to compare with: ``given`` (a dataset or images), else the config's dataset if offline."""
    if given is not None:
        if isinstance(given, ImageTensorDataset):
            return _Data(from_uint8(given.images[:n]), given.labels[:n], None, " (the data given)")
        images = torch.as_tensor(given)
        x0 = from_uint8(images) if images.dtype == torch.uint8 else images.float()
        return _Data(x0[:n], None, None, " (the data given)")
    try:
        train = _dataset_offline(cfg, "train", n)
    except (DatasetUnavailableError, ValueError, OSError):
        return None
    keep = torch.linspace(0, len(train) - 1, min(n, len(train))).round().long().unique()
    held = None
    if cfg.dataset != "folder":
        try:
            test = _dataset_offline(cfg, "test", min(256, n))
            held = from_uint8(test.images[: min(256, n)])
        except (DatasetUnavailableError, ValueError, OSError):
            held = None
    where = f" (measured on {len(keep):,} of {len(train):,} {cfg.dataset} train images)"
    if cfg.dataset == "toy_cars":
        where = f" (measured on {len(keep):,} {cfg.dataset} train images)"
    return _Data(from_uint8(train.images[keep]), train.labels[keep], held, where)


def _recorded_stats(ckpt: dict) -> dict | None:
    """Data statistics a checkpoint records (:func:`data_statistics`), under ``data_stats`` or its card's data."""
    card = ckpt.get("model_card") or {}
    stats = ckpt.get("data_stats") or (card.get("data") or {}).get("stats")
    return (
        stats if isinstance(stats, dict) and {"min", "max", "mean", "std"} <= set(stats) else None
    )


def _results_beside(inp: _Input) -> list[Path]:
    """Evaluate JSON files in the run folder, or named after the weights file beside it."""
    if inp.folder is not None:
        return sorted(inp.folder.glob("*.json"))
    if inp.file is not None:
        return sorted(inp.file.parent.glob(f"{inp.file.stem}*.json"))
    return []


# -------------------------------------------------------------------------------- the whole diagnosis
def diagnose(
    source: str | os.PathLike | dict,
    *,
    plan: SamplingPlan = SamplingPlan(),
    num_samples: int = 64,
    steps: int = 20,
    eta: float = 1.0,
    seed: int = 0,
    data_images: int = 1000,
    loss_images: int = 32,
    weights: Weights = "ema",
    data: ImageTensorDataset | torch.Tensor | None = None,
    skip: tuple[str, ...] = (),
) -> list[Finding]:
    """Run every check (module docstring) on a run folder, a weights file or a checkpoint dict.

    Samples: ``num_samples`` DDIM-``steps`` (eta ``eta``, fp32, ``seed``) from the ``weights`` (``"ema"`` or
    ``"raw"``) with the checkpoint's own process; ``plan.num_steps`` replaces ``steps`` when it is valid.
    ``data``: the training images (an :class:`ImageTensorDataset`, or a tensor as it enters training) to
    compare with; else ``data_images`` of the config's dataset when it is available offline. The loss is
    measured on ``loss_images`` of them per band of t. ``skip``: names of checks to leave out.
    Returns the findings in the order of :data:`CHECKS`; raises :class:`DiagnoseInputError` on bad input.
    """
    unknown = set(skip) - set(CHECKS)
    if unknown:
        raise DiagnoseInputError(f"unknown check(s) {sorted(unknown)}; valid: {', '.join(CHECKS)}")
    try:  # the shared checks, raised as this tool's own error
        for name, value, least in (
            ("num_samples", num_samples, 2),
            ("steps", steps, 1),
            ("data_images", data_images, 2),
            ("loss_images", loss_images, 1),
        ):
            check_int(value, name, least)
        check_float(eta, "eta", 0, 1)
        check_choice(weights, Weights, "weights")
    except ValueError as exc:
        raise DiagnoseInputError(str(exc)) from None
    inp = _read_input(source)
    cfg, ckpt = inp.cfg, inp.ckpt
    run = {name: name not in skip for name in CHECKS}
    found: list[Finding] = []
    named = {
        "ema": ckpt["ema"],
        **({"raw": ckpt["model"]} if isinstance(ckpt.get("model"), dict) else {}),
    }
    if run["finite_weights"]:
        found += check_finite_weights(named)
    chosen = named.get(weights, {})
    usable = all(v.isfinite().all() for v in chosen.values() if v.is_floating_point())
    if run["terminal_signal"]:
        found += check_terminal_signal(make_betas(cfg.schedule, cfg.num_timesteps), cfg.schedule)
    if run["sampling_schedule"]:
        found += check_sampling_schedule(cfg, plan)
    needs_data = any(
        run[n] for n in ("data_range", "loss_per_noise_level", "sample_colours", "memorisation")
    )
    loaded = _load_data(cfg, data_images, data) if needs_data else None
    if run["data_range"]:
        recorded = _recorded_stats(ckpt)
        if recorded is not None:
            found += check_data_range(recorded, " (recorded in the checkpoint)")
        elif loaded is not None:
            found += check_data_range(
                data_statistics(loaded.x0), " (not recorded; " + loaded.source[2:]
            )
        else:
            found += check_data_range(None, f" ({cfg.dataset})")
    model = _network(inp, weights) if usable else None
    diffusion = diffusion_from_config(cfg)
    if run["loss_per_noise_level"]:
        found += _loss_findings(inp, model, diffusion, loaded, loss_images, seed)
    if run["ema_age"]:
        updates = ckpt["ema"].get("n_averaged")
        steps_done = int(updates) if isinstance(updates, torch.Tensor) else int(ckpt.get("step", 0))
        found += check_ema_age(cfg.ema_decay, cfg.ema_warmup, steps_done)
    if run["sample_colours"] or run["memorisation"]:
        if model is None:
            found += [
                Finding(c, "info", f"skipped: the {weights} weights are not finite")
                for c in ("sample_colours", "memorisation")
                if run[c]
            ]
        else:
            ok_steps = (
                plan.num_steps if plan.num_steps and plan.num_steps <= cfg.num_timesteps else steps
            )
            samples = _samples(
                model, diffusion, cfg, num_samples, min(ok_steps, cfg.num_timesteps), eta, seed
            )
            if run["sample_colours"]:
                found += check_sample_colours(samples, loaded.x0 if loaded else None)
            if run["memorisation"]:
                found += (
                    check_memorisation(samples, loaded.x0, loaded.held_out)
                    if loaded is not None
                    else [
                        Finding(
                            "memorisation", "info", "skipped: no training data available offline"
                        )
                    ]
                )
    if run["quality_measured"]:
        where = inp.file or "CHECKPOINT"
        command = f"python -m ddpm_lib.evaluate --checkpoint {where} --json {Path(str(where)).with_suffix('')}.eval.json"
        found += check_quality_measured(ckpt.get("model_card"), _results_beside(inp), command)
    return found


def _loss_findings(inp, model, diffusion, loaded, loss_images, seed) -> list[Finding]:
    """The loss log of a run folder, and the eps-MSE per band of t (logged, else measured)."""
    found, bands = [], []
    log = inp.folder / LOG_NAME if inp.folder is not None else None
    if log is not None and log.is_file():
        rows, bands = read_loss_log(log)
        found += check_loss_log(rows)
    if bands:
        return found + check_loss_bands(bands, " (from loss.csv)")
    if model is None:
        return found + [
            Finding("loss_per_noise_level", "info", "not measured: the weights are not finite")
        ]
    if loaded is None:
        return found + [
            Finding("loss_per_noise_level", "info", "not measured: no training data offline")
        ]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(loaded.x0), generator=g)[:loss_images]
    labels = loaded.labels[pick] if inp.cfg.class_cond and loaded.labels is not None else None
    rows = loss_per_band(model, diffusion, loaded.x0[pick], labels, seed=seed)
    return found + check_loss_bands(rows, f" ({len(pick)} images per band)")


def _samples(
    model, diffusion, cfg: TrainConfig, n: int, steps: int, eta: float, seed: int
) -> torch.Tensor:
    """``n`` DDIM samples in fp32 ``(n, C, H, W)``; a class-conditional model draws its classes in turn."""
    labels = torch.arange(n) % cfg.num_classes if cfg.class_cond else None
    return generate(
        model,
        diffusion,
        n,
        cfg.image_size,
        sampler="ddim",
        num_steps=steps,
        eta=eta,
        seed=seed,
        precision="fp32",
        labels=labels,
    ).images


# -------------------------------------------------------------------------------- the command line
def build_parser() -> argparse.ArgumentParser:
    checks = "\n".join(f"  {name:<22} {text}" for name, text in CHECKS.items())
    p = argparse.ArgumentParser(
        prog="python -m ddpm_lib.diagnose",
        description=__doc__,
        epilog=f"checks and their thresholds:\n{checks}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        metavar="RUN_OR_CHECKPOINT",
        type=Path,
        help="a run folder (checkpoint.pt, loss.csv) or a checkpoint / exported weights file",
    )
    g = p.add_argument_group("how you sample (checked against the training run when given)")
    g.add_argument("--schedule", choices=SCHEDULES, default=None)
    g.add_argument("--num-timesteps", type=int, default=None, help="T")
    g.add_argument("--prediction-type", choices=get_args(PredictionType), default=None)
    g.add_argument(
        "--steps",
        type=int,
        default=None,
        help="DDIM steps (also of the samples drawn here; default 20)",
    )
    m = p.add_argument_group("the measurement")
    m.add_argument(
        "--num-samples", type=int, default=64, help="samples drawn (default %(default)s)"
    )
    m.add_argument("--eta", type=float, default=1.0, help="DDIM eta of the samples (default 1)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument(
        "--data-images",
        type=int,
        default=1000,
        help="training images compared with (default %(default)s)",
    )
    m.add_argument(
        "--loss-images",
        type=int,
        default=32,
        help="images per band of t for the loss (default %(default)s)",
    )
    m.add_argument(
        "--weights",
        choices=get_args(Weights),
        default="ema",
        help="sample the EMA (default) or the raw weights of a training checkpoint",
    )
    m.add_argument("--skip", nargs="+", choices=list(CHECKS), default=[], metavar="CHECK")
    p.add_argument("--json", type=Path, default=None, help="write the findings to this JSON file")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p.add_argument("-v", "--verbose", action="store_true", help="print the ok lines too")
    return p


def report(findings: list[Finding], verbose: bool = False) -> str:
    """The findings as text, one line each (ok lines only when ``verbose``), then the verdict."""
    lines = [str(f) for f in findings if verbose or f.severity != "ok"]
    problems = sum(f.severity == "problem" for f in findings)
    warnings = sum(f.severity == "warning" for f in findings)
    if problems:
        lines.append(f"{problems} problem(s) found, {warnings} warning(s)")
    else:
        lines.append(f"no problem found ({warnings} warning(s))")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if args.json is not None:
            check_output(args.json, "--json", (".json",), [("the input", args.source)])
        plan = SamplingPlan(args.schedule, args.num_timesteps, args.prediction_type, args.steps)
        findings = diagnose(
            args.source,
            plan=plan,
            num_samples=args.num_samples,
            steps=args.steps if args.steps and args.steps >= 1 else 20,
            eta=args.eta,
            seed=args.seed,
            data_images=args.data_images,
            loss_images=args.loss_images,
            weights=args.weights,
            skip=tuple(args.skip),
        )
    except (DiagnoseInputError, ValueError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(report(findings, args.verbose) + f" in {seconds:.1f} s")
    if args.json is not None:
        doc = {
            "source": str(args.source),
            "seconds": round(seconds, 1),
            "problems": sum(f.severity == "problem" for f in findings),
            "warnings": sum(f.severity == "warning" for f in findings),
            "findings": [asdict(f) for f in findings],
        }
        write_text_atomic(args.json, json.dumps(doc, indent=2) + "\n")
    bad = {"problem", "warning"} if args.strict else {"problem"}
    return 1 if any(f.severity in bad for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
