import math

import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.schedules import make_betas
from ddpm_lib.unet import UNet, UNetConfig


def _diffusion(T=1000, name="linear", **kw):
    return GaussianDiffusion(make_betas(name, T), **kw)


def test_buffers_float64_and_consistent():
    d = _diffusion()
    for name in [
        "betas",
        "alphas",
        "alphas_cumprod",
        "posterior_variance",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    ]:
        assert getattr(d, name).dtype == torch.float64 and getattr(d, name).shape == (1000,)
    assert torch.allclose(d.alphas_cumprod, torch.cumprod(1 - d.betas, 0))
    assert d.posterior_variance[0].item() == 0.0
    assert bool((d.posterior_variance[1:] < d.betas[1:]).all())  # tilde-beta_t < beta_t


def test_q_sample_matches_iterating_eq2():
    """Eq. 4 (closed form) against running Eq. 2 one step at a time, by moments over many draws."""
    d = _diffusion(T=200)
    n = 40000
    x0 = torch.tensor([0.8, -0.5, 0.0], dtype=torch.float64).repeat(n, 1)  # (n, 3)
    x = x0.clone()
    checkpoints = {0, 9, 49, 199}
    for t in range(200):
        beta = d.betas[t]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn_like(x)  # Eq. 2
        if t in checkpoints:
            closed = d.q_sample(x0, torch.full((n,), t))
            mean_expected = d.sqrt_alphas_cumprod[t] * x0[0]
            std_expected = d.sqrt_one_minus_alphas_cumprod[t].expand(3)
            for sample in (x, closed):
                assert torch.allclose(
                    sample.mean(0), mean_expected, atol=4 * std_expected.max() / math.sqrt(n)
                )
                assert torch.allclose(sample.std(0), std_expected, rtol=0.02)


def test_q_sample_exact_formula_and_dtype():
    d = _diffusion()
    x0 = torch.randn(4, 3, 8, 8)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    x_t = d.q_sample(x0, t, noise)
    assert x_t.dtype == torch.float32
    ab = d.alphas_cumprod[t].view(-1, 1, 1, 1)  # float64 reference
    assert torch.allclose(
        x_t.double(), ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double(), atol=1e-6
    )


