"""The one sampling path: precision, batching and seeding around the samplers (stages 6 and 10).

:func:`generate` serves the command line (``python -m ddpm_lib.sample``), the trainer's sample
grids, the notebooks, the evaluation and the benchmarks; :func:`trajectory` records the steps of one
batch for the sliders and the animation. Both run a member of :data:`ddpm_lib.samplers.SAMPLERS`
(which owns the maths) on the levels of :func:`sampler_levels`, where the sampler's options are checked.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_lib.checks import check_choice, check_float, check_int
from ddpm_lib.data import to_uint8
from ddpm_lib.devices import PrecisionChoice, resolve_precision
from ddpm_lib.diffusion import GaussianDiffusion, Model, _num_classes, eval_mode, model_device
from ddpm_lib.samplers import (
    DEFAULT_SPACING,
    DEFAULT_STEPS,
    SAMPLERS,
    Denoiser,
    SamplerName,
    SamplerStep,
    Spacing,
    make_sigmas,
    network_evaluations,
)


@dataclass(frozen=True)
class Samples:
    """What :func:`generate` returns: ``images`` float32 ``(N, C, H, W)`` on the CPU in [-1, 1], and how they were made."""

    images: torch.Tensor
    sampler: str
    num_steps: int  # network evaluations per image (NFE)
    eta: float
    precision: PrecisionChoice
    seconds: float

    def to_uint8_nhwc(self) -> np.ndarray:
        """uint8 ``(N, H, W, C)``: the layout of ADM's ``.npz`` sample batches (``arr_0``)."""
        return to_uint8(self.images).permute(0, 2, 3, 1).numpy()

    @property
    def images_per_second(self) -> float:
        return len(self.images) / max(self.seconds, 1e-9)


def _precision(
    precision: str | PrecisionChoice, model: Model, shape: tuple[int, ...], batch_size: int
) -> PrecisionChoice:
    if isinstance(precision, PrecisionChoice):
        return precision
    batch = min(batch_size, shape[0], 32)
    return resolve_precision(
        precision, model_device(model), model, "sample", tuple(shape[1:]), batch=batch
    )


