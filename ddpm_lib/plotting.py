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
