"""ddpm_lib.toy2d: the mixture's exact denoiser, score and velocity against Monte-Carlo Bayes and autograd."""

import math

import pytest
import torch

from ddpm_lib import toy2d
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.samplers import Denoiser, karras_sigmas, sample_dpmpp_2m, sample_heun
from ddpm_lib.schedules import make_betas


def _mixture() -> toy2d.GaussianMixture:
    """Eight components in 3-D with unequal weights: nothing of the ring's symmetry to hide an error."""
    g = torch.Generator().manual_seed(3)
    means = torch.rand(8, 3, generator=g, dtype=torch.float64) * 1.4 - 0.7
    weights = torch.rand(8, generator=g, dtype=torch.float64) + 0.2
    return toy2d.GaussianMixture(means, 0.08, weights)


def _query(mix, n, sigma, seed=1):
    """Points where the noisy density has mass: x_0 + sigma eps."""
    g = torch.Generator().manual_seed(seed)
    x0 = mix.sample(n, g, dtype=torch.float64)
    return x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)


def _weighted_mean(w, values):
    """Self-normalised importance estimate sum_i w_i f_i ``(n, d)`` and its standard error ``(n, d)``.

    w ``(n, N)`` sums to 1 over N; the error is the delta method's sqrt(sum_i w_i^2 (f_i - mean)^2).
    """
    mean = w @ values
    var = torch.einsum("qn,qnd->qd", w**2, (values[None] - mean[:, None]) ** 2)
    return mean, var.sqrt()


def _log_prob(mix, x, var):
    """log sum_k w_k N(x; alpha mu_k, var I) with torch.distributions, written apart from the library."""
    comps = torch.distributions.Independent(
        torch.distributions.Normal(mix.means, torch.full_like(mix.means, math.sqrt(var))), 1
    )
    gm = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(mix.weights), comps)
    return gm.log_prob(x)


def test_single_gaussian_denoiser_is_the_conditional_mean():
    """K = 1: x_0 ~ N(mu, tau^2 I) and x = x_0 + sigma eps are jointly Gaussian, so E[x_0 | x] is linear."""
    mu, tau, sigma = torch.tensor([[0.3, -0.2]], dtype=torch.float64), 0.4, 0.7
    mix = toy2d.GaussianMixture(mu, tau)
    x = torch.randn(50, 2, dtype=torch.float64)
    # Cov(x_0, x) / Var(x) = tau^2 / (tau^2 + sigma^2), the regression of x_0 on x
    expected = mu + tau**2 / (tau**2 + sigma**2) * (x - mu)
    torch.testing.assert_close(mix.denoise(x, sigma), expected)
    torch.testing.assert_close(mix.score(x, sigma), -(x - mu) / (tau**2 + sigma**2))


@pytest.mark.parametrize("sigma", [0.1, 0.5, 2.0])
def test_denoiser_matches_monte_carlo_bayes(sigma):
    """E[x_0 | x] = E_p[x_0 N(x; x_0, sigma^2)] / E_p[N(x; x_0, sigma^2)], estimated from 200k draws of x_0."""
    mix = _mixture()
    x = _query(mix, 16, sigma)
    x0 = mix.sample(200_000, torch.Generator().manual_seed(2), dtype=torch.float64)
    # (16, N): the likelihood of x given each x_0
    w = torch.softmax(-(torch.cdist(x, x0) ** 2) / (2 * sigma**2), dim=1)
    estimate, error = _weighted_mean(w, x0)
    assert float(error.max()) < 0.01  # enough draws to tell an error of the closed form
    assert bool(((mix.denoise(x, sigma) - estimate).abs() < 5 * error + 1e-4).all())


def test_denoiser_is_the_identity_at_zero_noise():
    mix = _mixture()
    x = _query(mix, 32, 0.3)
    torch.testing.assert_close(mix.denoise(x, 0.0), x, atol=0, rtol=0)
    torch.testing.assert_close(mix.denoise(x, 1e-6), x, atol=1e-9, rtol=0)
    # and pure noise tells nothing: D -> E[x_0] = sum_k w_k mu_k as sigma grows
    torch.testing.assert_close(
        mix.denoise(x, 1e6), (mix.weights @ mix.means).expand_as(x), atol=1e-9, rtol=0
    )


