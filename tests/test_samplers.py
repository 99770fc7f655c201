"""The sampler family of ``ddpm_lib.samplers`` against analytic oracles and reference implementations.

Three kinds of check (STYLE.md, 8):

- Oracles whose probability-flow ODE is solved in closed form. Gaussian data x_0 ~ N(mu, diag s^2) has
  the exact denoiser D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), and the ODE dx/dsigma = (x - D) / sigma
  (Karras et al. 2022, Eq. 3) becomes d(x - mu)/dsigma = sigma (x - mu) / (s^2 + sigma^2): x - mu scales as
  sqrt(s^2 + sigma^2). Two-point data x_0 in {-1, +1} has D = tanh(x / sigma^2); its 1-D flow preserves order
  and the marginals, so it is the quantile map F_b^-1(F_a(x)) between the mixtures at both levels.
- The library's discrete-time DDPM and DDIM (``GaussianDiffusion.sample``) and diffusers'
  ``DPMSolverMultistepScheduler``: the same network, noise and levels must give the same images.
- The registry, the callback, seeds and the level lists.

Every sampler is called as ``SAMPLERS[name](denoiser, x, sigmas, ...)`` with x in variance-exploding units
``x = x_0 + sigma eps``; a DDPM's x_t is ``x / sqrt(1 + sigma^2)``.
"""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch
from torch import nn

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.samplers import (
    DEFAULT_SAMPLER,
    DEFAULT_SPACING,
    EDM_SIGMA_MAX,
    EDM_SIGMA_MIN,
    SAMPLERS,
    Denoiser,
    SamplerName,
    karras_sigmas,
    make_sigmas,
    model_sigmas,
    network_evaluations,
    sample_ddim,
    sample_ddpm,
    timestep_sigmas,
)
from ddpm_lib.schedules import make_betas

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")
ODE_SOLVERS = ("euler", "ddim", "heun", "dpmpp_2m")  # ddim with eta = 0
ORDER = {"euler": 1, "ddim": 1, "heun": 2, "dpmpp_2m": 2}
SIGMA_MIN, SIGMA_MAX = EDM_SIGMA_MIN, EDM_SIGMA_MAX
MU = torch.tensor([0.5, -1.0, 0.25, 0.0], dtype=torch.float64)  # (D,) the data's mean
S = torch.tensor([0.3, 0.5, 1.0, 2.0], dtype=torch.float64)  # (D,) its standard deviation per axis


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster


