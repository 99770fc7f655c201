"""The variational bound on -log p_theta(x_0) and its terms, in bits per dimension (Ho et al. 2020, Eq. 5).

    L = L_T + sum_{t>1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                          (the prior; no parameters)
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))  (Eq. 8; two Gaussians)
    L_0     = -log p_theta(x_0 | x_1)                              (the discretised decoder, Eq. 13)

In this project's timestep convention (index ``t`` in ``[0, T-1]`` is the paper's step ``t+1``), the term at
index ``t >= 1`` is the paper's L_t (a KL) and the term at index 0 is the decoder L_0. Every term is reported in
bits per dimension: nats averaged over the D = C*H*W dimensions of an image and divided by ln 2.
"""

from __future__ import annotations

import math

import torch

from ddpm_lib.checks import check_image_range
from ddpm_lib.diffusion import GaussianDiffusion, Model, eval_mode

# pixels in [-1, 1] take 256 values, 2/255 apart (Ho et al. 2020, Eq. 13)
BIN_HALF_WIDTH = 1.0 / 255.0
EDGE = 1.0 - BIN_HALF_WIDTH / 2  # values beyond +-EDGE fall in the edge bins, which extend to +-inf


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats; all arguments broadcast.

    The closed form behind Eq. 5's KL terms:
    ``0.5 * (logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2) - 1)``.
    Returns a tensor of the broadcast shape.
    """
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1.0
    )


def _log_diff_normal_cdf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, accurate in both tails (the upper tail is mirrored to the lower one)."""
    upper = (a + b) > 0
    # Phi(b) - Phi(a) = Phi(-a) - Phi(-b)
    lo, hi = (
        torch.where(upper, -b, a),
        torch.where(upper, -a, b),
    )
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1((log_lo - log_hi).clamp(max=-1e-12)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Elementwise log-probability (nats) of the bin of ``x`` under N(means, exp(log_scales)^2) (Ho et al. 2020, Eq. 13).

    The data are pixels in [-1, 1] quantised to 256 values; the bin of x is ``[x - 1/255, x + 1/255]``, except
    that the first bin extends down to -inf and the last one up to +inf, so the 256 probabilities sum to 1.
    ``means`` and ``log_scales`` (log standard deviations) broadcast against x; returns x's broadcast shape.
    Computed with log-CDFs, so far-out bins give large negative numbers rather than -inf.
    """
    centred = x - means
    inv_scale = torch.exp(-log_scales)
    upper = inv_scale * (centred + BIN_HALF_WIDTH)  # standardised right edge of the bin
    lower = inv_scale * (centred - BIN_HALF_WIDTH)  # standardised left edge
    log_first_bin = torch.special.log_ndtr(upper)  # P(X <= -1 + 1/255)
    log_last_bin = torch.special.log_ndtr(-lower)  # P(X >= 1 - 1/255)
    log_inner_bin = _log_diff_normal_cdf(lower, upper)
    return torch.where(x < -EDGE, log_first_bin, torch.where(x > EDGE, log_last_bin, log_inner_bin))


def _check_images(x0: torch.Tensor) -> None:
    if not isinstance(x0, torch.Tensor) or x0.dim() < 2:
        raise ValueError(
            f"x0 must be a tensor of shape (B, C, H, W), got {getattr(x0, 'shape', type(x0).__name__)}"
        )
    check_image_range(x0)  # a float tensor in [-1, 1]; the message says how to scale uint8 images


def _mean_bits(nats: torch.Tensor) -> torch.Tensor:
    """(B, ...) nats per element -> (B,) bits per dimension."""
    return nats.flatten(1).mean(1) / math.log(2.0)


def _decoder_variance(diffusion: GaussianDiffusion) -> torch.Tensor:
    """sigma^2 for the decoder when the reverse variance at index 0 is 0 (``fixed_small``): tilde-beta at index 1."""
    return diffusion.posterior_variance[1] if diffusion.num_timesteps > 1 else diffusion.betas[0]


def prior_bpd(diffusion: GaussianDiffusion, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) of Eq. 5 in bits/dim; x0 ``(B, C, H, W)`` -> ``(B,)``.

    q(x_T | x_0) = N(sqrt(bar-alpha_T) x_0, (1 - bar-alpha_T) I) by Eq. 4, so per dimension :func:`normal_kl`
    is ``0.5 (bar-alpha_T x_0^2 + c)`` with ``c = -bar-alpha_T - log(1 - bar-alpha_T) >= 0``, computed in float64
    once so that the tiny value keeps its precision in float32. It has no parameters; it is near 0 when the
    schedule ends in noise (about 1e-5 bits/dim for the linear schedule with T = 1000).
    """
    _check_images(x0)
    alpha_bar_T = diffusion.alphas_cumprod[-1].item()
    c = -alpha_bar_T - math.log1p(-alpha_bar_T)  # the variance part of the KL
    return _mean_bits(0.5 * (alpha_bar_T * x0**2 + c))


def vlb_terms(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
    clip_denoised: bool = False,
) -> dict[str, torch.Tensor]:
    """One term of the bound per image, at timestep index ``t`` (Ho et al. 2020, Eq. 5), in bits/dim.

    Draws x_t = q_sample(x0, t, noise) (Eq. 4; noise drawn when None) and, where ``t >= 1``, returns
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)), both Gaussians (Eqs. 6-7 and 8); where
    ``t == 0``, the decoder term L_0 = -log p_theta(x_0 | x_1) with the discretised Gaussian of Eq. 13, whose
    mean is mu_theta(x_1, 1) and whose variance is the reverse variance at index 0 (for ``fixed_small`` that is
    tilde-beta = 0, so the posterior variance of index 1 is used instead, like improved-diffusion's clipped
    log-variance). x0 ``(B, C, H, W)`` in [-1, 1], t LongTensor ``(B,)``. Returns ``{"output": (B,),
    "x0_pred": (B, C, H, W)}``.
    """
    _check_images(x0)
    return _vlb_terms(diffusion, model, x0, t, noise, clip_denoised)


def _vlb_terms(diffusion, model, x0, t, noise, clip_denoised) -> dict[str, torch.Tensor]:
    t = diffusion._as_timesteps(t, x0)
    x_t = diffusion.q_sample(x0, t, noise)
    true_mean, true_var = diffusion.q_posterior(x0, x_t, t)
    out = diffusion.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised)
    variance = out["variance"]
    variance = torch.where(variance > 0, variance, _decoder_variance(diffusion).to(variance))
    log_var = torch.log(variance)
    # L_{t-1}: true_var is 0 at t = 0, where the KL is not used; clamp so that it stays finite
    kl = _mean_bits(
        normal_kl(true_mean, torch.log(true_var.clamp(min=1e-20)), out["mean"], log_var)
    )
    decoder_nll = -_mean_bits(discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * log_var))
    return {"output": torch.where(t == 0, decoder_nll, kl), "x0_pred": out["x0_pred"]}