@pytest.mark.parametrize("sigma", [0.0, 0.05, 0.4, 3.0])
def test_score_is_the_gradient_of_the_noisy_log_density(sigma):
    mix = _mixture()
    x = _query(mix, 64, max(sigma, 0.05)).requires_grad_(True)
    log_p = _log_prob(mix, x, mix.std**2 + sigma**2)
    (grad,) = torch.autograd.grad(log_p.sum(), x)
    torch.testing.assert_close(mix.score(x, sigma), grad, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(mix.log_prob(x, sigma), log_p.detach(), atol=1e-10, rtol=0)
    if sigma > 0:  # Tweedie: (D - x) / sigma^2 is the same field
        tweedie = (mix.denoise(x, sigma) - x.detach()) / sigma**2
        torch.testing.assert_close(tweedie, grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("s", [0.1, 0.5, 0.85])
def test_velocity_matches_monte_carlo_conditional_mean(s):
    """u(y, s) = E[eps - x_0 | x_s = y]: weigh draws of x_0 by N(y; (1 - s) x_0, s^2 I); then eps = (y - (1 - s) x_0) / s."""
    mix = _mixture()
    g = torch.Generator().manual_seed(5)
    y = (1 - s) * mix.sample(16, g, dtype=torch.float64) + s * torch.randn(
        16, 3, generator=g, dtype=torch.float64
    )
    x0 = mix.sample(200_000, torch.Generator().manual_seed(6), dtype=torch.float64)
    w = torch.softmax(-(torch.cdist(y, (1 - s) * x0) ** 2) / (2 * s**2), dim=1)  # (16, N)
    # eps - x_0 = (y - (1 - s) x_0) / s - x_0 = (y - x_0) / s: linear in x_0
    x0_mean, x0_error = _weighted_mean(w, x0)
    estimate, error = (y - x0_mean) / s, x0_error / s
    assert float(error.max()) < 0.03  # enough draws to tell an error of the closed form
    assert bool(((mix.velocity(y, s) - estimate).abs() < 5 * error + 1e-4).all())


@pytest.mark.parametrize("s", [0.05, 0.3, 0.7, 0.95])
def test_velocity_is_the_denoiser_read_on_the_straight_path(s):
    """x_s / (1 - s) = x_0 + sigma eps with sigma = s / (1 - s): u = eps_hat - x0_hat from D."""
    mix = _mixture()
    x = _query(mix, 64, s)
    x0_hat = mix.denoise(x / (1 - s), s / (1 - s))
    eps_hat = (x - (1 - s) * x0_hat) / s
    torch.testing.assert_close(mix.velocity(x, s), eps_hat - x0_hat, atol=1e-10, rtol=1e-8)


def test_velocity_at_the_ends_of_the_path():
    mix = _mixture()
    x = _query(mix, 32, 0.5)
    torch.testing.assert_close(mix.velocity(x, 0.0), -x)  # x_s = x_0 and eps is independent of it
    torch.testing.assert_close(mix.velocity(x, 1.0), x - mix.weights @ mix.means)  # x_s = eps
    # continuous at both ends
    torch.testing.assert_close(mix.velocity(x, 1e-7), -x, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        mix.velocity(x, 1 - 1e-7), x - mix.weights @ mix.means, atol=1e-5, rtol=0
    )


def test_levels_per_point_match_scalar_levels():
    mix = _mixture()
    x = _query(mix, 6, 0.4)
    s = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
    per_point = mix.velocity(x, s)
    for i in range(6):
        torch.testing.assert_close(per_point[i : i + 1], mix.velocity(x[i : i + 1], float(s[i])))


def test_ring_lies_inside_the_image_range():
    mix = toy2d.ring()
    x = mix.sample(100_000, torch.Generator().manual_seed(0))
    assert x.shape == (100_000, 2) and x.dtype == torch.float32
    assert float(x.abs().max()) < 1
    radius = x.norm(dim=1)
    assert abs(float(radius.mean()) - 0.7) < 0.01
    # eight equal blobs: each angle sector holds an eighth of the points
    sector = (torch.atan2(x[:, 1], x[:, 0]) / (2 * math.pi / 8)).round().remainder(8)
    counts = torch.bincount(sector.long(), minlength=8) / len(x)
    assert float((counts - 1 / 8).abs().max()) < 0.01


@pytest.mark.parametrize("sampler", [sample_heun, sample_dpmpp_2m])
def test_samplers_with_the_exact_denoiser_land_on_the_ring(sampler):
    """The exact denoiser leaves only the sampler's own error: 40 steps from sigma = 80 reach the blobs."""
    mix = toy2d.ring()
    g = torch.Generator().manual_seed(0)
    sigmas = karras_sigmas(0.002, 80.0, 40)
    x = torch.randn(2000, 2, generator=g, dtype=torch.float64) * math.sqrt(1 + 80.0**2)
    out = sampler(mix.denoise, x, sigmas, generator=g)
    nearest = torch.cdist(out, mix.means).min(dim=1).values
    assert float(nearest.pow(2).mean().sqrt()) < 2 * mix.std * 1.1  # 2-D: E|x - mu|^2 = 2 tau^2


@pytest.mark.slow
def test_trained_flow_mlp_learns_the_velocity():
    """The library's loss with the flow target on the rectified-flow schedule: the network's u is the exact one.

    The network sees the schedule's x_t = x_s / sqrt((1 - s)^2 + s^2) at s_t = (t + 1) / (T + 1).
    """
    T = 100
    diffusion = GaussianDiffusion(make_betas("rectified_flow", T), prediction_type="flow")
    mix = toy2d.ring()
    model, losses = toy2d.train_2d(diffusion, mix, steps=400, batch_size=256, lr=3e-3, seed=0)
    assert not model.training and len(losses) == 400
    g = torch.Generator().manual_seed(1)
    error, zero = 0.0, 0.0
    for t in (30, 50, 70, 90):
        s = (t + 1) / (T + 1)
        x_s = (1 - s) * mix.sample(1000, g) + s * torch.randn(1000, 2, generator=g)
        with torch.no_grad():
            u_hat = model(x_s / math.sqrt((1 - s) ** 2 + s**2), torch.full((1000,), t))
        u = mix.velocity(x_s, s)
        error += float((u_hat - u).pow(2).sum(1).mean())
        zero += float(u.pow(2).sum(1).mean())
    assert error < 0.05 * zero, (error, zero)
    # the same network through the library's Denoiser gives the exact denoiser's x_0
    x = _query(mix, 1000, 1.0)
    den = Denoiser(model, diffusion, clip_denoised=False)(x.float(), 1.0)
    assert float((den.detach() - mix.denoise(x, 1.0)).pow(2).sum(1).mean()) < 0.01


def test_bad_inputs_are_refused():
    mix = toy2d.ring()
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        mix.denoise(torch.zeros(4, 3), 0.5)
    with pytest.raises(ValueError, match="sigma"):
        mix.denoise(torch.zeros(4, 2), -0.1)
    with pytest.raises(ValueError, match=r"s \(the time"):
        mix.velocity(torch.zeros(4, 2), 1.5)
    with pytest.raises(ValueError, match="one value per point"):
        mix.velocity(torch.zeros(4, 2), torch.rand(3))
    with pytest.raises(ValueError, match="std"):
        toy2d.GaussianMixture(torch.zeros(2, 2), 0.0)
    with pytest.raises(ValueError, match="weights"):
        toy2d.GaussianMixture(torch.zeros(2, 2), 0.1, torch.tensor([1.0, -1.0]))
    diffusion = GaussianDiffusion(make_betas("rectified_flow", 10), prediction_type="flow")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        toy2d.train_2d(diffusion, toy2d.ring(radius=0.9), steps=1)
