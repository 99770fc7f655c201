"""Figures for the notebooks, kept out of the narrative.

Every function draws on matplotlib and returns the Figure; none calls ``plt.show()``.
Images are float tensors in [-1, 1] or uint8 tensors, ``(B, 3, H, W)`` or ``(3, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torchvision.utils import make_grid

from ddpm_lib.data import from_uint8, to_uint8
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.schedules import SCHEDULES, alphas_cumprod_from_betas, log_snr, make_betas


def to_numpy_image(x: torch.Tensor, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """A float tensor in [-1, 1] or a uint8 one, ``(3, H, W)`` or ``(B, 3, H, W)``, as a uint8 ``(H, W, 3)`` array (a grid for a batch)."""
    x = from_uint8(x.cpu()) if x.dtype == torch.uint8 else x.detach().float().cpu()
    if x.dim() == 4:
        x = make_grid(
            x, nrow=nrow or int(math.ceil(math.sqrt(len(x)))), padding=padding, pad_value=1.0
        )
    return to_uint8(x).permute(1, 2, 0).numpy()


def show_images(
    x: torch.Tensor, nrow: int | None = None, title: str | None = None, ax=None, scale: float = 0.5
):
    """Show one image or a grid; returns the Figure."""
    img = to_numpy_image(x, nrow)
    if ax is None:
        h, w = img.shape[:2]
        fig, ax = plt.subplots(figsize=(max(2.0, w / 32 * scale), max(2.0, h / 32 * scale)))
    ax.imshow(img, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax.figure


def plot_schedules(
    num_timesteps: int = 1000,
    names: Sequence[str] = SCHEDULES,
    highlight: str | None = None,
    axes=None,
):
    """beta_t, bar-alpha_t, sqrt(bar-alpha_t) vs sqrt(1 - bar-alpha_t) and log-SNR for several schedules.

    ``axes``: four Axes to draw on (a row of a larger figure); None makes a new 1x4 Figure.
    """
    own = axes is None
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4)) if own else (axes[0].figure, axes)
    t = np.arange(num_timesteps)
    for name in names:
        betas = make_betas(name, num_timesteps)
        ac = alphas_cumprod_from_betas(betas)
        kw = dict(
            lw=2.5 if name == highlight else 1.5,
            alpha=1.0 if highlight in (None, name) else 0.4,
            label=name,
        )
        axes[0].plot(t, betas, **kw)
        axes[1].plot(t, ac, **kw)
        (line,) = axes[2].plot(t, ac.sqrt(), **kw)
        axes[2].plot(
            t, (1 - ac).sqrt(), ls="--", color=line.get_color(), lw=kw["lw"], alpha=kw["alpha"]
        )
        axes[3].plot(t, log_snr(betas), **kw)
    titles = [
        r"$\beta_t$ (log scale: cosine's clipped last step is 0.999)",
        r"$\bar\alpha_t$",
        r"$\sqrt{\bar\alpha_t}$ (solid) and $\sqrt{1-\bar\alpha_t}$ (dashed)",
        r"log-SNR $\log\frac{\bar\alpha_t}{1-\bar\alpha_t}$",
    ]
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")  # on a linear axis cosine's 0.999 flattens every other curve
    axes[0].legend()
    if own:
        fig.tight_layout()
    return fig


def forward_strip(
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    timesteps: Sequence[int],
    noise: torch.Tensor | None = None,
):
    """Rows: images of ``x0`` ``(B, 3, H, W)``; columns: x_t at each of ``timesteps`` (Eq. 4, same noise per row)."""
    noise = torch.randn_like(x0) if noise is None else noise
    cols = [diffusion.q_sample(x0, torch.full((len(x0),), t), noise) for t in timesteps]
    grid = torch.stack(cols, 1).flatten(0, 1)  # (B * len(ts), 3, H, W), row-major
    fig = show_images(grid, nrow=len(timesteps), scale=0.9)
    ax = fig.axes[0]
    h = x0.shape[-1] + 2
    ax.set_xticks([(i + 0.5) * h for i in range(len(timesteps))], [f"t={t}" for t in timesteps])
    ax.set_axis_on()
    ax.tick_params(length=0)
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    return fig


def plot_loss(history: Sequence[dict] | str | Path, smooth: int = 10, ax=None):
    """The training loss against steps (raw and a moving average), from a history list or loss.csv."""
    if isinstance(history, (str, Path)):
        import csv

        with open(history, newline="") as f:
            history = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    steps = np.array([r["step"] for r in history])
    loss = np.array([r["loss"] for r in history])
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(steps, loss, alpha=0.35, label="loss (per log window)")
    if len(loss) >= smooth:
        ax.plot(
            steps[smooth - 1 :],
            np.convolve(loss, np.ones(smooth) / smooth, mode="valid"),
            label=f"moving average of {smooth}",
        )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(r"$L_{simple}$")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.figure.tight_layout()
    return ax.figure


def save_denoising_animation(
    trajectory: dict,
    path: str | Path,
    frames: int = 40,
    nrow: int | None = None,
    scale: int = 3,
    duration_ms: int = 80,
) -> Path:
    """A GIF of the reverse process from :func:`ddpm_lib.sampling.trajectory`: x_t (left) and the predicted x_0 (right).

    ``path`` must end in ``.gif``; it is written atomically (:func:`ddpm_lib.outputs.write_atomic`).
    """
    from PIL import Image

    from ddpm_lib.checks import check_int
    from ddpm_lib.outputs import check_output, write_atomic

    path = check_output(path, "path", (".gif",))
    for value, what in ((frames, "frames"), (scale, "scale"), (duration_ms, "duration_ms")):
        check_int(value, what, 1)
    steps = len(trajectory["timesteps"])
    idx = np.unique(np.round(np.linspace(0, steps - 1, frames)).astype(int))
    images = []
    for i in idx:
        left = to_numpy_image(trajectory["x_t"][i], nrow)
        right = to_numpy_image(trajectory["x0_pred"][i], nrow)
        gap = np.full((left.shape[0], 4, 3), 255, np.uint8)
        frame = Image.fromarray(np.concatenate([left, gap, right], 1))
        images.append(
            frame.resize((frame.width * scale, frame.height * scale), Image.Resampling.NEAREST)
        )
    durations = [duration_ms] * (len(images) - 1) + [2000]  # rest on the result
    return write_atomic(
        path,
        lambda f: images[0].save(
            f, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0
        ),
    )


def plot_recipe_study(study: dict, budget: str = "budget_10min", highlight: Sequence[str] = ()):
    """The recipe study of ``benchmarks/recipe.py`` (its JSON as a dict): FID against CPU minutes for every recipe
    (the default's seeds in black, ``highlight`` in colour), and each recipe's final precision and recall as fractions
    of the real-vs-real baseline. Returns the Figure."""
    section = study[budget]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1.25, 1]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    runs = {
        **section["runs"],
        **{f"{n} (CPU clock)": r | {"seeds": [r]} for n, r in section.get("cpu_runs", {}).items()},
    }
    for name, run in runs.items():
        for i, seed in enumerate(run["seeds"]):
            x = [p["cpu_minutes"] for p in seed["curve"]]
            y = [p["fid"] for p in seed["curve"]]
            style = dict(color="0.75", lw=0.8, zorder=1)
            if name == "default":
                style = dict(
                    color="black",
                    lw=1.6,
                    zorder=3,
                    label="default (cpu_demo before the study), 3 seeds" if i == 0 else None,
                )
            elif name in highlight:
                k = list(highlight).index(name)
                style = dict(
                    color=colours[k % len(colours)],
                    lw=2,
                    zorder=4,
                    label=name if i == 0 else None,
                    marker="o" if "CPU clock" in name else None,
                    ls="--" if "CPU clock" in name else "-",
                )
            ax.plot(x, y, **style)
        last = run["seeds"][0]["curve"][-1]
        final = np.mean([s["curve"][-1]["fid"] for s in run["seeds"]])
        base = last["baseline"]
        p = np.mean([s["curve"][-1]["precision"] for s in run["seeds"]]) / base["precision"]
        r = np.mean([s["curve"][-1]["recall"] for s in run["seeds"]]) / base["recall"]
        shown = name == "default" or name in highlight
        colour = (
            "black"
            if name == "default"
            else colours[list(highlight).index(name) % len(colours)]
            if name in highlight
            else "0.6"
        )
        ax2.scatter(r, p, s=40 if shown else 14, color=colour, zorder=3)
        if shown or final < 17:
            ax2.annotate(name, (r, p), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("training minutes on 2 CPU cores (steps x measured seconds per step)")
    ax.set_ylabel("FID in the toy-cars feature space (lower is better)")
    ax.set_title("quality against CPU minutes, every recipe (grey: one change each)")
    ax.legend(fontsize=8)
    ax2.axhline(0.75, color="C3", lw=0.8, ls=":")
    ax2.axvline(0.6, color="C3", lw=0.8, ls=":")
    ax2.set_xlabel("recall / real-vs-real recall")
    ax2.set_ylabel("precision / real-vs-real precision")
    ax2.set_title(
        f"after {budget.removeprefix('budget_').removesuffix('min')} minutes (dotted: the 75% / 60% targets)"
    )
    ax2.set_xlim(0, 1)
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    return fig


def ladder_order(ladder: dict) -> tuple[list[str], list[str]]:
    """The rungs of ``benchmarks/ladder.json`` (as a dict) in order, and its side arms.

    The ladder's protocol: every rung ran with the most seeds, and each rung adds one change to the one
    before it, so the rungs are the runs with the most seeds ordered by their number of overrides; every
    other run is a side arm (in the file's order).
    """
    runs = ladder["runs"]
    most = max(len(run["seeds"]) for run in runs.values())
    rungs = sorted(
        (n for n, r in runs.items() if len(r["seeds"]) == most),
        key=lambda n: len(runs[n]["overrides"]),
    )
    return rungs, [n for n in runs if n not in rungs]


def _arm_base(runs: dict, rungs: list[str], arm: str) -> str | None:
    """The first rung that differs from the side arm ``arm`` in one field only."""
    mine = runs[arm]["overrides"]
    for rung in rungs:
        theirs = runs[rung]["overrides"]
        if sum(mine.get(k) != theirs.get(k) for k in set(mine) | set(theirs)) == 1:
            return rung
    return None


def _plain_log_ticks(ax) -> None:
    """Tick labels 10, 20, 30, 50, ... on a log y axis instead of powers of ten."""
    from matplotlib import ticker

    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def plot_ladder(ladder: dict):
    """The ablation ladder of ``benchmarks/ladder.py`` (its JSON as a dict), at equal CPU minutes.

    Left: each recipe's final FID (lower is better; log scale): the rungs in order, then the side arms, each
    labelled with the rung it changes; grey dots are single seeds, black the mean ± std over seeds of the EMA
    weights, red rings the mean of the raw weights. Middle: final precision and recall of the EMA weights
    (mean ± std over seeds) beside the real-vs-real baseline. Right: FID at each scored point against CPU
    minutes, rungs only. Returns the Figure.
    """
    runs = ladder["runs"]
    rungs, arms = ladder_order(ladder)
    names = rungs + arms
    # x positions: the rungs, a gap, the side arms
    x = {name: i + (1 if name in arms else 0) for i, name in enumerate(names)}

    def finals(name: str, key: str = "fid", weights: str = "ema") -> np.ndarray:
        points = [s["curve"][-1] for s in runs[name]["seeds"]]
        return np.array([(p if weights == "ema" else p["raw"])[key] for p in points])

    def spread(values: np.ndarray) -> float:
        return float(values.std(ddof=1)) if len(values) > 1 else 0.0

    fig, (ax, ax2, ax3) = plt.subplots(
        1, 3, figsize=(17, 4.6), gridspec_kw={"width_ratios": [1.5, 1, 1]}
    )
    for name in names:
        fids = finals(name)
        ax.scatter([x[name]] * len(fids), fids, s=12, color="0.6", zorder=2)
    ax.errorbar(
        [x[n] for n in names],
        [finals(n).mean() for n in names],
        yerr=[spread(finals(n)) for n in names],
        fmt="o",
        color="black",
        capsize=4,
        zorder=3,
        label="EMA weights: mean ± std over seeds",
    )
    with_raw = [n for n in names if "raw" in runs[n]["seeds"][0]["curve"][-1]]
    ax.scatter(
        [x[n] for n in with_raw],
        [finals(n, weights="raw").mean() for n in with_raw],
        s=60,
        facecolors="none",
        edgecolors="C3",
        zorder=4,
        label="raw weights: mean over seeds",
    )
    labels = []
    for n in names:
        seeds = len(runs[n]["seeds"])
        base = _arm_base(runs, rungs, n) if n in arms else None
        what = f"of {base}, " if base else ""
        labels.append(f"{n}\n({what}{seeds} seed{'s' * (seeds > 1)})")
    ax.set_xticks([x[n] for n in names], labels, rotation=40, ha="right", fontsize=8)
    ax.axvline(len(rungs), color="0.8", lw=1)
    ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_ylabel("FID (toy-cars features; lower is better)")
    base_fid = runs[names[0]]["seeds"][0]["curve"][-1]["baseline"]["fid"]
    ax.set_title(
        f"final FID; rungs left, side arms right (real vs real {base_fid:.2f})", fontsize=10
    )
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=8)

    baseline = runs[names[0]]["seeds"][0]["curve"][-1]["baseline"]
    for k, (key, colour) in enumerate((("precision", "C0"), ("recall", "C1"))):
        ax2.bar(
            [x[n] + (k - 0.5) * 0.4 for n in names],
            [finals(n, key).mean() for n in names],
            0.4,
            yerr=[spread(finals(n, key)) for n in names],
            capsize=2,
            color=colour,
            label=f"{key} (real vs real {baseline[key]:.2f}, dashed)",
        )
        ax2.axhline(baseline[key], color=colour, ls="--", lw=1)
    ax2.set_xticks([x[n] for n in names], names, rotation=40, ha="right", fontsize=8)
    ax2.axvline(len(rungs), color="0.8", lw=1)
    ax2.set_ylim(0, 1)
    ax2.set_title("final precision and recall (EMA weights; mean ± std over seeds)", fontsize=10)
    ax2.grid(alpha=0.3, axis="y")
    ax2.legend(fontsize=8, loc="upper left")

    markers = "osD^vP*X"
    for i, n in enumerate(rungs):
        curves = [s["curve"] for s in runs[n]["seeds"]]
        minutes = [p["cpu_minutes"] for p in curves[0]]
        fids = np.array([[p["fid"] for p in c] for c in curves])  # (seeds, points)
        ax3.errorbar(
            minutes,
            fids.mean(0),
            yerr=fids.std(0, ddof=1) if len(fids) > 1 else None,
            marker=markers[i % len(markers)],
            ls=["-", "--", ":", "-."][i % 4],
            capsize=3,
            label=n,
        )
    ax3.set_yscale("log")
    _plain_log_ticks(ax3)
    ax3.set_xlabel("CPU minutes (steps x the measured seconds per step)")
    ax3.set_ylabel("FID (EMA weights)")
    ax3.set_title("FID at each scored point: mean ± std over seeds", fontsize=10)
    ax3.grid(alpha=0.3, which="both")
    ax3.legend(fontsize=8)
    fig.tight_layout()
    return fig


def show_grids(grids: dict[str, torch.Tensor], nrow: int | None = None, scale: float = 0.5):
    """Image grids side by side, one per entry of ``grids`` (title -> images ``(B, 3, H, W)``); returns the Figure."""
    imgs = {title: to_numpy_image(x, nrow) for title, x in grids.items()}
    h, w = next(iter(imgs.values())).shape[:2]
    width = max(2.0, w / 32 * scale)
    fig, axes = plt.subplots(
        1, len(imgs), figsize=(width * len(imgs), max(2.0, h / 32 * scale) + 0.4), squeeze=False
    )
    for ax, (title, img) in zip(axes[0], imgs.items()):
        ax.imshow(img, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