def _check_timesteps(diffusion: GaussianDiffusion, timesteps) -> list[int]:
    T = diffusion.num_timesteps
    if timesteps is None:
        return list(range(T))
    steps = [int(s) for s in timesteps]
    if (
        len(steps) == 0
        or any(s != v for s, v in zip(steps, timesteps))
        or not all(0 <= s < T for s in steps)
    ):
        raise ValueError(
            f"timesteps must be a non-empty list of integers in [0, {T - 1}], got {timesteps!r}"
        )
    if len(set(steps)) != len(steps):
        raise ValueError("timesteps must not repeat")
    return sorted(set(steps) | {0})  # L_0 is always computed exactly


def log_spaced_timesteps(num_timesteps: int, num: int) -> list[int]:
    """About ``num`` distinct indices from 0 to T-1, spaced geometrically: dense at small t, where the bound's mass sits."""
    if not 2 <= num <= num_timesteps:
        raise ValueError(f"num must be in [2, {num_timesteps}], got {num}")
    steps = (
        torch.logspace(0, math.log10(num_timesteps), num, dtype=torch.float64).round().long() - 1
    )
    return sorted({int(s) for s in steps})


def sum_weights(timesteps: torch.Tensor, num_timesteps: int) -> torch.Tensor:
    """Weights w (float64, ``(S,)``) with sum_s w_s L_s ~ the sum of L over all indices 1..T-1 (index 0 gets 1).

    The KL terms are interpolated linearly between the evaluated indices (held constant beyond the first and
    last), and the interpolant is summed over every integer index: exact when every index is evaluated. The last
    index T-1, when evaluated, counts once on its own.
    ``timesteps`` ascending and starting at 0, as :func:`bits_per_dim` returns them.
    """
    k = timesteps.double()
    if len(k) > 2 and int(k[-1]) == num_timesteps - 1 and k[-2] < k[-1] - 1:
        # the last index stands alone: a clipped schedule (cosine's beta_T = 0.999) makes its term far larger than
        # its neighbours', and interpolating it across the last gap would count it hundreds of times
        return torch.cat(
            [sum_weights(timesteps[:-1], num_timesteps - 1), torch.ones(1, dtype=torch.float64)]
        )
    w = torch.zeros_like(k)
    w[0] = 1.0  # the decoder L_0
    if len(k) > 1:
        gaps = k[2:] - k[1:-1]  # n_j between consecutive KL indices
        w[1:-1] += (gaps + 1) / 2
        w[2:] += (gaps - 1) / 2
        w[1] += k[1] - 1  # indices 1 .. k_1 - 1 take the first value
        w[-1] += num_timesteps - k[-1]  # indices k_last .. T-1 take the last value
    return w