# ---------------------------------------------------------------------------------- oracles
class GaussianDenoiser:
    """The exact D(x, sigma) = E[x_0 | x] for x_0 ~ N(mu, diag s^2), x = x_0 + sigma eps; x ``(B, D)``."""

    def __init__(self, mu: torch.Tensor = MU, s: torch.Tensor = S):
        self.mu, self.s = mu, s
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.calls += 1
        return self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)

    def start(self, sigma_max: float, n: int, generator: torch.Generator) -> torch.Tensor:
        """n exact draws of x at sigma_max: mu + sqrt(s^2 + sigma_max^2) z, ``(n, D)``."""
        z = torch.randn(n, len(self.mu), generator=generator, dtype=torch.float64)
        return self.mu + (self.s**2 + sigma_max**2).sqrt() * z

    def flow(self, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """The exact probability-flow ODE from sigma_from to sigma_to: x - mu scales as sqrt(s^2 + sigma^2)."""
        ratio = ((self.s**2 + sigma_to**2) / (self.s**2 + sigma_from**2)).sqrt()
        return self.mu + ratio * (x - self.mu)


class TwoPointDenoiser:
    """x_0 = +1 or -1 with equal odds: D(x, sigma) = tanh(x / sigma^2), the posterior mean of x_0."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(x / sigma**2)

    @staticmethod
    def cdf(x: torch.Tensor, sigma: float) -> torch.Tensor:
        """F_sigma(x) of the mixture (N(-1, sigma^2) + N(+1, sigma^2)) / 2."""
        return (torch.special.ndtr((x + 1) / sigma) + torch.special.ndtr((x - 1) / sigma)) / 2

    def flow(self, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """The exact flow: the monotone map that carries F_from to F_to, F_to^-1(F_from(x)), by bisection."""
        p = self.cdf(x, sigma_from)
        lo, hi = torch.full_like(x, -1 - 40 * sigma_to), torch.full_like(x, 1 + 40 * sigma_to)
        for _ in range(200):
            mid = (lo + hi) / 2
            below = self.cdf(mid, sigma_to) < p
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (lo + hi) / 2


def _geometric(sigma_max: float, sigma_min: float, num_steps: int) -> torch.Tensor:
    """num_steps levels evenly spaced in log sigma (DPM-Solver's uniform lambda), then 0."""
    levels = torch.logspace(
        math.log10(sigma_max), math.log10(sigma_min), num_steps, dtype=torch.float64
    )
    return torch.cat([levels, levels.new_zeros(1)])


LEVELS = {
    "karras": lambda n: karras_sigmas(SIGMA_MIN, SIGMA_MAX, n),
    "geometric": lambda n: _geometric(SIGMA_MAX, SIGMA_MIN, n),
}


def _order(steps: list[int], errors: list[float]) -> float:
    """The observed order p of error ~ steps^-p: minus the least-squares slope of log error on log steps."""
    xs, ys = [math.log(n) for n in steps], [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return -slope


# ---------------------------------------------------------------------------------- 1. ODE solvers
@pytest.mark.parametrize("levels", list(LEVELS))
@pytest.mark.parametrize("name", ODE_SOLVERS)
def test_ode_solvers_converge_to_the_gaussian_flow_at_their_order(name, levels):
    """Error to the exact x(0) = mu + s / sqrt(s^2 + sigma_max^2) (x - mu) falls as steps^-order.

    Euler and DDIM are first order, Heun (EDM Alg. 2) and DPM-Solver++(2M) (Lu et al. 2022b) second. The
    last step of every solver is x_next = D(x, sigma_min), off the flow by a factor s / sqrt(s^2 + sigma_min^2)
    of x - mu: a floor of sigma_min^2 / (2 s^2) ~ 2e-5, far below the errors measured here.
    """
    oracle = GaussianDenoiser()
    x = oracle.start(SIGMA_MAX, 64, torch.Generator().manual_seed(0))
    exact = oracle.flow(x, SIGMA_MAX, 0.0)
    steps = [16, 32, 64, 128]
    errors = []
    for n in steps:
        out = SAMPLERS[name](oracle, x.clone(), LEVELS[levels](n))
        errors.append(float((out - exact).abs().max()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    order = _order(steps, errors)
    low, high = (0.85, 1.15) if ORDER[name] == 1 else (1.8, 2.5)
    assert low < order < high, f"{name} on {levels} levels: order {order:.2f}, errors {errors}"


def test_euler_in_sigma_is_ddim_eta0():
    """x + (s_n - s)(x - D)/s = D + (s_n/s)(x - D): Euler on the VE ODE is DDIM (Karras et al. 2022, Sec. 3).

    Checked on a denoiser that is not linear in x (two-point data), so no property of Gaussians helps.
    """
    x = 80 * torch.randn(32, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = karras_sigmas(0.3, 80.0, 12)
    euler = SAMPLERS["euler"](TwoPointDenoiser(), x.clone(), sigmas)
    ddim = SAMPLERS["ddim"](TwoPointDenoiser(), x.clone(), sigmas, eta=0.0)
    torch.testing.assert_close(euler, ddim, rtol=1e-12, atol=1e-12)


def test_one_ddim_step_on_gaussian_data_is_first_order_not_exact():
    """DDIM holds D fixed over a step, which is exact only where D does not move.

    With D = mu + k (x - mu), k = s^2 / (s^2 + sigma^2), one step from sigma to s_n multiplies x - mu by
    (s^2 + sigma s_n) / (s^2 + sigma^2); the flow multiplies it by sqrt((s^2 + s_n^2) / (s^2 + sigma^2)).
    Their squares differ by s^2 (sigma - s_n)^2 / (s^2 + sigma^2)^2 >= 0 (AM-GM): DDIM falls short unless
    s = 0 (a point: D constant) or the step is empty.
    """
    s = torch.tensor([0.0, 0.3, 1.0, 3.0], dtype=torch.float64)
    oracle = GaussianDenoiser(torch.zeros(4, dtype=torch.float64), s)
    sigma, sigma_next = 2.0, 0.5
    x = torch.ones(1, 4, dtype=torch.float64)
    out = sample_ddim(oracle, x, torch.tensor([sigma, sigma_next], dtype=torch.float64))[0]
    factor = (s**2 + sigma * sigma_next) / (s**2 + sigma**2)
    torch.testing.assert_close(out, factor, rtol=1e-14, atol=0)
    flow = oracle.flow(x, sigma, sigma_next)[0]
    gap = flow**2 - factor**2
    torch.testing.assert_close(gap, s**2 * (sigma - sigma_next) ** 2 / (s**2 + sigma**2) ** 2)
    assert gap[0] == 0 and bool((gap[1:] > 1e-3).all())


@pytest.mark.parametrize("name", ODE_SOLVERS)
def test_every_ode_solver_is_exact_for_point_data(name):
    """x_0 = mu (s = 0): D = mu at every level, the flow is x(sigma) = mu + (sigma / sigma_0)(x_0 - mu).

    Every solver must follow it at every level, whatever the spacing: Euler because the solution is
    linear in sigma, Heun because both slopes agree, DDIM and DPM-Solver++ because D is constant.
    """
    oracle = GaussianDenoiser(MU, torch.zeros(4, dtype=torch.float64))
    x = oracle.start(SIGMA_MAX, 8, torch.Generator().manual_seed(2))
    sigmas = karras_sigmas(SIGMA_MIN, SIGMA_MAX, 7)
    steps = []
    SAMPLERS[name](oracle, x.clone(), sigmas, callback=steps.append)
    for step in steps:
        expected = MU + (step.sigma_next / SIGMA_MAX) * (x - MU)
        torch.testing.assert_close(step.x_next, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------- 2. stochastic samplers
STOCHASTIC = {
    # name: (levels, options). The levels are many: each sampler's discretisation error in the variance is
    # then <= 2% (fixed_small ignores the spread of x_0 given x at every step; Euler's churn is first order)
    "ddpm": (lambda: timestep_sigmas(GaussianDiffusion(make_betas("linear", 1000)), 1000), {}),
    "euler": (lambda: karras_sigmas(SIGMA_MIN, SIGMA_MAX, 512), {"s_churn": 10.0}),
    "heun": (lambda: karras_sigmas(SIGMA_MIN, SIGMA_MAX, 128), {"s_churn": 40.0}),
    "dpmpp_2m_sde": (lambda: karras_sigmas(SIGMA_MIN, SIGMA_MAX, 128), {}),
}


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_stochastic_samplers_draw_the_gaussian_data(name):
    """From exact draws at sigma_max, 20000 samples have the data's mean (within 4 standard errors) and
    variance (within 5%: discretisation <= 2% plus 3 standard errors of sqrt(2 / n) = 1%)."""
    levels, options = STOCHASTIC[name]
    sigmas = levels()
    mu, s = MU[:2], S[1:3]  # s = 0.5 and 1
    oracle = GaussianDenoiser(mu, s)
    g = torch.Generator().manual_seed(3)
    n = 20000
    x = SAMPLERS[name](oracle, oracle.start(float(sigmas[0]), n, g), sigmas, generator=g, **options)
    assert bool(torch.isfinite(x).all())
    assert bool(((x.mean(0) - mu).abs() < 4 * s / math.sqrt(n)).all()), x.mean(0)
    torch.testing.assert_close(x.var(0) / s**2, torch.ones_like(s), rtol=0, atol=0.05)


def test_ddim_eta1_is_ddpm_fixed_small():
    """eta = 1 gives s_up^2 = s_n^2 (s^2 - s_n^2) / s^2, tilde-beta in sigma units, and s_down / s = s_n^2 / s^2:
    DDIM's step is then the posterior of Ho et al. 2020, Eq. 7 (Song et al. 2021a, Sec. 4.1), noise for noise."""
    oracle = GaussianDenoiser()
    sigmas = karras_sigmas(0.01, 20.0, 10)
    x = oracle.start(20.0, 64, torch.Generator().manual_seed(4))
    ddpm = sample_ddpm(oracle, x.clone(), sigmas, generator=torch.Generator().manual_seed(5))
    ddim = sample_ddim(
        oracle, x.clone(), sigmas, eta=1.0, generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(ddpm, ddim, rtol=1e-12, atol=1e-12)


def test_fixed_large_is_exact_for_unit_gaussian_data_on_few_levels():
    """beta_t is the optimal variance for x_0 ~ N(0, I) (Ho et al. 2020, Sec. 3.2): then every step maps
    N(0, 1 + s^2) to exactly N(0, 1 + s_n^2), however far apart the levels, and the noiseless last step
    D = x / (1 + s_1^2) leaves variance 1 / (1 + s_1^2). tilde-beta on the same 10 levels under-disperses."""
    oracle = GaussianDenoiser(
        torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    )
    sigmas = timestep_sigmas(GaussianDiffusion(make_betas("linear", 1000)), 10)
    n = 20000
    variances = {}
    for variance in ("fixed_large", "fixed_small"):
        g = torch.Generator().manual_seed(6)
        x = oracle.start(float(sigmas[0]), n, g)
        x = sample_ddpm(oracle, x, sigmas, variance=variance, generator=g)
        assert bool(torch.isfinite(x).all())
        assert bool((x.mean(0).abs() < 4 / math.sqrt(n)).all()), x.mean(0)
        variances[variance] = x.var(0)
    expected = 1 / (1 + float(sigmas[-2]) ** 2)
    tolerance = 4 * math.sqrt(2 / n)  # 4 standard errors of a variance
    assert bool(((variances["fixed_large"] / expected - 1).abs() < tolerance).all()), variances
    assert bool((variances["fixed_small"] < 0.8).all()), variances


# ---------------------------------------------------------------------------------- 3. two-point data
@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m"])
def test_ode_solvers_converge_to_the_two_point_flow(name):
    """A denoiser that is not linear: the error to the quantile map from 80 down to 1 falls at the order."""
    oracle = TwoPointDenoiser()
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 2, (256,), generator=g).double() * 2 - 1
    x = x + SIGMA_MAX * torch.randn(256, generator=g, dtype=torch.float64)
    exact = oracle.flow(x, SIGMA_MAX, 1.0)
    steps = [16, 32, 64, 128]
    errors = []
    for n in steps:
        sigmas = karras_sigmas(1.0, SIGMA_MAX, n + 1)[:-1]  # n steps from 80 to 1; no 0 at the end
        errors.append(float((SAMPLERS[name](oracle, x.clone(), sigmas) - exact).abs().max()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    order = _order(steps, errors)
    low, high = (0.85, 1.15) if ORDER[name] == 1 else (1.8, 2.5)
    assert low < order < high, f"{name}: order {order:.2f}, errors {errors}"


def test_dpmpp_2m_carries_two_point_noise_to_the_points():
    """The flow never crosses 0 (D is odd, so x = 0 stays put): each sample ends at the sign of its start."""
    g = torch.Generator().manual_seed(8)
    n = 20000
    x = torch.randint(0, 2, (n, 1), generator=g).double() * 2 - 1
    x = x + SIGMA_MAX * torch.randn(n, 1, generator=g, dtype=torch.float64)
    out = SAMPLERS["dpmpp_2m"](
        TwoPointDenoiser(), x.clone(), karras_sigmas(SIGMA_MIN, SIGMA_MAX, 20)
    )
    assert float((out.abs() - 1).abs().max()) < 0.05
    assert torch.equal(out.sign(), x.sign())
    assert abs(float((out > 0).double().mean()) - 0.5) < 4 * 0.5 / math.sqrt(n)


# ---------------------------------------------------------------------------------- 4. the library's samplers
class TinyNet(nn.Module):
    """A fixed float64 'network' ``(B, C, H, W), (B,) -> (B, C, H, W)``: a channel mix, a tanh and a term in t.

    It computes in float64 whatever dtype it is fed, and takes integer or fractional t alike.
    """

    def __init__(self, channels: int = 3):
        super().__init__()
        g = torch.Generator().manual_seed(9)
        self.weight = nn.Parameter(
            0.3 * torch.randn(channels, channels, generator=g, dtype=torch.float64)
        )
        self.bias = nn.Parameter(0.5 * torch.randn(channels, generator=g, dtype=torch.float64))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        t = t.to(torch.float64).view(-1, 1, 1, 1)
        mix = torch.einsum("ij,bjhw->bihw", self.weight, x)
        return mix + 0.2 * torch.tanh(x) + self.bias.view(1, -1, 1, 1) * torch.cos(t / 7)


SHAPE = (4, 3, 2, 2)
LIBRARY_RUNS = {  # (library sampler, steps, eta, variance_type)
    "ddim eta=0": ("ddim", 10, 0.0, "fixed_small"),
    "ddim eta=1": ("ddim", 10, 1.0, "fixed_small"),
    "ddpm fixed_small": ("ddpm", 50, 0.0, "fixed_small"),
    "ddpm fixed_large": ("ddpm", 50, 0.0, "fixed_large"),
}


@pytest.mark.parametrize("run", list(LIBRARY_RUNS))
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_family_matches_the_library_discrete_samplers(prediction_type, run):
    """DDPM (Ho et al. 2020, Alg. 2) and DDIM (Song et al. 2021a, Eq. 12) in sigma units give the images of
    ``GaussianDiffusion.sample`` for the same network, x_T and seed, for every prediction type.

    Tolerance 1e-6: the Denoiser hands the network x_t in float32 (relative rounding 6e-8 of inputs of
    order 1), and the library's DDIM multiplies its float32 noise by sigma in float32; both in float64
    otherwise. A wrong coefficient anywhere moves the images by 1e-3 or more.
    """
    sampler, steps, eta, variance_type = LIBRARY_RUNS[run]
    diffusion = GaussianDiffusion(
        make_betas("linear", 50), variance_type=variance_type, prediction_type=prediction_type
    )
    net = TinyNet()
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    num_steps = None if sampler == "ddpm" else steps
    reference = diffusion.sample(
        net, SHAPE, sampler, num_steps, eta, generator=torch.Generator().manual_seed(11), x_T=x_T
    )
    sigmas = timestep_sigmas(diffusion, steps)
    options = {"eta": eta} if sampler == "ddim" else {"variance": variance_type}
    x = SAMPLERS[sampler](
        Denoiser(net, diffusion),
        x_T * math.sqrt(1 + float(sigmas[0]) ** 2),
        sigmas,
        generator=torch.Generator().manual_seed(11),
        **options,
    )
    assert x.dtype == torch.float64
    torch.testing.assert_close(x.clamp(-1, 1), reference, rtol=0, atol=1e-6)
    assert float((x.clamp(-1, 1) - x_T.clamp(-1, 1)).abs().max()) > 1e-2  # the run did something


# ---------------------------------------------------------------------------------- 5. the Denoiser
class OracleNet(nn.Module):
    """Returns the exact training target of ``prediction_type`` for a known x_0 and eps at integer t,
    recording the x_t and t it is fed (Ho et al. 2020, Eq. 4; v of Salimans & Ho 2022, App. D)."""

    def __init__(self, diffusion: GaussianDiffusion, x0: torch.Tensor, eps: torch.Tensor):
        super().__init__()
        self.diffusion, self.x0, self.eps = diffusion, x0, eps
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append((x_t, t))
        index = int(t[0])
        assert float(t[0]) == index, f"fed a fractional timestep {float(t[0])} on a model level"
        a = float(self.diffusion.sqrt_alphas_cumprod[index])
        b = float(self.diffusion.sqrt_one_minus_alphas_cumprod[index])
        return {
            "epsilon": self.eps,
            "v_prediction": a * self.eps - b * self.x0,
            "sample": self.x0,
            "flow": self.eps - self.x0,
        }[self.diffusion.prediction_type]


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_denoiser_turns_each_target_into_x0(prediction_type):
    """Fed the exact target at sigma_t, D(x_0 + sigma_t eps, sigma_t) = x_0 for every prediction type, and the
    network sees x_t = x / sqrt(1 + sigma^2) = sqrt(bar-alpha_t) x_0 + sqrt(1 - bar-alpha_t) eps at t."""
    diffusion = GaussianDiffusion(make_betas("cosine", 100), prediction_type=prediction_type)
    g = torch.Generator().manual_seed(12)
    x0 = 2 * torch.rand(SHAPE, generator=g, dtype=torch.float64) - 1
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    net = OracleNet(diffusion, x0, eps)
    denoiser = Denoiser(net, diffusion, clip_denoised=False)
    for t in (0, 1, 37, 80, 99):
        sigma = float(model_sigmas(diffusion)[t])
        torch.testing.assert_close(denoiser(x0 + sigma * eps, sigma), x0, rtol=0, atol=1e-10)
        x_t, t_fed = net.seen[-1]
        # on a model level the network sees the integer t it was trained on, as a long tensor: networks
        # that index a table by t (notebook 12's ideal denoiser) work under every sampler
        assert t_fed.dtype == torch.long and torch.equal(t_fed, torch.full((SHAPE[0],), t))
        x_t_expected = diffusion.q_sample(x0, t, eps)
        torch.testing.assert_close(
            x_t.double(), x_t_expected, rtol=1e-6, atol=1e-6
        )  # fed in float32
    assert denoiser.calls == 5


def test_sigma_to_t_is_exact_on_the_levels_and_log_linear_between():
    """Integer t on the model's own levels; between two, linear in log sigma (k-diffusion's DiscreteSchedule);
    below the first and above the last level, clamped to 0 and T-1."""
    diffusion = GaussianDiffusion(make_betas("linear", 100))
    denoiser = Denoiser(TinyNet(), diffusion)
    sigmas = model_sigmas(diffusion)
    assert [denoiser.sigma_to_t(float(s)) for s in sigmas] == list(range(100))
    for i in (0, 10, 98):
        between = math.sqrt(float(sigmas[i] * sigmas[i + 1]))  # the midpoint in log sigma
        assert denoiser.sigma_to_t(between) == pytest.approx(i + 0.5, abs=1e-9)
    grid = torch.logspace(math.log10(float(sigmas[0])), math.log10(float(sigmas[-1])), 2000)
    ts = [denoiser.sigma_to_t(float(s)) for s in grid]
    assert all(a < b for a, b in zip(ts, ts[1:]))
    assert denoiser.sigma_to_t(float(sigmas[0]) / 10) == 0
    assert denoiser.sigma_to_t(float(sigmas[-1]) * 10) == 99


# ---------------------------------------------------------------------------------- 6. diffusers
@pytest.mark.parametrize("num_steps", [10, 20])
def test_dpmpp_2m_matches_diffusers(num_steps):
    """DPM-Solver++(2M) against diffusers' ``DPMSolverMultistepScheduler`` on the same levels, network and noise.

    diffusers runs in VP units (x_t; its last step lands on x_0, sigma = 0) from x_T; the family runs
    x = x_t sqrt(1 + sigma^2) from x_T sqrt(1 + sigma_0^2). Both take first-order first and last steps
    (``final_sigmas_type="zero"`` makes diffusers' last step first order for any number of steps; below 15
    steps ``lower_order_final`` also flags the one before, which at order 2 changes nothing). diffusers
    keeps alphas_cumprod, the sigmas and the state in float32: tolerance 1e-5 on images of order 3.
    """
    diffusers = pytest.importorskip("diffusers")
    betas = make_betas("linear", 50).float().double()  # the float32 betas diffusers stores
    diffusion = GaussianDiffusion(betas)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=50,
        trained_betas=betas.numpy(),
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="linspace",
    )
    scheduler.set_timesteps(num_steps)
    net = TinyNet()
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(13))
    theirs = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            theirs = scheduler.step(net(theirs, t.expand(SHAPE[0])), t, theirs).prev_sample
    sigmas = torch.cat(
        [model_sigmas(diffusion)[scheduler.timesteps], torch.zeros(1, dtype=torch.float64)]
    )
    x = x_T.double() * math.sqrt(1 + float(sigmas[0]) ** 2)
    ours = SAMPLERS["dpmpp_2m"](Denoiser(net, diffusion, clip_denoised=False), x.clone(), sigmas)
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-5)
    first_order = sample_ddim(Denoiser(net, diffusion, clip_denoised=False), x.clone(), sigmas)
    assert (
        float((first_order - theirs.double()).abs().max()) > 1e-3
    )  # the check can tell orders apart


# ---------------------------------------------------------------------------------- 7. registry, callback, seeds
def test_registry_holds_exactly_the_sampler_names():
    assert set(SAMPLERS) == set(get_args(SamplerName)) == set(DEFAULT_SPACING)
    assert DEFAULT_SAMPLER in SAMPLERS


@pytest.mark.parametrize(
    "name, options",
    [
        ("ddpm", {}),
        ("ddim", {"eta": 0.5}),
        ("euler", {}),
        ("heun", {}),
        ("heun", {"s_churn": 5.0}),
        ("dpmpp_2m", {}),
    ],
)
def test_network_evaluations_counts_denoiser_calls(name, options):
    """One evaluation a step; Heun two a step but the last (the step to sigma = 0 has no correction)."""
    oracle = GaussianDenoiser()
    sigmas = karras_sigmas(SIGMA_MIN, SIGMA_MAX, 7)
    SAMPLERS[name](
        oracle, oracle.start(SIGMA_MAX, 2, torch.Generator().manual_seed(14)), sigmas, **options
    )
    assert oracle.calls == network_evaluations(name, 7) == (13 if name == "heun" else 7)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_sees_every_step_in_order(name):
    """len(sigmas) - 1 steps; sigma falls step by step to 0; x_next of step i is x of step i + 1 and the
    last one is the result; denoised is D(x, sigma)."""
    oracle = GaussianDenoiser()
    sigmas = karras_sigmas(SIGMA_MIN, SIGMA_MAX, 6)
    x = oracle.start(SIGMA_MAX, 3, torch.Generator().manual_seed(15))
    steps = []
    out = SAMPLERS[name](
        oracle, x, sigmas, generator=torch.Generator().manual_seed(16), callback=steps.append
    )
    assert [step.i for step in steps] == list(range(6))
    assert [step.sigma for step in steps] == sigmas[:-1].tolist()
    assert [step.sigma_next for step in steps] == sigmas[1:].tolist()
    assert steps[0].x is x and steps[-1].x_next is out and steps[-1].sigma_next == 0.0
    for step, following in zip(steps, steps[1:]):
        assert step.x_next is following.x
    for step in steps:
        torch.testing.assert_close(step.denoised, GaussianDenoiser()(step.x, step.sigma))


@pytest.mark.parametrize(
    "name, options, stochastic",
    [
        ("ddpm", {}, True),
        ("ddim", {"eta": 1.0}, True),
        ("euler", {"s_churn": 10.0}, True),
        ("heun", {"s_churn": 10.0}, True),
        ("ddim", {"eta": 0.0}, False),
        ("euler", {}, False),
        ("heun", {}, False),
        ("dpmpp_2m", {}, False),
    ],
)
def test_a_seed_fixes_the_result(name, options, stochastic):
    """The same seed twice gives the same samples; another seed others, unless the sampler draws no noise."""
    oracle = GaussianDenoiser()
    sigmas = karras_sigmas(SIGMA_MIN, SIGMA_MAX, 8)
    x = oracle.start(SIGMA_MAX, 16, torch.Generator().manual_seed(17))

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return SAMPLERS[name](oracle, x.clone(), sigmas, generator=g, **options)

    assert torch.equal(run(1), run(1))
    difference = float((run(1) - run(2)).abs().max())
    assert difference > 1e-2 if stochastic else difference == 0.0


# ---------------------------------------------------------------------------------- 8. the level lists
def test_make_sigmas_refuses_an_unknown_spacing():
    diffusion = GaussianDiffusion(make_betas("linear", 100))
    with pytest.raises(
        ValueError, match=r"unknown spacing 'log'; valid choices: timesteps, karras"
    ):
        make_sigmas(diffusion, 10, "log")


@pytest.mark.parametrize("num_steps", [1, 2, 10])
def test_karras_sigmas_run_from_sigma_max_to_sigma_min_then_zero(num_steps):
    """EDM, Eq. 5: (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then 0."""
    sigmas = karras_sigmas(0.002, 80.0, num_steps)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (num_steps + 1,)
    assert float(sigmas[0]) == pytest.approx(80.0, rel=1e-12) and float(sigmas[-1]) == 0.0
    if num_steps > 1:
        assert float(sigmas[-2]) == pytest.approx(0.002, rel=1e-12)
        assert bool((sigmas[1:] < sigmas[:-1]).all())
        i = torch.arange(num_steps, dtype=torch.float64)
        ramp = 80.0 ** (1 / 7) + i / (num_steps - 1) * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))
        torch.testing.assert_close(sigmas[:-1], ramp**7, rtol=1e-12, atol=0)


def test_make_sigmas_timesteps_and_karras_ranges():
    """``"timesteps"``: the model's levels at DDIM's timesteps (all T of them: Algorithm 2's); ``"karras"``: EDM's
    levels over the model's range cut to [0.002, 80]."""
    diffusion = GaussianDiffusion(make_betas("linear", 1000))  # levels 0.01 .. 157
    levels = model_sigmas(diffusion)
    torch.testing.assert_close(make_sigmas(diffusion, 1000, "timesteps")[:-1], levels.flip(0))
    torch.testing.assert_close(
        make_sigmas(diffusion, 10, "timesteps"), timestep_sigmas(diffusion, 10)
    )
    karras = make_sigmas(diffusion, 10, "karras")
    torch.testing.assert_close(karras, karras_sigmas(float(levels[0]), 80.0, 10))
    assert float(levels[0]) > EDM_SIGMA_MIN and float(levels[-1]) > EDM_SIGMA_MAX
