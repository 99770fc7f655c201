"""The one sampling path: precision, batching and seeding around the reverse process (stage 6).

:func:`generate` serves the command line (``python -m ddpm_lib.sample``), the trainer's sample
grids, the notebooks, the evaluation and the benchmark; :func:`trajectory` records the steps of one
batch for the sliders and the animation. Neither wraps more than
:meth:`~ddpm_lib.diffusion.GaussianDiffusion.sample_progressive`, which owns the maths.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_lib.checks import check_int
from ddpm_lib.data import to_uint8
from ddpm_lib.devices import PrecisionChoice, resolve_precision
from ddpm_lib.diffusion import GaussianDiffusion, Model, Sampler, model_device


@dataclass(frozen=True)
class Samples:
    """What :func:`generate` returns: ``images`` float32 ``(N, C, H, W)`` on the CPU in [-1, 1], and how they were made."""

    images: torch.Tensor
    sampler: str
    num_steps: int  # network evaluations per image
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
    num_classes = getattr(model, "num_classes", 0)
    if not num_classes:
        raise ValueError(
            "labels need a class-conditional model (trained with --class-cond); this one takes no labels"
        )
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


def generate(
    model: Model,
    diffusion: GaussianDiffusion,
    num_samples: int,
    image_size: int,
    *,
    sampler: Sampler = "ddim",
    num_steps: int | None = None,
    eta: float = 1.0,
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

    ``sampler``/``num_steps``/``eta``: see :meth:`GaussianDiffusion.sample_progressive` (``num_steps``
    None: all T for DDPM, min(50, T) for DDIM). Batch ``i`` draws its noise from a generator seeded with
    ``seed + i``, so the result is fixed by ``seed`` and ``batch_size`` whatever the memory. ``x_T``
    ``(N, C, H, W)`` fixes the starting noise instead. ``precision`` is ``"auto"`` (measured, see
    :mod:`ddpm_lib.devices`), ``"fp32"``, ``"bf16"``, ``"fp16"`` or a :class:`PrecisionChoice`.
    ``labels`` ``(N,)`` ask a class-conditional model for those classes, guided with classifier-free
    ``guidance_scale`` w (Ho & Salimans 2022: ``(1 + w) eps_cond - w eps_uncond``; 0 = no guidance), applied
    at the timestep indices ``guidance_interval = (lo, hi)`` only when given (the other steps cost one pass).
    Raises ``FloatingPointError`` when the model produces non-finite values (a diverged model).
    """
    check_int(num_samples, "num_samples", 1)
    check_int(batch_size, "batch_size", 1)
    shape = (num_samples, channels, image_size, image_size)
    if x_T is not None and tuple(x_T.shape) != shape:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")
    labels = _check_labels(labels, model, num_samples)
    # checks the steps against T up front
    timesteps = diffusion.sampling_timesteps(sampler, num_steps)
    choice = _precision(precision, model, shape, batch_size)
    device = model_device(model)
    images = torch.empty(shape)
    start_time = time.perf_counter()
    for i, start in enumerate(range(0, num_samples, batch_size)):
        n = min(batch_size, num_samples - start)
        g = torch.Generator(device).manual_seed(seed + i)
        batch_noise = x_T[start : start + n] if x_T is not None else None
        batch_noise = _start_noise((n, *shape[1:]), g, device, batch_noise)
        batch_labels = labels[start : start + n] if labels is not None else None
        with choice.autocast():
            x = diffusion.sample(
                model,
                (n, *shape[1:]),
                sampler,
                num_steps,
                eta,
                generator=g,
                x_T=batch_noise,
                clip_denoised=clip_denoised,
                progress=progress,
                allow_eta_above_one=allow_eta_above_one,
                labels=batch_labels,
                guidance_scale=guidance_scale,
                guidance_interval=guidance_interval,
            )
        images[start : start + n] = x.float().cpu()
    seconds = time.perf_counter() - start_time
    if not torch.isfinite(images).all():
        raise FloatingPointError(
            f"sampling produced non-finite values ({sampler}, {choice.name}): the model has diverged or its weights are corrupt; "
            "check the checkpoint" + ("" if choice.name == "fp32" else ", or try precision='fp32'")
        )
    return Samples(images, sampler, len(timesteps), float(eta), choice, seconds)


def trajectory(
    model: Model,
    diffusion: GaussianDiffusion,
    num_samples: int,
    image_size: int,
    *,
    sampler: Sampler = "ddpm",
    num_steps: int | None = None,
    eta: float = 1.0,
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

    Returns a dict of CPU tensors: ``timesteps`` ``(S,)``, ``x_t`` and ``x0_pred`` as uint8
    ``(S, B, C, H, W)`` (x_t clamped to [-1, 1] first; uint8 keeps a 1000-step trajectory small),
    ``samples`` float ``(B, C, H, W)`` in [-1, 1], and ``precision`` and ``seconds``. The sliders
    (:mod:`ddpm_lib.widgets`) and the animation (:mod:`ddpm_lib.plotting`) read it. ``labels``,
    ``guidance_scale`` and ``guidance_interval``: as in :func:`generate`.
    """
    shape = (num_samples, channels, image_size, image_size)
    labels = _check_labels(labels, model, num_samples)
    total = len(diffusion.sampling_timesteps(sampler, num_steps))
    keep = (
        set(range(total))
        if max_frames is None or max_frames >= total
        else set(np.linspace(0, total - 1, max_frames).round().astype(int))
    )
    choice = _precision(precision, model, shape, num_samples)
    device = model_device(model)
    g = torch.Generator(device).manual_seed(seed)
    ts, xs, x0s, start = [], [], [], time.perf_counter()
    x_T = _start_noise(shape, g, device)
    with choice.autocast():
        for i, step in enumerate(
            diffusion.sample_progressive(
                model,
                shape,
                sampler,
                num_steps,
                eta,
                generator=g,
                progress=progress,
                x_T=x_T,
                labels=labels,
                guidance_scale=guidance_scale,
                guidance_interval=guidance_interval,
            )
        ):
            if i in keep:
                ts.append(step.t)
                xs.append(to_uint8(step.x_t.float()).cpu())
                x0s.append(to_uint8(step.x0_pred.float()).cpu())
    samples = step.x_prev.float().clamp(-1, 1).cpu()
    return {
        "timesteps": torch.tensor(ts),
        "x_t": torch.stack(xs),
        "x0_pred": torch.stack(x0s),
        "samples": samples,
        "precision": choice,
        "seconds": time.perf_counter() - start,
    }
