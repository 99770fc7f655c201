"""The variational bound (Ho et al. 2020, Eq. 5): closed forms, a reference implementation, an analytic oracle.

For data whose pixels are independent N(0, s^2), the optimal noise predictor is known in closed form
(``GaussianOracle`` in conftest.py), and so are the expected KL terms and the entropy of the quantised data.
"""

import functools
import math

import pytest
import torch
from torch import nn

from ddpm_lib.bound import (
    bits_per_dim,
    discretized_gaussian_log_likelihood,
    eps_weights,
    log_spaced_timesteps,
    normal_kl,
    prior_bpd,
    sum_weights,
    vlb_terms,
)
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.schedules import make_betas
from ddpm_lib.unet import build_model

S = 0.25  # standard deviation of the Gaussian test data: |x0| > 1 is a 4-sigma event, clamped into the edge bins
LN2 = math.log(2.0)


def _diffusion(T=1000, variance_type="fixed_large"):
    return GaussianDiffusion(make_betas("linear", T), variance_type)


def _gaussian_images(n=16, size=16, seed=0):
    """Quantised N(0, S^2) pixels, (n, 1, size, size) float64 on the 256-level grid of [-1, 1]."""
    x = (
        torch.randn(
            n, 1, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        * S
    )
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


@functools.cache
def _full_bound(oracle_cls, schedule: str, variance_type: str) -> dict:
    """The bound at all T = 1000 indices for the optimal model on ``_gaussian_images()``, noise seed 0:
    4 s each, computed once for the tests that read it (they do not modify it)."""
    d = GaussianDiffusion(make_betas(schedule, 1000), variance_type)
    oracle = oracle_cls(d, 0.0, S)
    return bits_per_dim(d, oracle, _gaussian_images(), generator=torch.Generator().manual_seed(0))


def _quantised_gaussian_entropy_bits(s=S):
    """Entropy (bits) of one pixel: N(0, s^2) quantised to the 256 bins of Eq. 13, edge bins open-ended."""
    inner_edges = torch.linspace(-1, 1, 256, dtype=torch.float64)[:-1] + 1 / 255
    cdf = torch.distributions.Normal(0.0, s).cdf(inner_edges)
    p = torch.diff(
        torch.cat([torch.zeros(1, dtype=torch.float64), cdf, torch.ones(1, dtype=torch.float64)])
    )
    return (-(p * p.log()).sum() / LN2).item()


class ZeroModel(nn.Module):
    """A useless model that always predicts eps = 0; records whether it ran in train mode."""

    def __init__(self):
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x_t, t):
        self.modes.append(self.training)
        return torch.zeros_like(x_t)


# ---------------------------------------------------------------------------------------------- pieces
def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = (
        torch.randn(5, 7, generator=g, dtype=torch.float64),
        torch.randn(5, 7, generator=g, dtype=torch.float64),
    )
    lv1, lv2 = (
        torch.randn(5, 7, generator=g, dtype=torch.float64),
        torch.randn(5, 7, generator=g, dtype=torch.float64),
    )
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()),
        torch.distributions.Normal(m2, (0.5 * lv2).exp()),
    )
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), reference, atol=1e-12)
    assert torch.allclose(normal_kl(m1, lv1, m1, lv1), torch.zeros_like(m1), atol=1e-14)
    # broadcasting: one second Gaussian for every entry
    assert normal_kl(m1, lv1, torch.tensor(0.0), torch.tensor(0.0)).shape == (5, 7)
    assert bool((normal_kl(m1, lv1, m2, lv2) > 0).all())