def _check_labels(
    labels: torch.Tensor | None, model: Model, num_samples: int
) -> torch.Tensor | None:
    """``labels`` as a LongTensor ``(num_samples,)`` within the model's classes, or None."""
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    num_classes = _num_classes(model)
    if labels.shape != (num_samples,) or labels.is_floating_point():
        raise ValueError(
            f"labels must be integers of shape ({num_samples},), one per sample, got {labels.dtype} {tuple(labels.shape)}"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}], got [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.long()


def _start_noise(
    shape: tuple[int, ...],
    g: torch.Generator,
    device: torch.device,
    x_T: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """x_T for one batch: on a CPU channels-last, so that every convolution runs channels-last (~1.2-1.4x faster for
    an NCHW model), drawn as sample_progressive's own first draw (a seed gives the same images); elsewhere unchanged."""
    if device.type != "cpu":
        return x_T
    if x_T is None:
        x_T = torch.randn(shape, generator=g, device=device)
    return x_T.contiguous(memory_format=torch.channels_last)


def sampler_levels(
    diffusion: GaussianDiffusion,
    sampler: SamplerName,
    num_steps: int | None = None,
    spacing: Spacing | None = None,
) -> torch.Tensor:
    """The noise levels ``(num_steps + 1,)`` a sampler visits, the last 0; checks the sampler's options once.

    ``"ddpm"`` runs all T levels (``num_steps`` None or T); the others ``num_steps`` levels (None:
    min(:data:`~ddpm_lib.samplers.DEFAULT_STEPS`, T)), at most T on the model's own timesteps. ``spacing`` None is the sampler's own
    (:data:`~ddpm_lib.samplers.DEFAULT_SPACING`: timesteps for ddpm and ddim, Karras for the ODE solvers).
    """
    check_choice(sampler, SamplerName, "sampler")
    T = diffusion.num_timesteps
    spacing = DEFAULT_SPACING[sampler] if spacing is None else spacing  # make_sigmas checks it
    if sampler == "ddpm":
        if num_steps not in (None, T):
            raise ValueError(
                f"the ddpm sampler runs all T={T} steps; use another sampler for num_steps={num_steps}"
            )
        return make_sigmas(diffusion, T, spacing)
    if num_steps is None:
        return make_sigmas(diffusion, min(DEFAULT_STEPS, T), spacing)
    most = T if spacing == "timesteps" else None
    check_int(num_steps, f"num_steps (steps of {sampler}, at most T={T})", 1, most)
    return make_sigmas(diffusion, num_steps, spacing)


def _sampler_options(
    sampler: SamplerName, diffusion: GaussianDiffusion, eta: float, allow_eta_above_one: bool
) -> dict:
    """The keyword options of ``sampler`` beyond the family's own: DDIM's eta, DDPM's variance."""
    if sampler == "ddim":
        return {"eta": check_float(eta, "eta", 0, None if allow_eta_above_one else 1)}
    if sampler == "ddpm":
        return {"variance": diffusion.variance_type}
    return {}


def _check_guidance(model, diffusion, sigmas, labels, guidance_scale, interval) -> None:
    """The guidance options against the timesteps of the sampler's levels, once per call."""
    to_t = Denoiser(model, diffusion).sigma_to_t
    timesteps = [to_t(float(s)) for s in sigmas[:-1]]
    diffusion._check_guidance(guidance_scale, interval, labels, timesteps)


def _progress_bar(progress: bool, total: int, sampler: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"{sampler} sampling", leave=False)


def _run(sampler, denoiser, x_T, sigmas, g, options, callback=None, bar=None) -> torch.Tensor:
    """One batch: x_T ``(B, C, H, W)`` of N(0, I) (a DDPM's x_T) scaled to the first level, then the sampler."""
    x = x_T * math.sqrt(1 + float(sigmas[0]) ** 2)

    def step(s: SamplerStep) -> None:
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback(s)

    with eval_mode(denoiser.model):
        x = SAMPLERS[sampler](denoiser, x, sigmas, generator=g, callback=step, **options)
    if bar is not None:
        bar.close()
    return x


def generate(
    model: Model,
    diffusion: GaussianDiffusion,
    num_samples: int,
    image_size: int,
    *,
    sampler: SamplerName = "ddim",
    num_steps: int | None = None,
    eta: float = 1.0,
    spacing: Spacing | None = None,
    seed: int = 0,
    batch_size: int = 256,
    precision: str | PrecisionChoice = "auto",
    channels: int = 3,
    x_T: torch.Tensor | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
    allow_eta_above_one: bool = False,
    labels: torch.Tensor | None = None,
    guidance_scale: float = 0.0,
    guidance_interval: tuple[int, int] | None = None,
) -> Samples:
    """Draw ``num_samples`` images of ``(channels, image_size, image_size)`` on the model's device.

    ``sampler``: a member of :data:`~ddpm_lib.samplers.SAMPLERS` (``"ddpm"``: Algorithm 2 over all T steps;
    ``"ddim"`` with stochasticity ``eta`` in [0, 1], Song et al. 2021a, Eq. 16; ``"euler"``, ``"heun"``,
    ``"dpmpp_2m"``: ODE solvers, notebook 10) over ``num_steps`` levels spaced by ``spacing``
    (:func:`sampler_levels`). Batch ``i`` draws its noise from a generator seeded with ``seed + i``, so the
    result is fixed by ``seed`` and ``batch_size`` whatever the memory. ``x_T`` ``(N, C, H, W)`` fixes
    the starting noise instead. ``precision`` is ``"auto"`` (measured, see :mod:`ddpm_lib.devices`),
    ``"fp32"``, ``"bf16"``, ``"fp16"`` or a :class:`PrecisionChoice`. ``labels`` ``(N,)`` ask a
    class-conditional model for those classes, guided with classifier-free ``guidance_scale`` w (Ho &
    Salimans 2022: ``(1 + w) eps_cond - w eps_uncond``; 0 = no guidance), applied at the timestep indices
    ``guidance_interval = (lo, hi)`` only when given (the other steps cost one pass).
    Raises ``FloatingPointError`` when the model produces non-finite values (a diverged model).
    """
    check_int(num_samples, "num_samples", 1)
    check_int(batch_size, "batch_size", 1)
    shape = (num_samples, channels, image_size, image_size)
    if x_T is not None and tuple(x_T.shape) != shape:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")
    labels = _check_labels(labels, model, num_samples)
    sigmas = sampler_levels(diffusion, sampler, num_steps, spacing)
    options = _sampler_options(sampler, diffusion, eta, allow_eta_above_one)
    _check_guidance(model, diffusion, sigmas, labels, guidance_scale, guidance_interval)
    choice = _precision(precision, model, shape, batch_size)
    device = model_device(model)
    images = torch.empty(shape)
    start_time = time.perf_counter()
    for i, start in enumerate(range(0, num_samples, batch_size)):
        n = min(batch_size, num_samples - start)
        g = torch.Generator(device).manual_seed(seed + i)
        batch_noise = x_T[start : start + n].to(device) if x_T is not None else None
        batch_noise = _start_noise((n, *shape[1:]), g, device, batch_noise)
        batch_labels = labels[start : start + n].to(device) if labels is not None else None
        denoiser = Denoiser(
            model,
            diffusion,
            clip_denoised=clip_denoised,
            labels=batch_labels,
            guidance_scale=guidance_scale,
            guidance_interval=guidance_interval,
        )
        bar = _progress_bar(progress, len(sigmas) - 1, sampler)
        with choice.autocast():
            x = _run(sampler, denoiser, batch_noise, sigmas, g, options, bar=bar)
        images[start : start + n] = x.float().clamp(-1.0, 1.0).cpu()
    seconds = time.perf_counter() - start_time
    if not torch.isfinite(images).all():
        raise FloatingPointError(
            f"sampling produced non-finite values ({sampler}, {choice.name}): the model has diverged "
            "or its weights are corrupt; check the checkpoint"
            + ("" if choice.name == "fp32" else ", or try precision='fp32'")
        )
    nfe = network_evaluations(sampler, len(sigmas) - 1)
    return Samples(images, sampler, nfe, float(eta), choice, seconds)


def trajectory(
    model: Model,
    diffusion: GaussianDiffusion,
    num_samples: int,
    image_size: int,
    *,
    sampler: SamplerName = "ddpm",
    num_steps: int | None = None,
    eta: float = 1.0,
    spacing: Spacing | None = None,
    seed: int = 0,
    max_frames: int | None = 100,
    precision: str | PrecisionChoice = "auto",
    channels: int = 3,
    progress: bool = False,
    labels: torch.Tensor | None = None,
    guidance_scale: float = 0.0,
    guidance_interval: tuple[int, int] | None = None,
) -> dict:
    """One batch through the reverse process, keeping at most ``max_frames`` evenly spaced steps.

    Returns a dict of CPU tensors: ``timesteps`` ``(S,)`` (the model's timestep of each visited level,
    fractional between its levels), ``x_t`` and ``x0_pred`` as uint8 ``(S, B, C, H, W)`` (x_t, a DDPM's
    x_t = x / sqrt(1 + sigma^2), clamped to [-1, 1] first; uint8 keeps a 1000-step trajectory small),
    ``samples`` float ``(B, C, H, W)`` in [-1, 1], and ``precision`` and ``seconds``. The sliders
    (:mod:`ddpm_lib.widgets`) and the animation (:mod:`ddpm_lib.plotting`) read it. The options are
    those of :func:`generate`.
    """
    shape = (num_samples, channels, image_size, image_size)
    labels = _check_labels(labels, model, num_samples)
    sigmas = sampler_levels(diffusion, sampler, num_steps, spacing)
    options = _sampler_options(sampler, diffusion, eta, False)
    _check_guidance(model, diffusion, sigmas, labels, guidance_scale, guidance_interval)
    total = len(sigmas) - 1
    keep = (
        set(range(total))
        if max_frames is None or max_frames >= total
        else set(np.linspace(0, total - 1, max_frames).round().astype(int))
    )
    choice = _precision(precision, model, shape, num_samples)
    device = model_device(model)
    g = torch.Generator(device).manual_seed(seed)
    start = time.perf_counter()
    x_T = _start_noise(shape, g, device)
    labels = labels.to(device) if labels is not None else None
    denoiser = Denoiser(
        model,
        diffusion,
        labels=labels,
        guidance_scale=guidance_scale,
        guidance_interval=guidance_interval,
    )
    ts, xs, x0s = [], [], []

    def record(step: SamplerStep) -> None:
        if step.i in keep:
            t = denoiser.sigma_to_t(step.sigma)
            ts.append(int(t) if float(t).is_integer() else t)
            x_t = step.x / math.sqrt(1 + step.sigma**2)
            xs.append(to_uint8(x_t.float()).cpu())
            x0s.append(to_uint8(step.denoised.float()).cpu())

    bar = _progress_bar(progress, total, sampler)
    with choice.autocast():
        x = _run(sampler, denoiser, x_T, sigmas, g, options, callback=record, bar=bar)
    return {
        "timesteps": torch.tensor(ts),
        "x_t": torch.stack(xs),
        "x0_pred": torch.stack(x0s),
        "samples": x.float().clamp(-1, 1).cpu(),
        "precision": choice,
        "seconds": time.perf_counter() - start,
    }