def bits_per_dim(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    timesteps: list[int] | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The variational bound on -log p_theta(x_0) (Ho et al. 2020, Eq. 5) in bits per dimension, per image.

    Evaluates L_T (:func:`prior_bpd`) and one draw of each term :func:`vlb_terms` at every timestep index,
    with the model in eval mode and without gradients (its mode is restored afterwards); all noise comes
    from ``generator`` when given, so a seed fixes the result. x0 ``(B, C, H, W)`` in [-1, 1].

    ``timesteps``: a subset of indices to evaluate instead of all T, e.g. :func:`log_spaced_timesteps`.
    Then the total is an **estimate**: L_T and L_0 (index 0 is always added to the subset) are exact, and
    the sum of the T-1 KL terms is estimated by interpolating them linearly between the evaluated indices
    (:func:`sum_weights`). The terms fall steeply with t, so a subset must be dense at small t: an evenly
    spaced one misses most of the mass, a log-spaced one of 50-100 indices is within a few per cent.

    Returns ``{"total": (B,), "prior": (B,), "decoder": (B,) L_0, "terms": (B, S) the term at each
    evaluated index, "timesteps": (S,) LongTensor of those indices, ascending, "weights": (S,) float64}``
    with ``total = prior + terms @ weights``; with all timesteps every weight is 1 and
    ``total = prior + terms.sum(1)`` (``decoder`` is ``terms[:, 0]``).
    """
    _check_images(x0)
    steps = _check_timesteps(diffusion, timesteps)
    rng_device = generator.device if generator is not None else x0.device
    iterator = steps
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(steps, desc="bits/dim", leave=False)
    terms = []
    with eval_mode(model):
        for s in iterator:
            noise = torch.randn(
                x0.shape, generator=generator, device=rng_device, dtype=x0.dtype
            ).to(x0.device)
            t = torch.full((x0.shape[0],), s, dtype=torch.long, device=x0.device)
            terms.append(_vlb_terms(diffusion, model, x0, t, noise, clip_denoised=False)["output"])
        prior = prior_bpd(diffusion, x0)
    terms = torch.stack(terms, dim=1)  # (B, S)
    timesteps = torch.tensor(steps, dtype=torch.long)
    weights = sum_weights(timesteps, diffusion.num_timesteps)
    total = prior + terms @ weights.to(terms)
    return {
        "total": total,
        "prior": prior,
        "decoder": terms[:, 0],
        "terms": terms,
        "timesteps": timesteps,
        "weights": weights,
    }


def eps_weights(diffusion: GaussianDiffusion) -> torch.Tensor:
    """The weight of ||eps - eps_theta(x_t, t)||^2 in L_{t-1} (Ho et al. 2020, Eq. 12), float64 ``(T,)``.

    ``beta_t^2 / (2 sigma_t^2 alpha_t (1 - bar-alpha_t))`` per dimension (nats). L_simple (Eq. 14) replaces
    every weight by 1. At index 0 the term is the decoder L_0, not a KL: there the weight is computed with
    the decoder's variance (for ``fixed_small``, where sigma^2 = 0 at index 0, the posterior variance of index
    1, as in :func:`vlb_terms`), which is the weight of the squared error in the decoder's Gaussian
    log-density, ||x_0 - mu_theta||^2 / (2 sigma^2), before discretisation.
    """
    d = diffusion
    if d.variance_type == "fixed_small":
        variance = d.posterior_variance.clone()
        variance[0] = _decoder_variance(d)
    else:
        variance = d.betas.clone()
    return d.betas**2 / (2 * variance * d.alphas * (1 - d.alphas_cumprod))