@pytest.mark.parametrize(
    "mean, scale", [(0.0, 0.1), (0.9, 0.01), (-1.2, 0.5), (0.3, 1e-3), (0.0, 5.0), (1.0, 0.004)]
)
def test_discretized_likelihood_is_a_distribution_over_256_bins(mean, scale):
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)  # every pixel value
    mean, scale = torch.tensor(mean, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(x, mean, scale.log())
    assert torch.isfinite(log_p).all()
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    # the same probabilities as differences of the normal CDF at the bin edges, edge bins open-ended
    normal = torch.distributions.Normal(mean, scale)
    upper = torch.cat([x[:-1] + 1 / 255, torch.tensor([math.inf], dtype=torch.float64)])
    lower = torch.cat([torch.tensor([-math.inf], dtype=torch.float64), x[1:] - 1 / 255])
    assert torch.allclose(log_p.exp(), normal.cdf(upper) - normal.cdf(lower), rtol=1e-6, atol=1e-12)


def test_discretized_likelihood_far_tails_are_finite():
    """A bin 100 standard deviations from the mean: log-CDFs give about -5000 nats, not -inf."""
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor([1.0, 0.0, -1.0], dtype=dtype)
        log_p = discretized_gaussian_log_likelihood(
            x, torch.tensor([0.0, 1.0, 0.0], dtype=dtype), torch.tensor(math.log(0.01), dtype=dtype)
        )
        assert torch.isfinite(log_p).all() and bool((log_p < -4000).all())
        assert log_p[0].item() == pytest.approx(-0.5 * (1 - 1 / 255) ** 2 / 0.01**2, rel=2e-3)


# ---------------------------------------------------------------------------------------------- oracle
@pytest.mark.parametrize("variance_type", ["fixed_large", "fixed_small"])
def test_kl_terms_match_their_closed_form(oracle_cls, variance_type):
    """E[L_{t-1}] for N(0, S^2) data and the optimal predictor, in closed form, against the Monte Carlo terms.

    With eps_pred = E[eps | x_t], mu_theta = tilde-mu(x_t, E[x_0 | x_t]), so per dimension
    E KL = 0.5 (tilde-beta / sigma^2 - 1 - log(tilde-beta / sigma^2) + coef1^2 Var[x_0 | x_t] / sigma^2),
    with Var[x_0 | x_t] = S^2 (1 - ab) / (ab S^2 + 1 - ab).
    """
    d = _diffusion(T=200, variance_type=variance_type)
    result = bits_per_dim(
        d,
        oracle_cls(d, 0.0, S),
        _gaussian_images(size=32),
        generator=torch.Generator().manual_seed(0),
    )
    t = torch.arange(1, d.num_timesteps)
    ab, tilde_beta = d.alphas_cumprod[t], d.posterior_variance[t]
    sigma2 = tilde_beta if variance_type == "fixed_small" else d.betas[t]
    var_x0 = S**2 * (1 - ab) / (ab * S**2 + 1 - ab)
    expected = (
        0.5
        * (
            tilde_beta / sigma2
            - 1
            - torch.log(tilde_beta / sigma2)
            + d.posterior_mean_coef1[t] ** 2 * var_x0 / sigma2
        )
        / LN2
    )
    measured = result["terms"][:, 1:].mean(0)
    assert bool((result["terms"][:, 1:] >= 0).all())
    assert torch.allclose(measured, expected, rtol=0.08)
    assert measured.sum().item() == pytest.approx(expected.sum().item(), rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("variance_type", ["fixed_large", "fixed_small"])
def test_bound_is_above_the_entropy_of_the_data_and_close_for_the_optimal_model(
    oracle_cls, variance_type
):
    """E[bound] >= E[-log p_theta(x_0)] >= H(data), for any model; for the optimal one with beta_t it is close.

    H is the exact entropy of the quantised N(0, S^2) pixels, about 7.04 bits (log2(127.5) = 6.99 bits for the
    bin width plus the differential entropy of N(0, S^2) in bits).
    """
    total = _full_bound(oracle_cls, "linear", variance_type)["total"]
    entropy = _quantised_gaussian_entropy_bits()
    assert entropy == pytest.approx(
        math.log2(127.5) + 0.5 * math.log2(2 * math.pi * math.e * S**2), abs=0.01
    )
    standard_error = total.std().item() / math.sqrt(len(total))
    assert total.mean().item() > entropy - 3 * standard_error
    # tilde-beta_t is too small for a spread-out x_0
    gap = 0.1 if variance_type == "fixed_large" else 1.0
    assert total.mean().item() < entropy + gap


def test_a_useless_model_pays_many_more_bits(oracle_cls):
    d = _diffusion(T=200)
    x0 = _gaussian_images(n=4)
    optimal = bits_per_dim(
        d, oracle_cls(d, 0.0, S), x0, generator=torch.Generator().manual_seed(0)
    )["total"]
    useless = bits_per_dim(d, ZeroModel(), x0, generator=torch.Generator().manual_seed(0))["total"]
    assert bool((useless > optimal + 2).all()), (useless, optimal)


def test_prior_term_is_the_kl_to_the_standard_normal():
    d = _diffusion(T=200)
    x0 = _gaussian_images(n=3)
    ab = d.alphas_cumprod[-1].item()
    # KL(N(sqrt(ab) x, 1 - ab) || N(0, 1))
    expected = 0.5 * (ab * x0**2 + (1 - ab) - 1 - math.log(1 - ab))
    assert torch.allclose(prior_bpd(d, x0), expected.flatten(1).mean(1) / LN2, atol=1e-12)
    # the paper's schedule ends in noise
    assert prior_bpd(_diffusion(T=1000), x0).max().item() < 1e-4


# ---------------------------------------------------------------------------------------------- the loop
def test_total_is_prior_plus_terms_and_a_seed_fixes_it(oracle_cls):
    d = _diffusion(T=100)
    oracle = oracle_cls(d, 0.0, S)
    x0 = _gaussian_images(n=4, size=4)
    a = bits_per_dim(d, oracle, x0, generator=torch.Generator().manual_seed(3))
    b = bits_per_dim(d, oracle, x0, generator=torch.Generator().manual_seed(3))
    c = bits_per_dim(d, oracle, x0, generator=torch.Generator().manual_seed(4))
    assert a["terms"].shape == (4, 100) and torch.equal(a["timesteps"], torch.arange(100))
    assert torch.allclose(a["total"], a["prior"] + a["terms"].sum(1), atol=1e-12)
    assert torch.equal(a["decoder"], a["terms"][:, 0]) and torch.equal(
        a["weights"], torch.ones(100, dtype=torch.float64)
    )
    assert torch.equal(a["total"], b["total"]) and not torch.equal(a["total"], c["total"])


def test_seeded_regression_value(oracle_cls):
    d = _diffusion(T=50, variance_type="fixed_small")
    x0 = _gaussian_images(n=2, size=4)
    total = bits_per_dim(d, oracle_cls(d, 0.0, S), x0, generator=torch.Generator().manual_seed(0))[
        "total"
    ]
    assert total.tolist() == pytest.approx([10.525134, 12.765685], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule", ["linear", "cosine"]
)  # cosine: a clipped last beta makes the last term huge
def test_log_spaced_subset_estimates_the_full_sum(oracle_cls, schedule):
    d = GaussianDiffusion(make_betas(schedule, 1000), variance_type="fixed_large")
    oracle = oracle_cls(d, 0.0, S)
    x0 = _gaussian_images()
    full = _full_bound(oracle_cls, schedule, "fixed_large")
    steps = log_spaced_timesteps(1000, 50)
    # 0 gets added back
    subset = bits_per_dim(
        d, oracle, x0, generator=torch.Generator().manual_seed(1), timesteps=steps[1:]
    )
    assert subset["timesteps"].tolist() == steps and subset["terms"].shape == (16, len(steps))
    assert subset["weights"].sum().item() == pytest.approx(1000)
    assert torch.allclose(
        subset["total"], subset["prior"] + subset["terms"] @ subset["weights"], atol=1e-12
    )
    assert subset["total"].mean().item() == pytest.approx(full["total"].mean().item(), rel=0.03)


def test_sum_weights_interpolate_linearly():
    T = 10
    assert torch.equal(sum_weights(torch.arange(T), T), torch.ones(T, dtype=torch.float64))
    # KL indices 3 and 7: 1, 2 take L_3; 3..6 interpolate; 7, 8, 9 take L_7
    assert sum_weights(torch.tensor([0, 3, 7]), T).tolist() == [1.0, 2 + 2.5, 1.5 + 3]
    # a linear function is summed exactly over [3, 7]
    f = torch.arange(T, dtype=torch.float64) * 0.3 + 2
    k = torch.tensor([0, 3, 5, 7])
    w = sum_weights(k, T)
    assert (w[1:] * f[k[1:]]).sum().item() == pytest.approx(
        2 * f[3].item() + f[3:7].sum().item() + 3 * f[7].item()
    )
    assert (
        log_spaced_timesteps(1000, 50)[:5] == [0, 1, 2, 3, 4]
        and log_spaced_timesteps(1000, 50)[-1] == 999
    )


def test_model_runs_in_eval_mode_and_mode_is_restored():
    d = _diffusion(T=20)
    model = ZeroModel().train()
    bits_per_dim(d, model, _gaussian_images(n=2, size=4), timesteps=[0, 10, 19])
    assert model.modes == [False] * 3 and model.training


def test_unet_float32_runs():
    d = _diffusion(T=1000, variance_type="fixed_small")
    model = build_model("tiny", image_size=8)
    x0 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = bits_per_dim(
        d, model, x0, generator=torch.Generator().manual_seed(0), timesteps=[0, 1, 500, 999]
    )
    assert out["total"].dtype == torch.float32 and out["terms"].shape == (2, 4)
    assert torch.isfinite(out["total"]).all() and bool((out["total"] > 0).all())
    single = vlb_terms(d, model.eval(), x0, torch.tensor([0, 999]))
    assert single["output"].shape == (2,) and single["x0_pred"].shape == x0.shape


# ---------------------------------------------------------------------------------------------- Eq. 12
@pytest.mark.parametrize("variance_type", ["fixed_large", "fixed_small"])
def test_eps_weights_match_a_direct_computation(variance_type):
    d = _diffusion(T=200, variance_type=variance_type)
    w = eps_weights(d)
    assert (
        w.dtype == torch.float64
        and w.shape == (200,)
        and torch.isfinite(w).all()
        and bool((w > 0).all())
    )
    beta, alpha, ab = d.betas, d.alphas, d.alphas_cumprod
    # sigma^2 = tilde-beta: the weight simplifies to beta / (2 alpha (1 - ab_{t-1}))
    if variance_type == "fixed_small":
        assert torch.allclose(
            w[1:], beta[1:] / (2 * alpha[1:] * (1 - d.alphas_cumprod_prev[1:])), rtol=1e-12
        )
        assert w[0].item() == pytest.approx(
            beta[0].item() ** 2
            / (2 * d.posterior_variance[1].item() * alpha[0].item() * beta[0].item())
        )
    else:
        assert torch.allclose(w, beta / (2 * alpha * (1 - ab)), rtol=1e-12)


@pytest.mark.parametrize("variance_type", ["fixed_large", "fixed_small"])
def test_eq12_weighted_eps_error_is_the_mean_part_of_the_kl(variance_type):
    """||tilde-mu(x_t, x_0) - mu_theta(x_t)||^2 / (2 sigma_t^2) = weight_t ||eps - eps_theta||^2, for t >= 1."""
    d = _diffusion(T=200, variance_type=variance_type)
    g = torch.Generator().manual_seed(0)
    x0, noise = (
        torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1,
        torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64),
    )
    eps_pred = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 50, 199])
    x_t = d.q_sample(x0, t, noise)
    true_mean, _ = d.q_posterior(x0, x_t, t)
    out = d.p_mean_variance(lambda x, t: eps_pred, x_t, t, clip_denoised=False)
    lhs = (true_mean - out["mean"]) ** 2 / (2 * out["variance"])
    rhs = eps_weights(d)[t].view(-1, 1, 1, 1) * (noise - eps_pred) ** 2
    assert torch.allclose(lhs, rhs, rtol=1e-9)


