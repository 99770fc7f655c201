"""Interactive timestep sliders for the notebooks (ipywidgets), over pure functions that are unit-tested.

Each ``*_view`` function computes and draws one slider position and returns a Figure; each
``*_explorer`` wraps it in ``ipywidgets.interactive``. The explorer's ``.result`` holds the last
Figure, so tests can set a slider's value and check what it drew.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.plotting import plot_schedules, to_numpy_image
from ddpm_lib.schedules import SCHEDULES, make_betas, terminal_signal


def schedule_view(schedule: str = "linear", num_timesteps: int = 1000):
    """The four schedule plots with ``schedule`` highlighted and its signal left at the last step in the title."""
    fig = plot_schedules(num_timesteps, highlight=schedule)
    left = terminal_signal(make_betas(schedule, num_timesteps))
    fig.suptitle(f"{schedule}, T={num_timesteps}: signal left at the last step sqrt(bar-alpha_T) = {left:.4f}", y=1.02)
    return fig


def forward_view(diffusion: GaussianDiffusion, x0: torch.Tensor, t: int, noise: torch.Tensor):
    """x_0, the noise, x_t (Eq. 4) and x_t's pixel histogram against N(0, 1) at one timestep ``t``."""
    x_t = diffusion.q_sample(x0[None], torch.tensor([t]), noise[None])[0]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2), gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
    for ax, img, title in zip(axes, [x0, noise.clamp(-1, 1), x_t.clamp(-1, 1)], ["$x_0$", r"noise $\epsilon$", f"$x_t$, t={t}"]):
        ax.imshow(to_numpy_image(img), interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    grid = np.linspace(-4, 4, 200)
    axes[3].hist(x_t.flatten().numpy(), bins=60, range=(-4, 4), density=True, alpha=0.6, label="pixels of $x_t$")
    axes[3].plot(grid, np.exp(-(grid**2) / 2) / np.sqrt(2 * np.pi), "k--", label="N(0, 1)")
    ab = diffusion.alphas_cumprod[t].item()
    axes[3].set_title(rf"$\sqrt{{\bar\alpha_t}}$={ab**0.5:.3f}, $\sqrt{{1-\bar\alpha_t}}$={(1 - ab) ** 0.5:.3f}")
    axes[3].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def trajectory_view(trajectory: dict, index: int, nrow: int | None = None):
    """Step ``index`` of a reverse trajectory from :func:`ddpm_lib.sampling.trajectory`: x_t and hat-x_0."""
    t = int(trajectory["timesteps"][index])
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    axes[0].imshow(to_numpy_image(trajectory["x_t"][index], nrow), interpolation="nearest")
    axes[0].set_title(f"$x_t$ at t={t}")
    axes[1].imshow(to_numpy_image(trajectory["x0_pred"][index], nrow), interpolation="nearest")
    axes[1].set_title(rf"predicted $\hat x_0$ at t={t}")
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def _interactive(fn, **widgets):
    import ipywidgets

    return ipywidgets.interactive(fn, **widgets)


def _close_after(fn):
    """Draw with ``fn``, show it, and keep the Figure as the result without leaking open figures."""

    def wrapped(**kw):
        fig = fn(**kw)
        plt.show()
        plt.close(fig)
        return fig

    return wrapped


def schedule_explorer(num_timesteps: int = 1000):
    """A dropdown over schedules and a slider over T, drawing :func:`schedule_view`."""
    import ipywidgets

    return _interactive(
        _close_after(schedule_view),
        schedule=ipywidgets.Dropdown(options=list(SCHEDULES), value="linear", description="schedule"),
        num_timesteps=ipywidgets.IntSlider(value=num_timesteps, min=50, max=2000, step=50, description="T", continuous_update=False),
    )


def forward_explorer(diffusion: GaussianDiffusion, x0: torch.Tensor, seed: int = 0):
    """A slider over t for one image ``x0`` ``(3, H, W)``, drawing :func:`forward_view` with fixed noise."""
    import ipywidgets

    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    view = _close_after(lambda t: forward_view(diffusion, x0, t, noise))
    slider = ipywidgets.IntSlider(value=0, min=0, max=diffusion.num_timesteps - 1, step=1, description="t", continuous_update=False)
    return _interactive(view, t=slider)


def trajectory_explorer(trajectory: dict, nrow: int | None = None):
    """A slider over the steps of a reverse trajectory (labelled by step index; the title gives t)."""
    import ipywidgets

    steps = len(trajectory["timesteps"])
    view = _close_after(lambda step: trajectory_view(trajectory, step, nrow))
    slider = ipywidgets.IntSlider(value=steps - 1, min=0, max=steps - 1, step=1, description="step", continuous_update=False)
    return _interactive(view, step=slider)
