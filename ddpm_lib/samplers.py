"""Samplers as one family: a function per sampler over a list of noise levels (stages 6 and 10).

In the manner of k-diffusion (Karras et al. 2022, "Elucidating the design space", EDM): every sampler is
``sample_NAME(denoiser, x, sigmas, *, generator, callback, ...)``, where

- ``denoiser(x, sigma) -> x0_pred`` is the network seen as a denoiser (:class:`Denoiser`),
- ``x`` ``(B, C, H, W)`` is the start, pure noise of standard deviation ``sigmas[0]``,
- ``sigmas`` ``(N + 1,)`` are the noise levels to visit, decreasing, the last one 0,
- ``callback(step)`` sees every step (:class:`SamplerStep`): the progress views, sliders and tests.

Noise levels are those of the variance-exploding view: ``x = x_0 + sigma eps`` with
``sigma_t = sqrt((1 - bar-alpha_t) / bar-alpha_t)`` (Song et al. 2021b, "Score-based generative modeling
through SDEs", Sec. 3.4; EDM Table 1). A DDPM's ``x_t`` is ``x / sqrt(1 + sigma^2)``: the same process
rescaled, so every model of :class:`~ddpm_lib.diffusion.GaussianDiffusion` (eps, v, x_0 or flow outputs,
any schedule) runs under every sampler, and any list of levels (:func:`timestep_sigmas`,
:func:`karras_sigmas`) works with any sampler. DDPM (Ho et al. 2020, Algorithm 2) and DDIM (Song et al.
2021a, Eq. 12) are members: on the model's own levels they give the images of
:meth:`~ddpm_lib.diffusion.GaussianDiffusion.sample_progressive` (tested). Adding a sampler touches one
place: write its function and add it to :data:`SAMPLERS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple, get_args

import torch

from ddpm_lib.checks import check_choice
from ddpm_lib.diffusion import GaussianDiffusion, Model, classifier_free

SamplerName = Literal["ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_2m_sde"]
# how the noise levels are spaced: the model's own timesteps evenly spaced (DDIM's choice), or EDM's rho = 7
Spacing = Literal["timesteps", "karras"]


class SamplerStep(NamedTuple):
    """One step of a sampler, as its ``callback`` sees it: ``x`` at level ``sigma`` -> ``x_next`` at ``sigma_next``.

    ``x``, ``x_next`` and ``denoised`` (the x_0 estimate at ``x``) are ``(B, C, H, W)`` in the
    variance-exploding units ``x_0 + sigma eps`` (divide by ``sqrt(1 + sigma^2)`` for a DDPM's x_t).
    """

    i: int
    sigma: float
    sigma_next: float
    x: torch.Tensor
    denoised: torch.Tensor
    x_next: torch.Tensor


Callback = Callable[[SamplerStep], None] | None


# ---------------------------------------------------------------------------------- noise levels
def model_sigmas(diffusion: GaussianDiffusion) -> torch.Tensor:
    """sigma_t = sqrt((1 - bar-alpha_t) / bar-alpha_t) for t = 0 .. T-1, float64 ``(T,)``, increasing."""
    return ((1 - diffusion.alphas_cumprod) / diffusion.alphas_cumprod).sqrt()


def timestep_sigmas(diffusion: GaussianDiffusion, num_steps: int) -> torch.Tensor:
    """The levels of DDIM's ``num_steps`` evenly spaced timesteps (T-1 down to 0), then 0: ``(num_steps + 1,)``.

    With ``num_steps = T`` these are all the model's levels: the DDPM of Algorithm 2.
    """
    sigmas = model_sigmas(diffusion)[diffusion.ddim_timesteps(num_steps)]
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_sigmas(
    sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0
) -> torch.Tensor:
    """EDM's levels (Karras et al. 2022, Eq. 5): evenly spaced in sigma^(1/rho), then 0; float64 ``(num_steps + 1,)``.

    rho = 7 spends more steps at low noise, where the details of an image are decided.
    """
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    if num_steps == 1:
        sigmas = torch.tensor([sigma_max], dtype=torch.float64)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


# EDM's range of levels for 32 px images (Karras et al. 2022, Table 1): above 80 the image is lost in noise
# (a cosine schedule's last level is ~10^4), below 0.002 nothing visible changes
EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0


def make_sigmas(diffusion: GaussianDiffusion, num_steps: int, spacing: Spacing) -> torch.Tensor:
    """``num_steps`` levels of the model spaced by ``spacing``, then 0: ``(num_steps + 1,)``.

    ``"timesteps"``: the model's own, :func:`timestep_sigmas`. ``"karras"``: :func:`karras_sigmas` over the
    model's range cut to EDM's [0.002, 80], so that no step is spent where the image is pure noise.
    """
    check_choice(spacing, Spacing, "spacing")
    if spacing == "timesteps":
        return timestep_sigmas(diffusion, num_steps)
    sigmas = model_sigmas(diffusion)
    lo, hi = max(float(sigmas[0]), EDM_SIGMA_MIN), min(float(sigmas[-1]), EDM_SIGMA_MAX)
    return karras_sigmas(lo, hi, num_steps)


# ---------------------------------------------------------------------------------- the denoiser
class Denoiser:
    """A trained network of any ``prediction_type`` seen as D(x, sigma) -> x0_pred (EDM, Sec. 2 and Table 1).

    The network was trained on ``x_t = sqrt(bar-alpha_t) x_0 + sqrt(1 - bar-alpha_t) eps`` at integer t;
    here ``x = x_0 + sigma eps`` at any sigma. So D feeds it ``x_t = a x`` with ``a = 1 / sqrt(1 + sigma^2)``
    (``b = sigma a`` is the noise's share) at the fractional timestep whose level is sigma (interpolated
    in log sigma between the model's levels, as k-diffusion's ``DiscreteSchedule`` does; exact on them)
    and turns its output into x_0:

    - eps: ``x_0 = x - sigma eps`` (Eq. 4 solved for x_0, Ho et al. 2020 Eq. 15),
    - v: ``x_0 = a x_t - b v`` (Salimans & Ho 2022, App. D),
    - sample: the output itself,
    - flow (u = eps - x_0): ``x_0 = (x_t - b u) / (a + b)``.

    ``clip_denoised`` clamps x_0 to [-1, 1], as the DDPM and DDIM samplers of the library do. ``labels``
    ``(B,)`` with ``guidance_scale`` w and ``guidance_interval`` run classifier-free guidance
    (:func:`~ddpm_lib.diffusion.classifier_free`: the outputs are mixed before the conversion, which is
    linear, so it holds for every prediction type). ``calls`` counts the network evaluations.
    """

    def __init__(
        self,
        model: Model,
        diffusion: GaussianDiffusion,
        *,
        clip_denoised: bool = True,
        labels: torch.Tensor | None = None,
        guidance_scale: float = 0.0,
        guidance_interval: tuple[int, int] | None = None,
    ):
        self.model = model  # the network itself (eval mode is set on it)
        self.net = model
        if labels is not None:
            self.net = classifier_free(model, labels, guidance_scale, guidance_interval)
        self.prediction_type = diffusion.prediction_type
        self.clip_denoised = clip_denoised
        self.sigmas = model_sigmas(diffusion)  # (T,) increasing
        self.log_sigmas = self.sigmas.log()
        self.calls = 0

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: float) -> float:
        """The fractional timestep of level ``sigma``: linear in log sigma between the model's levels."""
        log_sigma = math.log(min(max(sigma, self.sigma_min), self.sigma_max))
        i = int(torch.searchsorted(self.log_sigmas, torch.tensor(log_sigma, dtype=torch.float64)))
        i = min(max(i, 1), len(self.sigmas) - 1)
        lo, hi = float(self.log_sigmas[i - 1]), float(self.log_sigmas[i])
        t = i - 1 + min(max((log_sigma - lo) / (hi - lo), 0.0), 1.0)
        return float(round(t)) if abs(t - round(t)) < 1e-6 else t  # exact on the model's levels

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """x0_pred ``(B, C, H, W)`` for ``x`` ``(B, C, H, W)`` at level ``sigma`` (a float > 0)."""
        sigma = float(sigma)
        a = 1 / math.sqrt(1 + sigma**2)
        b = sigma * a
        x_t = x * a
        t = self.sigma_to_t(sigma)
        # On the model's own levels the network sees the integer t it was trained on (long, so
        # networks that index tables by t keep working); between them a fractional t.
        t = torch.full((x.shape[0],), t, device=x.device, dtype=_timestep_dtype(t))
        output = GaussianDiffusion.model_output(self.net, x_t.float(), t).to(x.dtype)
        self.calls += 1
        if self.prediction_type == "epsilon":
            x0 = x - sigma * output
        elif self.prediction_type == "v_prediction":
            x0 = a * x_t - b * output
        elif self.prediction_type == "sample":
            x0 = output
        else:  # "flow"
            x0 = (x_t - b * output) / (a + b)
        return x0.clamp(-1.0, 1.0) if self.clip_denoised else x0


def _timestep_dtype(t: float) -> torch.dtype:
    return torch.long if float(t).is_integer() else torch.float32


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise like ``x``, drawn in float32 (a seed gives the same noise whatever x's dtype)."""
    return torch.randn(x.shape, generator=generator, device=x.device).to(x.dtype)


def _report(callback: Callback, i, sigma, sigma_next, x, denoised, x_next) -> None:
    if callback is not None:
        callback(SamplerStep(i, float(sigma), float(sigma_next), x, denoised, x_next))


# ---------------------------------------------------------------------------------- the samplers
@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    variance: Literal["fixed_small", "fixed_large"] = "fixed_small",
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2): x_{next} ~ q(x_next | x, x0_pred) at each level.

    The posterior of Eq. 7 in sigma units: mean ``x0 + (s_n^2 / s^2) (x - x0)``; variance
    ``s_n^2 (s^2 - s_n^2) / s^2`` (tilde-beta, ``"fixed_small"``) or ``(s^2 - s_n^2)(1 + s_n^2) / (1 + s^2)``
    (beta, ``"fixed_large"``), each the paper's variance divided by ``bar-alpha_next``. No noise on the
    last step. On all T levels (:func:`timestep_sigmas` with T steps) this is Algorithm 2.
    """
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, s)
        x_next = denoised + (s_next**2 / s**2) * (x - denoised)
        if s_next > 0:
            if variance == "fixed_small":
                var = s_next**2 * (s**2 - s_next**2) / s**2
            else:
                var = (s**2 - s_next**2) * (1 + s_next**2) / (1 + s**2)
            x_next = x_next + math.sqrt(var) * _randn(x, generator)
        _report(callback, i, s, s_next, x, denoised, x_next)
        x = x_next
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021a, Eq. 12 with sigma from Eq. 16) in sigma units.

    The step splits the next level into a deterministic part and fresh noise:
    ``s_up = eta * sqrt(s_n^2 (s^2 - s_n^2) / s^2)``, ``s_down = sqrt(s_n^2 - s_up^2)``,
    ``x_next = x0 + s_down (x - x0) / s + s_up z``. eta = 0 is an Euler step of the probability-flow ODE
    (notebook 10); eta = 1 is ancestral sampling with tilde-beta (k-diffusion's ``euler_ancestral``).
    """
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, s)
        s_up = eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2)
        s_down = math.sqrt(max(s_next**2 - s_up**2, 0.0))
        x_next = denoised + (s_down / s) * (x - denoised)
        if s_up > 0:
            x_next = x_next + s_up * _randn(x, generator)
        _report(callback, i, s, s_next, x, denoised, x_next)
        x = x_next
    return x