# ---------------------------------------------------------------------------------------------- validation
def test_inputs_are_validated(oracle_cls):
    d = _diffusion(T=20)
    oracle = oracle_cls(d, 0.0, S)
    with pytest.raises(ValueError, match=r"\[-1, 1\].*\[0, 255\]"):  # says the range found
        # uint8 values, not scaled
        bits_per_dim(d, oracle, torch.linspace(0, 255, 48).view(1, 3, 4, 4))
    with pytest.raises(ValueError, match="float"):
        bits_per_dim(d, oracle, torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        prior_bpd(d, torch.zeros(5))
    x0 = _gaussian_images(n=2, size=4)
    for bad in ([], [0, 20], [3, 3], [1.5]):
        with pytest.raises(ValueError, match="timesteps"):
            bits_per_dim(d, oracle, x0, timesteps=bad)
    with pytest.raises(ValueError, match="shape"):
        vlb_terms(d, oracle, x0, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="noise"):
        vlb_terms(d, oracle, x0, torch.tensor([1, 2]), noise=torch.zeros(1, 1, 4, 4))


def test_the_last_index_counts_once():
    """Cosine's clipped last beta makes L_{T-1} far larger than its neighbours: it must not be spread over the last gap."""
    w = sum_weights(torch.tensor([0, 1, 500, 999]), 1000)
    assert w[-1].item() == 1.0 and w.sum().item() == pytest.approx(1000)
    # interpolated on 2..499, then held over 500..998
    assert w[2].item() == pytest.approx(249 + 499)