def test_q_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), integrated numerically on a grid."""
    d = _diffusion(T=100)
    grid = torch.linspace(-6, 6, 200001, dtype=torch.float64)
    for t, x0v, xtv in [(1, 0.7, 0.1), (10, -0.3, 0.9), (50, 0.5, -1.2), (99, 0.0, 0.4)]:
        ab_prev = d.alphas_cumprod[t - 1]
        # log q(x_{t-1} | x_0), Eq. 4
        prior = -((grid - ab_prev.sqrt() * x0v) ** 2) / (2 * (1 - ab_prev))
        # log q(x_t | x_{t-1}), Eq. 2
        lik = -((xtv - d.alphas[t].sqrt() * grid) ** 2) / (2 * d.betas[t])
        w = torch.softmax(prior + lik, 0)
        mean_bayes = (w * grid).sum()
        var_bayes = (w * (grid - mean_bayes) ** 2).sum()
        x0 = torch.full((1, 1), x0v, dtype=torch.float64)
        xt = torch.full((1, 1), xtv, dtype=torch.float64)
        mean, var = d.q_posterior(x0, xt, t)
        assert mean.item() == pytest.approx(mean_bayes.item(), abs=1e-6)
        assert var.item() == pytest.approx(var_bayes.item(), rel=1e-4)


def test_predict_x0_inverts_q_sample():
    d = _diffusion()
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 400, 999])
    x_t = d.q_sample(x0, t, noise)
    assert torch.allclose(d.predict_x0_from_noise(x_t, t, noise), x0, atol=1e-8)
    assert torch.allclose(d.predict_noise_from_x0(x_t, t, x0), noise, atol=1e-8)


def test_sampler_visits_all_steps_in_order(oracle_cls):
    d = _diffusion(T=50)
    oracle = oracle_cls(d, 0.0, 0.5)
    d.sample(oracle, (2, 1, 2, 2), clip_denoised=False)
    assert oracle.calls == list(range(49, -1, -1))
    oracle.calls.clear()
    d.sample(oracle, (2, 1, 2, 2), sampler="ddim", num_steps=50)
    assert oracle.calls == list(range(49, -1, -1))
    assert d.ddim_timesteps(5) == [49, 37, 24, 12, 0]


def test_no_noise_added_at_last_step(oracle_cls):
    d = _diffusion(T=50)
    oracle = oracle_cls(d, 0.1, 0.5)
    x = torch.randn(4, 3, 2, 2)
    a = d.p_sample(oracle, x, 0, noise=torch.randn_like(x), clip_denoised=False)
    b = d.p_sample(oracle, x, 0, noise=100 * torch.randn_like(x), clip_denoised=False)
    assert torch.equal(a, b)
    c = d.p_sample(oracle, x, 1, noise=torch.randn_like(x), clip_denoised=False)
    e = d.p_sample(oracle, x, 1, noise=torch.randn_like(x), clip_denoised=False)
    assert not torch.equal(c, e)


def test_p_sample_mean_equals_eq11_without_clipping(oracle_cls):
    """The posterior mean at hat-x_0 equals Eq. 11: (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t)."""
    d = _diffusion()
    oracle = oracle_cls(d, 0.2, 0.6)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    for t in [1, 100, 999]:
        out = d.p_mean_variance(oracle, x, t, clip_denoised=False)
        eps = oracle(x, torch.full((5,), t))
        eq11 = (x - d.betas[t] / (1 - d.alphas_cumprod[t]).sqrt() * eps) / d.alphas[t].sqrt()
        assert torch.allclose(out["mean"], eq11, atol=1e-10)


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_eta1_all_steps_equals_ddpm(oracle_cls, clip):
    d = _diffusion(T=100, variance_type="fixed_small")
    oracle = oracle_cls(d, 0.2, 0.4)
    x_T = torch.randn(8, 1, 3, 3, dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    kw = dict(clip_denoised=clip, x_T=x_T)
    ddpm = d.sample(oracle, (8, 1, 3, 3), "ddpm", generator=g1, **kw)
    ddim = d.sample(oracle, (8, 1, 3, 3), "ddim", num_steps=100, eta=1.0, generator=g2, **kw)
    # x_T is given, so the generators drew the same per-step noise in the same order (float32 noise)
    assert torch.allclose(ddpm.double(), ddim.double(), atol=1e-5)


@pytest.mark.parametrize(
    "sampler, steps, eta, variance_type",
    [
        ("ddpm", None, 0.0, "fixed_small"),
        ("ddpm", None, 0.0, "fixed_large"),
        ("ddim", 1000, 0.0, "fixed_small"),
        ("ddim", 1000, 1.0, "fixed_small"),
        ("ddim", 250, 0.0, "fixed_small"),
    ],
)
def test_samplers_recover_gaussian_data(oracle_cls, sampler, steps, eta, variance_type):
    """With the analytically optimal eps for N(mu, s^2) data, samples must have that mean and std."""
    mu, s = 0.3, 0.25
    d = _diffusion(T=1000, variance_type=variance_type)
    oracle = oracle_cls(d, mu, s)
    g = torch.Generator().manual_seed(0)
    x = d.sample(
        oracle, (4000, 1, 2, 2), sampler, num_steps=steps, eta=eta, generator=g, clip_denoised=False
    )
    assert x.mean().item() == pytest.approx(mu, abs=0.01)
    assert x.std().item() == pytest.approx(s, rel=0.04)


def test_ddim_few_steps_error_shrinks_with_more_steps(oracle_cls):
    """Fewer DDIM steps under-disperse (discretisation error); the error falls as steps grow."""
    mu, s = 0.3, 0.25
    d = _diffusion(T=1000)
    oracle = oracle_cls(d, mu, s)
    errors = []
    for steps in [10, 50, 200]:
        x = d.sample(
            oracle,
            (4000, 1, 2, 2),
            "ddim",
            num_steps=steps,
            generator=torch.Generator().manual_seed(0),
            clip_denoised=False,
        )
        assert x.mean().item() == pytest.approx(mu, abs=0.01)
        errors.append(abs(x.std().item() - s))
    assert errors[0] > errors[1] > errors[2]


def test_training_loss_zero_for_perfect_model_and_types():
    d = _diffusion(T=100)
    x0 = torch.rand(4, 3, 4, 4) * 2 - 1
    t = torch.tensor([0, 5, 50, 99])
    noise = torch.randn_like(x0)
    perfect = lambda x_t, tt: noise  # noqa: E731
    for lt in ["mse", "l1", "huber"]:
        assert d.training_loss(perfect, x0, lt, t=t, noise=noise).item() == 0.0
    zero = lambda x_t, tt: torch.zeros_like(x_t)  # noqa: E731
    assert d.training_loss(zero, x0, "mse", t=t, noise=noise).item() == pytest.approx(
        (noise**2).mean().item()
    )
    assert d.training_loss(zero, x0, "l1", t=t, noise=noise).item() == pytest.approx(
        noise.abs().mean().item()
    )


def test_training_loss_draws_t_uniformly():
    d = _diffusion(T=10)
    seen = []
    model = lambda x_t, t: (seen.append(t.clone()), torch.zeros_like(x_t))[1]  # noqa: E731
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        d.training_loss(model, torch.zeros(64, 1, 1, 1), generator=g)
    counts = torch.bincount(torch.cat(seen), minlength=10)
    # 3200 draws, ~320 each, t = 0 and T-1 included
    assert counts.numel() == 10 and counts.min() > 200


def test_sample_restores_train_mode_and_uses_eval():
    model = UNet(
        UNetConfig(
            base_channels=8,
            channel_mults=(1,),
            num_res_blocks=1,
            attention_resolutions=(),
            num_groups=4,
            image_size=4,
        )
    )
    modes = []
    model.register_forward_pre_hook(lambda m, inp: modes.append(m.training))
    model.train()
    d = _diffusion(T=5)
    d.sample(model, (1, 3, 4, 4))
    assert modes == [False] * 5 and model.training
    assert all(p.grad is None for p in model.parameters())


def test_p_sample_keeps_no_graph():
    """A loop of p_sample calls must not build an autograd graph (it would grow by a U-Net's activations per step)."""
    model = UNet(
        UNetConfig(
            base_channels=8,
            channel_mults=(1,),
            num_res_blocks=1,
            attention_resolutions=(),
            num_groups=4,
            image_size=4,
        )
    )
    d = _diffusion(T=5)
    x = d.p_sample(model, torch.randn(1, 3, 4, 4), 3)
    assert not x.requires_grad and x.grad_fn is None
    x, _ = d.ddim_step(model, x, 3, 1, eta=1.0)
    assert x.grad_fn is None


def test_sample_seeded_and_progressive(oracle_cls):
    d = _diffusion(T=20)
    oracle = oracle_cls(d, 0.0, 0.5)
    a = d.sample(oracle, (2, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    steps = list(
        d.sample_progressive(oracle, (2, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    )
    assert torch.equal(a, steps[-1].x_prev.clamp(-1, 1))
    assert [s.t for s in steps] == list(range(19, -1, -1))
    # each step's output is the next one's input
    assert all(torch.equal(s.x_prev, nxt.x_t) for s, nxt in zip(steps, steps[1:]))
    assert steps[0].x_t.shape == steps[0].x0_pred.shape == (2, 3, 4, 4)
    assert a.min() >= -1 and a.max() <= 1
    assert torch.is_grad_enabled()  # no grad mode leaks out of the generator


def test_x_T_must_match_shape(oracle_cls):
    d = _diffusion(T=5)
    with pytest.raises(ValueError, match=r"x_T has shape \(1, 3, 4, 4\), expected \(2, 3, 4, 4\)"):
        d.sample(oracle_cls(d, 0.0, 0.5), (2, 3, 4, 4), x_T=torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda d, m, x: d.sample(m, x.shape, sampler="euler"), "valid choices: ddpm, ddim"),
        (lambda d, m, x: d.sample(m, x.shape, sampler="ddpm", num_steps=5), "use sampler='ddim'"),
        (lambda d, m, x: d.sample(m, x.shape, sampler="ddim", num_steps=0), "num_steps"),
        (lambda d, m, x: d.sample(m, x.shape, sampler="ddim", eta=-1.0), "eta"),
        (
            lambda d, m, x: d.sample(m, x.shape, sampler="ddim", eta=float("nan")),
            "eta must be a finite number",
        ),
        (
            lambda d, m, x: d.sample(m, x.shape, sampler="ddim", eta=1.5),
            "eta must be a finite number >= 0 and <= 1",
        ),
        (
            lambda d, m, x: d.sample(m, x.shape, sampler="ddim", num_steps=50),
            r"at most T=10\)? must be in \[1, 10\]",
        ),
        (lambda d, m, x: d.training_loss(m, (x + 1) * 127.5), r"must lie in \[-1, 1\]"),
        (lambda d, m, x: d.training_loss(m, x.to(torch.uint8)), "from_uint8"),
        (lambda d, m, x: d.training_loss(m, x, "l3"), "valid choices: mse, l1, huber"),
        (lambda d, m, x: d.q_sample(x, 10), r"t must lie in \[0, 9\]"),
        (lambda d, m, x: d.q_sample(x, torch.tensor([0.5, 1.0])), "integer"),
        (lambda d, m, x: d.q_sample(x, torch.tensor([0, 1, 2])), "shape"),
        (lambda d, m, x: d.p_sample(lambda a, b: a[:, :1], x, 3), "model returned shape"),
        (
            lambda d, m, x: GaussianDiffusion(d.betas, variance_type="learned"),
            "fixed_small, fixed_large",
        ),
        (lambda d, m, x: GaussianDiffusion(torch.tensor([0.1, 1.0])), r"\(0, 1\)"),
    ],
)
def test_bad_input(call, match):
    d = _diffusion(T=10)
    model = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    with pytest.raises(ValueError, match=match):
        call(d, model, torch.zeros(2, 3, 4, 4))


# ---------------------------------------------------------------- v-prediction and Min-SNR weighting
class _AsVelocity:
    """An eps model seen as a v model: v = (eps - sqrt(1 - bar-alpha_t) x_t) / sqrt(bar-alpha_t)."""

    def __init__(self, d, eps_model):
        self.d, self.eps_model = d, eps_model

    def __call__(self, x_t, t):
        ab = self.d.alphas_cumprod.to(x_t)[t].view(-1, *([1] * (x_t.dim() - 1)))
        return (self.eps_model(x_t, t) - (1 - ab).sqrt() * x_t) / ab.sqrt()


def test_velocity_and_eps_from_output_invert_each_other():
    d = _diffusion(T=1000, prediction_type="v_prediction")
    x0 = torch.rand(6, 3, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 10, 500, 900, 999])
    x_t = d.q_sample(x0, t, noise)
    v = d.velocity(x0, t, noise)
    torch.testing.assert_close(d.eps_from_output(x_t, t, v), noise, rtol=0, atol=1e-10)
    # Salimans & Ho, App. D: x_0 = sqrt(bar-alpha) x_t - sqrt(1 - bar-alpha) v
    ab = d.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(ab.sqrt() * x_t - (1 - ab).sqrt() * v, x0, rtol=0, atol=1e-10)
    # the identity for an eps model is the identity
    assert _diffusion(T=1000).eps_from_output(x_t, t, v) is v


@pytest.mark.parametrize(
    "sampler, steps, eta", [("ddpm", None, 0.0), ("ddim", 50, 0.0), ("ddim", 50, 1.0)]
)
def test_v_model_samples_match_the_same_eps_model(oracle_cls, sampler, steps, eta):
    """The same denoiser, asked for v instead of eps, gives the same samples from the same noise."""
    d_eps, d_v = _diffusion(T=1000), _diffusion(T=1000, prediction_type="v_prediction")
    oracle = oracle_cls(d_eps, 0.3, 0.25)
    kw = dict(sampler=sampler, num_steps=steps, eta=eta, clip_denoised=False)
    a = d_eps.sample(oracle, (500, 1, 2, 2), generator=torch.Generator().manual_seed(0), **kw)
    b = d_v.sample(
        _AsVelocity(d_eps, oracle), (500, 1, 2, 2), generator=torch.Generator().manual_seed(0), **kw
    )
    torch.testing.assert_close(b, a, rtol=0, atol=2e-4)
    # (DDIM-50 at eta 0 under-disperses: test_ddim_few_steps_error_shrinks_with_more_steps)
    if sampler == "ddpm":
        assert b.mean().item() == pytest.approx(0.3, abs=0.03) and b.std().item() == pytest.approx(
            0.25, rel=0.08
        )


def test_x0_output_gives_back_the_noise_and_its_loss_targets_x0():
    d = _diffusion(T=1000, prediction_type="sample")
    x0 = torch.rand(5, 3, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 900, 999])
    x_t = d.q_sample(x0, t, noise)
    torch.testing.assert_close(d.eps_from_output(x_t, t, x0), noise, rtol=0, atol=1e-8)
    perfect = lambda x_t, tt: x0  # noqa: E731
    assert d.training_loss(perfect, x0, t=t, noise=noise).item() == pytest.approx(0.0, abs=1e-12)
    # the noise is the wrong answer for an x_0 model
    assert d.training_loss(lambda x_t, tt: noise, x0, t=t, noise=noise).item() > 0.1


def test_v_loss_targets_velocity():
    d = _diffusion(T=100, prediction_type="v_prediction")
    x0 = torch.rand(4, 3, 4, 4) * 2 - 1
    t = torch.tensor([0, 5, 50, 99])
    noise = torch.randn_like(x0)
    perfect = lambda x_t, tt: d.velocity(x0, tt, noise)  # noqa: E731
    assert d.training_loss(perfect, x0, t=t, noise=noise).item() == pytest.approx(0.0, abs=1e-12)
    noise_pred = lambda x_t, tt: noise  # noqa: E731  (right for an eps model, wrong for a v model)
    assert d.training_loss(noise_pred, x0, t=t, noise=noise).item() > 0.01


@pytest.mark.parametrize("gamma", [0.5, 5.0, 1e9])
def test_min_snr_weights_an_x0_error_the_same_for_eps_v_and_x0(gamma):
    """Hang et al. 2023: for one x_0 estimate, the eps, v and x_0 losses under Min-SNR-gamma all equal
    mean_t min(SNR_t, gamma) * |x_0 - hat-x_0|^2, so the weighting is the same whatever is predicted."""
    d_eps, d_v = _diffusion(T=1000), _diffusion(T=1000, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([3, 100, 300, 600, 950])
    ab = d_eps.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = d_eps.q_sample(x0, t, noise)
    eps_hat = d_eps.predict_noise_from_x0(x_t, t, x0_hat)
    v_hat = ab.sqrt() * eps_hat - (1 - ab).sqrt() * x0_hat
    snr = ab / (1 - ab)
    expected = (
        (snr.clamp(max=gamma).flatten() * (x0_hat - x0).pow(2).flatten(1).mean(1)).mean().item()
    )
    loss_eps = d_eps.training_loss(
        lambda x, tt: eps_hat, x0, t=t, noise=noise, snr_gamma=gamma
    ).item()
    loss_v = d_v.training_loss(lambda x, tt: v_hat, x0, t=t, noise=noise, snr_gamma=gamma).item()
    d_x0 = _diffusion(T=1000, prediction_type="sample")
    loss_x0 = d_x0.training_loss(lambda x, tt: x0_hat, x0, t=t, noise=noise, snr_gamma=gamma).item()
    # the flow velocity u = eps - x_0 of the same estimate, on the same process
    d_flow = _diffusion(T=1000, prediction_type="flow")
    u_hat = eps_hat - x0_hat
    loss_flow = d_flow.training_loss(
        lambda x, tt: u_hat, x0, t=t, noise=noise, snr_gamma=gamma
    ).item()
    for loss in (loss_eps, loss_v, loss_x0, loss_flow):
        assert loss == pytest.approx(expected, rel=1e-5)
    if gamma == 1e9:  # no clipping: the eps loss is L_simple itself
        assert loss_eps == pytest.approx(
            d_eps.training_loss(lambda x, tt: eps_hat, x0, t=t, noise=noise).item(), rel=1e-5
        )


def test_prediction_type_and_snr_gamma_are_checked():
    with pytest.raises(ValueError, match="prediction_type"):
        _diffusion(T=10, prediction_type="x0")
    d = _diffusion(T=10)
    with pytest.raises(ValueError, match="snr_gamma"):
        d.training_loss(lambda x, t: x, torch.zeros(2, 3, 4, 4), snr_gamma=0.0)


def test_rectified_flow_schedule_is_the_straight_path_rescaled():
    """make_betas("rectified_flow") is x_s = (1 - s) x_0 + s eps with s = (t + 1) / (T + 1), divided by
    sqrt((1 - s)^2 + s^2): its SNR is ((1 - s) / s)^2 and q_sample times the norm is the straight path."""
    T = 200
    d = GaussianDiffusion(make_betas("rectified_flow", T), prediction_type="flow")
    s = torch.arange(1, T + 1, dtype=torch.float64) / (T + 1)
    torch.testing.assert_close(d.snr(torch.arange(T)), ((1 - s) / s) ** 2, rtol=1e-9, atol=0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 50, 120, T - 1])
    st = s[t].view(-1, 1, 1, 1)
    straight = (1 - st) * x0 + st * noise
    norm = ((1 - st) ** 2 + st**2).sqrt()
    torch.testing.assert_close(d.q_sample(x0, t, noise) * norm, straight, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("schedule", ["rectified_flow", "cosine"])
def test_flow_output_converts_to_the_noise_and_its_loss_targets_eps_minus_x0(schedule):
    """prediction_type "flow": the exact velocity u = eps - x_0 gives back eps (eps_from_output) and a
    zero loss; any other output does not."""
    d = GaussianDiffusion(make_betas(schedule, 100), prediction_type="flow")
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 30, 70, 99])
    x_t = d.q_sample(x0, t, noise)
    torch.testing.assert_close(d.eps_from_output(x_t, t, noise - x0), noise, rtol=0, atol=1e-9)
    exact = lambda x, tt: noise - x0  # noqa: E731
    assert d.training_loss(exact, x0, t=t, noise=noise).item() == pytest.approx(0.0, abs=1e-12)
    assert d.training_loss(lambda x, tt: noise, x0, t=t, noise=noise).item() > 0.1