def _churn(x, s, num_steps, s_churn, s_tmin, s_tmax, s_noise, generator):
    """EDM Algorithm 2, lines 4-6: raise the level from s to s_hat = s (1 + gamma) with fresh noise."""
    gamma = min(s_churn / num_steps, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
    s_hat = s * (1 + gamma)
    if gamma > 0:
        x = x + s_noise * math.sqrt(s_hat**2 - s**2) * _randn(x, generator)
    return x, s_hat


def _euler_step(denoiser, x, s, s_next) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(D(x, s), the slope d = (x - D) / s, the Euler step to s_next): EDM's Algorithm 2, lines 7-8."""
    denoised = denoiser(x, s)
    d = (x - denoised) / s
    return denoised, d, x + (s_next - s) * d


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> torch.Tensor:
    """Euler steps of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (EDM, Eq. 3 and Alg. 2
    without its correction). ``s_churn`` > 0 adds EDM's stochastic churn at levels in [s_tmin, s_tmax]."""
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x_hat, s_hat = _churn(x, s, n, s_churn, s_tmin, s_tmax, s_noise, generator)
        denoised, d, x_next = _euler_step(denoiser, x_hat, s_hat, s_next)
        _report(callback, i, s, s_next, x, denoised, x_next)
        x = x_next
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> torch.Tensor:
    """Heun's second-order method on the probability-flow ODE (EDM, Algorithm 2): an Euler step, then the
    average of the slopes at both ends; the last step (to sigma = 0) stays Euler. 2N - 1 evaluations."""
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x_hat, s_hat = _churn(x, s, n, s_churn, s_tmin, s_tmax, s_noise, generator)
        denoised, d, x_next = _euler_step(denoiser, x_hat, s_hat, s_next)
        if s_next > 0:  # Algorithm 2, lines 9-11: the trapezoidal correction
            d_next = (x_next - denoiser(x_next, s_next)) / s_next
            x_next = x_hat + (s_next - s_hat) * (d + d_next) / 2
        _report(callback, i, s, s_next, x, denoised, x_next)
        x = x_next
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), multistep second order in lambda = -log sigma.

    The ODE is solved exactly for a denoised output held fixed over the step (the first-order update
    ``x_next = (s_n / s) x - expm1(-h) D`` with ``h = lambda_next - lambda``); the second order
    extrapolates D linearly from the step before: ``D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}``, r = h_last / h.
    The first step and the last one (to sigma = 0) are first order ("lower order final"). One
    evaluation per step. ``generator`` is unused (deterministic); it keeps the family's signature.
    """
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, s)
        if s_next == 0:
            x_next = denoised
        else:
            h = math.log(s) - math.log(s_next)
            d = denoised
            if old_denoised is not None:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x_next = (s_next / s) * x - math.expm1(-h) * d
            h_last = h
        _report(callback, i, s, s_next, x, denoised, x_next)
        old_denoised, x = denoised, x_next
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, Sec. 5; k-diffusion's ``sample_dpmpp_2m_sde``, midpoint form).

    The same multistep idea on the reverse SDE instead of the ODE: each step goes to level s_next with
    ``eta h`` of the way taken by fresh noise, ``x_next = (s_n / s) e^{-eta h} x - expm1(-(1 + eta) h) D
    + s_n sqrt(-expm1(-2 eta h)) z``, plus the midpoint correction ``-expm1(-(1 + eta) h) / (2r) (D_i -
    D_{i-1})`` from the second step on; the last step (to sigma = 0) returns D. ``eta = 0`` is the ODE
    solver's first-order update with a midpoint correction; ``eta = 1`` (default) is the SDE. One
    evaluation per step.
    """
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, s)
        if s_next == 0:
            x_next = denoised
        else:
            h = math.log(s) - math.log(s_next)
            eta_h = eta * h
            keep = -math.expm1(-h - eta_h)  # the weight of D
            x_next = (s_next / s) * math.exp(-eta_h) * x + keep * denoised
            if old_denoised is not None:
                x_next = x_next + 0.5 * keep * (h / h_last) * (denoised - old_denoised)
            if eta:
                x_next = x_next + _randn(x, generator) * s_next * math.sqrt(-math.expm1(-2 * eta_h))
            h_last = h
        _report(callback, i, s, s_next, x, denoised, x_next)
        old_denoised, x = denoised, x_next
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
}
# each sampler's levels unless told: the model's own timesteps for the discrete-time pair, EDM's for the others
DEFAULT_SPACING: dict[str, Spacing] = {
    "ddpm": "timesteps",
    "ddim": "timesteps",
    "euler": "karras",
    "heun": "karras",
    "dpmpp_2m": "karras",
    "dpmpp_2m_sde": "karras",
}
assert set(SAMPLERS) == set(get_args(SamplerName)) == set(DEFAULT_SPACING)
# the sampler of the command lines and its steps (every sampler's, when none are given): the measured best
# of benchmarks/samplers.py on the shipped model (README, notebook 10), DDIM with eta = 1 at 50 steps; no
# sampler at <= 15 network evaluations matched its precision and recall there
DEFAULT_SAMPLER: SamplerName = "ddim"
DEFAULT_STEPS = 50


def network_evaluations(sampler: SamplerName, num_steps: int) -> int:
    """Network evaluations per image of ``num_steps`` steps: one a step, Heun 2 a step but the last."""
    return 2 * num_steps - 1 if sampler == "heun" else num_steps
