"""Noise schedules beta_1 ... beta_T (stage 1 of the series).

Every schedule is returned as a float64 tensor of shape ``(T,)``; index ``t`` holds
the paper's ``beta_{t+1}`` (see NOTATION.md for the timestep convention).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

ScheduleName = Literal["linear", "cosine", "quadratic", "sigmoid", "rectified_flow"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)


def make_betas(
    name: ScheduleName,
    num_timesteps: int,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """Return the variance schedule ``betas`` of shape ``(T,)`` in float64.

    - ``"linear"``: Ho et al. 2020, Sec. 4: beta rises linearly from ``beta_start`` = 1e-4 to
      ``beta_end`` = 0.02. The endpoints do not depend on T, exactly as popular tutorials use
      them, so with small T the process never reaches pure noise (see :func:`terminal_signal`).
    - ``"cosine"``: Nichol & Dhariwal 2021, Eq. 17: ``alphas_cumprod(t) = f(t)/f(0)``,
      ``f(t) = cos^2(((t/T + s)/(1 + s)) * pi/2)``, betas from Eq. 18 clipped at ``max_beta``.
    - ``"quadratic"``: linear in ``sqrt(beta)`` between the same endpoints.
    - ``"sigmoid"``: ``beta_start + (beta_end - beta_start) * sigmoid(linspace(-6, 6, T))``.
    - ``"rectified_flow"``: the straight path of flow matching (Lipman et al. 2023; Liu et al. 2023),
      ``x_s = (1 - s) x_0 + s eps`` with ``s_t = (t + 1) / (T + 1)``, written as a variance-preserving
      process of the same signal-to-noise ratio: ``bar-alpha_t = (1 - s)^2 / ((1 - s)^2 + s^2)``. The
      network sees ``x_s / sqrt((1 - s)^2 + s^2)``, unit variance as for every other schedule.

    Raises ``ValueError`` for an unknown name, ``T < 1`` or any beta outside (0, 1).
    """
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
    T = num_timesteps
    if name == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    elif name == "quadratic":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    elif name == "sigmoid":
        x = torch.linspace(-6.0, 6.0, T, dtype=torch.float64)
        betas = beta_start + (beta_end - beta_start) * torch.sigmoid(x)
    elif name == "cosine":
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        alphas_cumprod = f / f[0]
        betas = (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=max_beta)
    elif name == "rectified_flow":
        s = torch.arange(1, T + 1, dtype=torch.float64) / (T + 1)
        alphas_cumprod = (1 - s) ** 2 / ((1 - s) ** 2 + s**2)
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        betas = 1 - alphas_cumprod / previous
    else:
        raise ValueError(f"unknown schedule {name!r}; valid choices: {', '.join(SCHEDULES)}")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(
            f"schedule {name!r} with T={T} has betas outside (0, 1) "
            f"(min {betas.min().item():.3g}, max {betas.max().item():.3g}); "
            "check beta_start and beta_end"
        )
    return betas


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """``bar-alpha_t = prod_{s<=t} (1 - beta_s)`` (Ho et al. 2020, notation above Eq. 4); shape ``(T,)``."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def terminal_signal(betas: torch.Tensor) -> float:
    """Signal coefficient left at the last step, ``sqrt(bar-alpha_T)`` (Eq. 4 at t = T).

    Near 0 means x_T is (almost) pure noise, as Algorithm 2 assumes when it starts from N(0, I).
    The linear schedule gives ~0.006 for T=1000 but ~0.22 for T=300: a fifth of the image is
    still there at the "last" step.
    """
    return alphas_cumprod_from_betas(betas)[-1].sqrt().item()


def log_snr(betas: torch.Tensor) -> torch.Tensor:
    """Log signal-to-noise ratio ``log(bar-alpha_t / (1 - bar-alpha_t))`` (Kingma et al. 2021); shape ``(T,)``."""
    ac = alphas_cumprod_from_betas(betas)
    return torch.log(ac) - torch.log1p(-ac)
