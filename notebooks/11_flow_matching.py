# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11 · Flow matching: the same model under another schedule and weighting
#
# **Goal.** Flow matching (Lipman et al. 2023) and rectified flow (Liu et al. 2023) train a network to output a
# *velocity* and sample by integrating it, and they are what many image models of 2024-2026 use (Esser et al. 2024).
# They look like a new family. This notebook shows, with the library of notebooks 01-10 and numbers, that they are a
# diffusion model with three choices made differently: **where the noise levels lie** (a schedule), **what the network
# outputs** (a parameterisation) and **how the loss weighs the levels** (a weighting). Then it trains one on the
# course's cars for the same CPU minutes as the DDPM recipe and asks which wins, with error bars.
#
# **You will:** write the straight path as a schedule of notebook 01; derive the velocity, and its conversions to
# $x_0$, $\epsilon$, $v$ and the score, and check each against a 2-D mixture whose answers are exact; check that
# Euler's method on the flow ODE is DDIM (notebook 06) step for step; see where each objective spends its effort; train
# a flow and a noise-predicting network on the 2-D mixture in seconds, draw their fields beside the exact ones, and
# sample each with the other's sampler; read the equal-minutes comparison on the cars.
#
# **Time runs the library's way.** Here $s$ goes from data ($s = 0$) to noise ($s = 1$), as the library's $t$ and
# rectified flow's papers do (Liu et al. 2023; Esser et al. 2024). Lipman et al. 2023 and much flow-matching code put
# *noise* at $t = 0$ and data at $t = 1$: their $t$ is our $1 - s$, and their velocity our $-u$.
#
# **It builds on** notebook 10 (noise levels $\sigma$, the denoiser $D(x, \sigma)$, the probability-flow ODE, the
# sampler family) and notebook 07 (the metrics). Notebook 12 (debugging) comes next.

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from ddpm_lib.checkpoints import FLOW_MODEL, load_checkpoint, load_ema_model
from ddpm_lib.checks import env_flag
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.model_card import recipe_summary
from ddpm_lib.plotting import show_grids
from ddpm_lib.samplers import SAMPLERS, Denoiser, karras_sigmas, model_sigmas, timestep_sigmas
from ddpm_lib.sampling import generate
from ddpm_lib.schedules import alphas_cumprod_from_betas, log_snr, make_betas
from ddpm_lib.toy2d import ring, train_2d

FAST = env_flag("DDPM_FAST")
STEPS_2D = 300 if FAST else 3000  # Adam steps of each 2-D network (section 4)
N_POINTS = 1000 if FAST else 4000  # points each trained 2-D network draws (section 5)
N_EXACT = 4000  # points of the exact computations (sections 3 and 4): cheap, the same in both modes
N_GRID = 2 if FAST else 16  # car images per grid (section 6)
BENCHMARK = Path("../benchmarks/samplers.json")
T = 500  # the timesteps of every schedule below, as the shipped models have

mix = (
    ring()
)  # eight Gaussian blobs of std 0.05 on a circle of radius 0.7: exact denoiser, score, velocity
print(f"data: {len(mix.means)} blobs, std {mix.std}, in [-1, 1]; {'fast' if FAST else 'full'} mode")

# %% [markdown]
# ## 1. The straight path is a noise schedule
#
# Flow matching's path mixes an image and noise *linearly*,
#
# $$x_s = (1 - s)\,x_0 + s\,\epsilon, \qquad s \in [0, 1],$$
#
# where DDPM's (Ho et al. 2020, Eq. 4) keeps the variance at one: $x_t = \sqrt{\bar\alpha_t}\,x_0 +
# \sqrt{1-\bar\alpha_t}\,\epsilon$. Both are a scaled copy of $x_0 + \sigma\epsilon$ (notebook 10): divide $x_s$ by
# $1 - s$ and $\sigma = s / (1 - s)$; divide by $\sqrt{(1-s)^2 + s^2}$ instead and you have a DDPM $x_t$ with
#
# $$\bar\alpha(s) = \frac{(1-s)^2}{(1-s)^2 + s^2}.$$
#
# So the straight path is one more schedule of notebook 01, `"rectified_flow"`, with $s_t = (t + 1)/(T + 1)$ for
# $t = 0 \dots T-1$ (the ends $s = 0$ and $s = 1$ are left out, as every schedule leaves out $\bar\alpha = 1$ and 0).
# The next cell checks the library's schedule against these formulas.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
flow_diffusion = GaussianDiffusion(make_betas("rectified_flow", T), prediction_type="flow")
s_t = torch.arange(1, T + 1, dtype=torch.float64) / (T + 1)  # (T,)
alpha_bar = (1 - s_t) ** 2 / ((1 - s_t) ** 2 + s_t**2)
err_ab = (flow_diffusion.alphas_cumprod - alpha_bar).abs().max().item()
err_sigma = (model_sigmas(flow_diffusion) / (s_t / (1 - s_t)) - 1).abs().max().item()
print(f"bar-alpha_t = (1-s)^2 / ((1-s)^2 + s^2) for all {T} steps: {err_ab < 1e-12}")
print(f"sigma_t = s / (1 - s) for all {T} steps: {err_sigma < 1e-9}")
print(
    f"levels from sigma = {model_sigmas(flow_diffusion)[0]:.5f} to {model_sigmas(flow_diffusion)[-1]:.1f}"
)

# %% [markdown]
# Where the schedules put their levels: the log signal-to-noise ratio $\lambda = \log(\bar\alpha/(1-\bar\alpha)) =
# -2\log\sigma$ against $t/T$. The straight path is $\lambda(s) = 2\log((1-s)/s)$, a logit: it crosses $\lambda = 0$
# in the middle of the run and, like the cosine schedule (Nichol & Dhariwal 2021), spends fewer steps than the
# paper's linear schedule on levels where the image is already lost.

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
for name in ("linear", "cosine", "rectified_flow"):
    lam = log_snr(make_betas(name, T))
    ax.plot(np.arange(T) / T, lam.numpy(), label=name)
ax.axhline(0, color="k", lw=0.5)
ax.set_xlabel("t / T (data 0, noise 1)")
ax.set_ylabel(r"log-SNR $\lambda_t$")
ax.set_title(f"three schedules, T = {T}")
ax.legend()
ax.grid(alpha=0.3)

# %% [markdown]
# ## 2. The velocity and its conversions, derived once and checked exactly
#
# Along one path the velocity is $\frac{d x_s}{d s} = \epsilon - x_0$. A network cannot know the $x_0$ and
# $\epsilon$ behind a given $x_s$; trained with the squared error to $u = \epsilon - x_0$ it learns their
# conditional mean, the **marginal velocity** $u(x, s) = \mathbb{E}[\epsilon - x_0 \mid x_s = x]$ (Lipman et al.
# 2023, Theorem 2). Write $\hat x_0 = \mathbb{E}[x_0 \mid x_s]$ (notebook 10's denoiser, at $x_s/(1-s)$ and
# $\sigma = s/(1-s)$) and $\hat\epsilon = \mathbb{E}[\epsilon \mid x_s]$. Taking the mean of $x_s = (1-s)x_0 + s\epsilon$
# given $x_s$ gives $x_s = (1-s)\hat x_0 + s\hat\epsilon$, so every prediction is every other:
#
# $$u = \hat\epsilon - \hat x_0 = \frac{x_s - \hat x_0}{s}, \qquad \hat\epsilon = x_s + (1-s)\,u, \qquad
# \hat x_0 = x_s - s\,u, \qquad \nabla_{x_s}\log p_s(x_s) = -\frac{\hat\epsilon}{s},$$
#
# the last by Tweedie's formula (Efron 2011), and the $v$ of notebook 08 (Salimans & Ho 2022) is
# $v = \sqrt{\bar\alpha}\,\hat\epsilon - \sqrt{1-\bar\alpha}\,\hat x_0$. On the 2-D mixture the library knows
# $\hat x_0$, the score and $u$ in closed form (`ddpm_lib.toy2d`, each tested against Monte Carlo). The next cell checks
# the conversions against them at three times, on points drawn from the noisy data itself.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
g = torch.Generator().manual_seed(0)
worst = {"u from x0": 0.0, "eps from u": 0.0, "score from eps": 0.0}
for s in (0.1, 0.5, 0.9):
    x_s = (1 - s) * mix.sample(2000, g, torch.float64) + s * torch.randn(
        2000, 2, generator=g, dtype=torch.float64
    )
    sigma = s / (1 - s)
    x0_hat = mix.denoise(x_s / (1 - s), sigma)
    eps_hat = (x_s - (1 - s) * x0_hat) / s
    u = mix.velocity(x_s, s)
    score = mix.score(x_s / (1 - s), sigma) / (
        1 - s
    )  # the density of x_s is that of x_s / (1 - s), rescaled
    worst["u from x0"] = max(worst["u from x0"], ((x_s - x0_hat) / s - u).abs().max().item())
    worst["eps from u"] = max(worst["eps from u"], (x_s + (1 - s) * u - eps_hat).abs().max().item())
    worst["score from eps"] = max(
        worst["score from eps"], (-eps_hat / s - score).abs().max().item()
    )
for name, err in worst.items():
    print(f"{name:15s} exact to float64 rounding: {err < 1e-9}")

# %% [markdown]
# The library turns each output into $\epsilon$ in one place, `GaussianDiffusion.eps_from_output` (for `"flow"`:
# $\epsilon = (x_t + \sqrt{\bar\alpha}\,u)/(\sqrt{\bar\alpha} + \sqrt{1-\bar\alpha})$, the second formula above in DDPM
# units), and the samplers' `Denoiser` turns each into $\hat x_0$. Feed both the *exact* target of each
# parameterisation at three timesteps of the straight path, and all four must give the same $\hat\epsilon$ and
# $\hat x_0$: a trained model of any kind runs under any sampler.


# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
def exact_targets(x_t, t, diffusion):
    """Exact eps, x0 and each network's target at DDPM-unit points x_t (n, 2) at integer timestep t."""
    ab = diffusion.alphas_cumprod[t]
    sigma = ((1 - ab) / ab).sqrt().item()
    x0 = mix.denoise(x_t / ab.sqrt(), sigma)
    eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    return eps, x0, {"epsilon": eps, "v_prediction": v, "sample": x0, "flow": eps - x0}


betas = make_betas("rectified_flow", T)
ok = True
for t in (49, 249, 449):
    ab = flow_diffusion.alphas_cumprod[t]
    x_t = ab.sqrt() * mix.sample(500, g, torch.float64) + (1 - ab).sqrt() * torch.randn(
        500, 2, generator=g, dtype=torch.float64
    )
    eps, x0, targets = exact_targets(x_t, t, flow_diffusion)
    sigma = ((1 - ab) / ab).sqrt().item()
    for kind, target in targets.items():
        diffusion_k = GaussianDiffusion(betas, prediction_type=kind)
        eps_k = diffusion_k.eps_from_output(x_t, t, target)
        denoiser = Denoiser(lambda x, tt, out=target: out, diffusion_k, clip_denoised=False)
        x0_k = denoiser(
            x_t / ab.sqrt(), sigma
        )  # the Denoiser feeds the network x_t itself: it returns target
        ok &= torch.allclose(eps_k, eps, atol=1e-9) and torch.allclose(x0_k, x0, atol=1e-9)
print("epsilon, v, x0 and flow targets give the same eps and x0 at t = 49, 249, 449:", ok)

# %% [markdown]
# ## 3. Euler on the flow ODE is DDIM
#
# Sampling a flow model integrates $dx_s/ds = u(x_s, s)$ from $s = 1$ (noise) to 0, most simply by Euler's method,
# $x_{s'} = x_s + (s' - s)\,u$. Put $u = \hat\epsilon - \hat x_0$ and $x_s = (1-s)\hat x_0 + s\hat\epsilon$ in it:
#
# $$x_{s'} = (1-s)\hat x_0 + s\hat\epsilon + (s' - s)(\hat\epsilon - \hat x_0) = (1 - s')\,\hat x_0 + s'\,\hat\epsilon,$$
#
# which is DDIM's $\eta = 0$ step (Song et al. 2021a, Eq. 12): keep $\hat x_0$, re-noise with $\hat\epsilon$ at the next
# level. Notebook 10 showed that DDIM is Euler on the probability-flow ODE in $\sigma$; so **the flow's Euler sampler,
# DDIM and Euler in $\sigma$ are one method** on one ODE, in three coordinates (Gao et al. 2024, "Diffusion meets flow
# matching", say the same). The next cell runs ten steps of each with the exact velocity and denoiser of the mixture:
# a hand-written loop in $s$, the library's `sample_euler` on the levels $\sigma = s/(1-s)$, and its `sample_ddim`.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
s_levels = torch.linspace(
    T / (T + 1), 0, 11, dtype=torch.float64
)  # 10 steps, even in s, from the top level
z = torch.randn(N_EXACT, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

x = (
    z * s_levels[0]
)  # x_s at the top: all noise, scaled by s ((1 - s) x_0 is ~0.002 x_0: negligible)
for s, s_next in zip(s_levels[:-1], s_levels[1:]):
    x = x + (s_next - s) * mix.velocity(x, float(s))  # Euler in s
flow_euler = x

sigmas = s_levels / (1 - s_levels)  # the same levels as noise levels; the last is 0
x_T = z * s_levels[0] / (1 - s_levels[0])  # the same start in x_0 + sigma eps units
by_euler = SAMPLERS["euler"](mix.denoise, x_T, sigmas)
by_ddim = SAMPLERS["ddim"](mix.denoise, x_T, sigmas, eta=0.0)
print(
    f"flow Euler in s vs Euler in sigma: same points to 1e-9: {torch.allclose(flow_euler, by_euler, atol=1e-9)}"
)
print(
    f"flow Euler in s vs DDIM, eta = 0:  same points to 1e-9: {torch.allclose(flow_euler, by_ddim, atol=1e-9)}"
)

# %% [markdown]
# **Straight in which coordinates?** One image's path $x_s = (1-s)x_0 + s\epsilon$ is a straight line, where the same
# path in DDPM's units, $\sqrt{\bar\alpha}x_0 + \sqrt{1-\bar\alpha}\epsilon$, is an arc. But in notebook 10's units
# $x_0 + \sigma\epsilon$ it is straight too, and that is where DDIM takes its steps: the straight path gives DDIM
# nothing it did not have. What the *marginal* flow looks like, averaged over all the images a point could come from,
# the figure shows: exact solutions of the ODE (400 Euler steps) from 24 starting points, drawn in the flow's
# coordinates and in DDPM's. The cell prints how straight they are: the distance from start to end over the length of
# the path (1 is a straight line).


# %%
def solve(denoiser, x_T, sigmas):
    """The sampler's states (N + 1, n, 2) in x_0 + sigma eps units, by the callback."""
    states = [x_T]
    SAMPLERS["euler"](denoiser, x_T, sigmas, callback=lambda step: states.append(step.x_next))
    return torch.stack(states), sigmas


def straightness(path):
    """|end - start| / length of each path (N + 1, n, 2), averaged over the n paths."""
    length = (path[1:] - path[:-1]).norm(dim=-1).sum(0)
    return ((path[-1] - path[0]).norm(dim=-1) / length).mean().item()


fine = torch.linspace(T / (T + 1), 0, 401, dtype=torch.float64)
ve_path, sig = solve(mix.denoise, z[:24] * fine[0] / (1 - fine[0]), fine / (1 - fine))
units = {  # x_0 + sigma eps rescaled: the flow's x_s and DDPM's x_t
    "flow: (1-s) x_0 + s eps": ve_path / (1 + sig)[:, None, None],
    "DDPM: sqrt(ab) x_0 + sqrt(1-ab) eps": ve_path / (1 + sig**2).sqrt()[:, None, None],
}
fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
for ax, (title, path) in zip(axes, units.items()):
    ax.plot(path[:, :, 0].numpy(), path[:, :, 1].numpy(), lw=0.8, color="C0")
    ax.plot(path[0, :, 0].numpy(), path[0, :, 1].numpy(), "k.", ms=3)
    ax.plot(mix.means[:, 0].numpy(), mix.means[:, 1].numpy(), "r+", ms=9)
    ax.set_title(f"{title}\nstraightness {straightness(path):.3f}", fontsize=9)
    ax.set_aspect("equal")
fig.suptitle(
    "exact probability-flow ODE from 24 noise points (dots) to the data (crosses)", fontsize=10
)
fig.tight_layout()
for title, path in units.items():
    print(f"{title:38s} straightness {straightness(path):.3f}")

# %% [markdown]
# Neither is a straight line: a point that starts between two blobs bends toward the one it ends in, whatever the
# coordinates. Only each single image's path is straight. Liu et al. (2023) straighten the marginal flow itself by
# "reflow", retraining on the model's own (noise, image) pairs; this course does not.

# %% [markdown]
# ## 4. What does differ: where the levels lie and how the loss weighs them
#
# **The levels.** With the same Euler/DDIM step, a sampler differs only in the levels it visits. Flow models use
# levels even in $s$; DDPMs the model's timesteps; EDM Karras's $\rho = 7$ spacing. With the *exact* denoiser there
# is no model error, so the next cell measures the levels alone: 10, 4 and 2 Euler steps on each list, scored by the
# share of points that land more than $3\tau$ from every blob (for exact samples $e^{-9/2} = 1.1\%$ in theory; the cell
# prints a draw of them).


# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
def off_ring(points):
    """The share of points (n, 2) farther than 3 std from every blob's centre."""
    return (
        (torch.cdist(points.double(), mix.means).min(1).values > 3 * mix.std).double().mean().item()
    )


cosine = GaussianDiffusion(make_betas("cosine", T))


def level_lists(n):
    even_s = torch.linspace(T / (T + 1), 0, n + 1, dtype=torch.float64)
    return {
        "even in s (flow)": even_s / (1 - even_s),
        "cosine timesteps (DDIM)": timestep_sigmas(cosine, n),
        "Karras rho = 7 (EDM)": karras_sigmas(0.002, 80.0, n),
    }


exact = mix.sample(N_EXACT, torch.Generator().manual_seed(2))
print(f"exact samples: {off_ring(exact):6.1%} off the ring")
print(f"{'levels':26s} {'10 steps':>9s} {'4 steps':>9s} {'2 steps':>9s}")
for name in level_lists(2):
    row = [
        off_ring(SAMPLERS["euler"](mix.denoise, z * level_lists(n)[name][0], level_lists(n)[name]))
        for n in (10, 4, 2)
    ]
    print(f"{name:26s} " + " ".join(f"{r:9.1%}" for r in row))

# %% [markdown]
# **The weighting.** Every objective of the course is a squared error on $x_0$ in disguise, weighted per level
# (notebook 08): the $\epsilon$ error is $\mathrm{SNR}$ times the $x_0$ error, $v$'s is $\mathrm{SNR} + 1$, Min-SNR-5
# caps it at 5, and since $u - \hat u = (\hat x_0 - x_0)/s$ with $1/s = 1 + \sqrt{\mathrm{SNR}}$, the flow's is
# $(1 + \sqrt{\mathrm{SNR}})^2$. Training draws $t$ uniformly, so a schedule also sets *how often* each level is seen.
# Together: the effort the loss spends per unit of log-SNR, $w(\lambda)\,p(\lambda)$, with $p(\lambda) \propto
# |dt/d\lambda|$. Kingma & Gao (2023) compare objectives this way and find flow matching's close to $v$-prediction on
# a cosine schedule; the figure shows the three recipes of this course (each curve scaled to a peak of 1).

# %%
recipes = {  # name: (schedule, weight on the x_0 error as a function of SNR)
    "DDPM: linear, eps": ("linear", lambda snr: snr),
    "shipped: cosine, v + Min-SNR-5": ("cosine", lambda snr: snr.clamp(max=5.0)),
    "flow: rectified_flow, u": ("rectified_flow", lambda snr: (1 + snr.sqrt()) ** 2),
}
fig, ax = plt.subplots(figsize=(7, 3.6))
for name, (schedule, weight) in recipes.items():
    betas = make_betas(schedule, T)
    ab, lam = alphas_cumprod_from_betas(betas), log_snr(betas)
    density = 1 / np.gradient(-lam.numpy())  # dt / d(lambda): steps per unit of log-SNR
    effort = weight(ab / (1 - ab)).numpy() * density
    ax.plot(lam.numpy(), effort / effort.max(), label=name)
ax.set_xlim(-12, 12)
ax.set_xlabel(r"log-SNR $\lambda$ (noise on the left)")
ax.set_ylabel(r"$w(\lambda)\,p(\lambda)$, peak 1")
ax.set_title("where each objective spends its effort")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)

# %% [markdown]
# ## 5. A 2-D warm-up: learned fields and samplers swapped
#
# Two small networks (`toy2d.MLP`, three hidden layers of 128) learn the mixture with the library's own loss,
# `GaussianDiffusion.training_loss`, as the U-Net learns cars: one a **flow model** (straight path, velocity target,
# no Min-SNR) and one a **DDPM** (cosine schedule, $\epsilon$ target). The cell prints how long each took.

# %%
ddpm_diffusion = GaussianDiffusion(make_betas("cosine", T), prediction_type="epsilon")
nets = {}
for name, diffusion in (("flow", flow_diffusion), ("ddpm", ddpm_diffusion)):
    start = time.perf_counter()
    net, losses = train_2d(diffusion, mix, steps=STEPS_2D, lr=3e-3, seed=0)
    nets[name] = (net, diffusion)
    print(
        f"{name}: {STEPS_2D} steps in {time.perf_counter() - start:.1f} s, "
        f"loss {np.mean(losses[:50]):.3f} -> {np.mean(losses[-50:]):.3f}"
    )

# %% [markdown]
# **The learned velocity and score against the exact ones**, at $s = 0.3$ (the flow network's $t = 149$), on a grid.
# The flow network outputs $u$; its score is $-\hat\epsilon/s$ with $\hat\epsilon = x_s + (1-s)u$ (section 2). The
# cell prints the error of each field where the noisy data lies: $\mathbb{E}|f_\theta - f|^2 / \mathbb{E}|f|^2$ over
# points drawn from $p_s$.

# %%
flow_net = nets["flow"][0]
t = 149
s = float(s_t[t])
axis = torch.linspace(-1.2, 1.2, 17, dtype=torch.float64)
grid = torch.cartesian_prod(axis, axis)  # (289, 2)
with torch.no_grad():
    u_learned = flow_net(grid.float(), torch.full((len(grid),), t)).double()
score_learned = -(grid + (1 - s) * u_learned) / s
fields = {
    "exact velocity u": mix.velocity(grid, s),
    "learned velocity": u_learned,
    "exact score": mix.score(grid / (1 - s), s / (1 - s)) / (1 - s),
    "learned score (from u)": score_learned,
}
fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
for ax, (title, field) in zip(axes, fields.items()):
    ax.quiver(
        grid[:, 0], grid[:, 1], field[:, 0], field[:, 1], color="C1" if "learned" in title else "C0"
    )
    ax.plot(mix.means[:, 0] * (1 - s), mix.means[:, 1] * (1 - s), "r+", ms=8)
    ax.set_title(f"{title}, s = {s:.2f}", fontsize=9)
    ax.set_aspect("equal")
fig.tight_layout()

x_s = (1 - s) * mix.sample(N_POINTS, g, torch.float64) + s * torch.randn(
    N_POINTS, 2, generator=g, dtype=torch.float64
)
with torch.no_grad():
    u_at = flow_net(x_s.float(), torch.full((N_POINTS,), t)).double()
exact_u = mix.velocity(x_s, s)
exact_score = mix.score(x_s / (1 - s), s / (1 - s)) / (1 - s)
for name, learned, true in (
    ("velocity", u_at, exact_u),
    ("score", -(x_s + (1 - s) * u_at) / s, exact_score),
):
    rel = ((learned - true) ** 2).sum(1).mean() / (true**2).sum(1).mean()
    print(f"learned {name:8s}: relative squared error {rel.item():.3f} where the noisy data lies")

# %% [markdown]
# **Each network under each sampler.** The `Denoiser` of notebook 10 turns the flow network's $u$ and the DDPM's
# $\epsilon$ into $\hat x_0$, so both run under every sampler: Euler (the flow's own sampler, section 3), DPM-Solver++(2M)
# (an ODE solver derived for noise predictors) and stochastic DDIM ($\eta = 1$, DDPM's ancestral kind), 10 network
# evaluations each, on levels even in $s$ for the flow network and on its timesteps for the DDPM; the mixture's exact
# denoiser on the flow's levels is the row to aim at (its only error is the samplers' own). The math says every
# pairing is valid; the table says how well each does.

# %%
RUNS = {"euler": {}, "dpmpp_2m": {}, "ddim eta=1": {"eta": 1.0}}
even_s = level_lists(10)["even in s (flow)"]
denoisers = {  # name: (denoiser, its 10 levels)
    "exact": (mix.denoise, even_s),
    "flow": (Denoiser(*nets["flow"]), even_s),  # x_0 clipped to [-1, 1], as for images
    "ddpm": (Denoiser(*nets["ddpm"]), timestep_sigmas(nets["ddpm"][1], 10)),
}
samples = {}
print(f"{'denoiser':8s} " + " ".join(f"{name:>12s}" for name in RUNS) + "   (share off the ring)")
for name, (denoiser, levels) in denoisers.items():
    row = []
    for run, options in RUNS.items():
        x_T = (z[:N_POINTS] * levels[0]).float()
        g3 = torch.Generator().manual_seed(3)
        x = SAMPLERS[run.split()[0]](denoiser, x_T, levels, generator=g3, **options)
        samples[name, run] = x
        row.append(off_ring(x))
    print(f"{name:8s} " + " ".join(f"{r:12.0%}" for r in row))

# %%
fig, axes = plt.subplots(3, 3, figsize=(10, 10))
for ax, ((name, run), x) in zip(axes.flat, samples.items()):
    ax.plot(x[:, 0].numpy(), x[:, 1].numpy(), ".", ms=1, alpha=0.4)
    ax.plot(mix.means[:, 0].numpy(), mix.means[:, 1].numpy(), "r+", ms=8)
    ax.set_title(f"{name} denoiser, {run}, 10 NFE", fontsize=9)
    ax.set_xlim(-1.1, 1.1)
    ax.set_ylim(-1.1, 1.1)
    ax.set_aspect("equal")
fig.tight_layout()

# %% [markdown]
# ## 6. On the cars, at equal CPU minutes
#
# `FLOW_MODEL` is the course's U-Net trained with the flow objective (`python -m ddpm_lib.train --preset flow`) for
# the step count that the DDPM CPU recipe (`--preset cpu`, the shipped model's recipe) takes in 15 CPU minutes;
# the same network, batch, optimiser and EMA: only the schedule, the target and the weighting differ. The DDPM
# partner is the same recipe stopped at the same step. `benchmarks/samplers.py` scored both with the same samplers
# at the same network evaluations, from the same seed, with notebook 07's metrics and bootstrap spreads; the next
# cell prints its table (it reads `benchmarks/samplers.json`; see its docstring for the commands).

# %%
flow_model, flow_diffusion_cars, flow_cfg = load_ema_model(FLOW_MODEL)
print(f"FLOW_MODEL: {recipe_summary(flow_cfg)}; {load_checkpoint(FLOW_MODEL).get('step')} steps")


def load_benchmark(path=BENCHMARK):
    """benchmarks/samplers.json with the two equal-minute models, or an error that says how to make it."""
    bench = json.loads(path.read_text()) if path.exists() else {}
    missing = [m for m in ("flow-708", "cpu-708") if m not in bench.get("models", {})]
    if missing:
        raise FileNotFoundError(
            f"{path} lacks {', '.join(missing)}: run benchmarks/samplers.py with --grid equal-minutes for each "
            "(the commands are in its docstring), then run this notebook again"
        )
    return bench


bench = load_benchmark()
flow_runs = {(r["label"], r["nfe"]): r for r in bench["models"]["flow-708"]["runs"]}
ddpm_runs = {(r["label"], r["nfe"]): r for r in bench["models"]["cpu-708"]["runs"]}
print(
    f"{bench['settings']['num_samples']} samples per row against {bench['settings']['num_reference']:,} training "
    f"images, {bench['settings']['bootstrap']} bootstrap resamples; {bench['machine']}"
)
print(
    f"{'sampler':20s} {'NFE':>3s} {'flow FID':>14s} {'DDPM FID':>14s} {'flow P / R':>12s} {'DDPM P / R':>12s}  lower FID"
)
wins = {"flow": 0, "DDPM": 0, "tie": 0}
for key in sorted(flow_runs.keys() & ddpm_runs.keys()):
    f, d = flow_runs[key], ddpm_runs[key]
    margin = f["fid_std"] + d["fid_std"]
    winner = (
        "flow"
        if f["fid"] < d["fid"] - margin
        else "DDPM"
        if d["fid"] < f["fid"] - margin
        else "tie"
    )
    wins[winner] += 1
    print(
        f"{key[0]:20s} {key[1]:3d} {f['fid']:7.2f} ± {f['fid_std']:4.2f} {d['fid']:7.2f} ± {d['fid_std']:4.2f} "
        f"{f['precision']:5.2f} / {f['recall']:4.2f} {d['precision']:5.2f} / {d['recall']:4.2f}  {winner}"
    )
print(f"rows won (FID lower by more than the two spreads together): {wins}")

# %% [markdown]
# Samples of the flow model from one seed: its own Euler sampler at 10 evaluations, DPM-Solver++(2M) at 10, and
# stochastic DDIM at 20 (the DDPM sampler a flow model can use because its $u$ converts to $\hat\epsilon$).

# %%
grids = {}
for title, sampler, steps, eta in (
    ("Euler", "euler", 10, 0.0),
    ("DPM-Solver++(2M)", "dpmpp_2m", 10, 0.0),
    ("DDIM eta=1", "ddim", 20, 1.0),
):
    out = generate(
        flow_model,
        flow_diffusion_cars,
        N_GRID,
        32,
        sampler=sampler,
        num_steps=steps,
        eta=eta,
        seed=0,
        precision="fp32",
    )
    grids[f"{title}: {out.num_steps} NFE"] = out.images
    print(f"{title:18s} {out.num_steps:2d} NFE, {out.seconds:.1f} s for {N_GRID} images")
show_grids(grids, nrow=4, scale=1.0)
# %% [markdown]
# ## Summary
#
# - The straight path $x_s = (1-s)x_0 + s\epsilon$ is a noise schedule, $\bar\alpha = (1-s)^2/((1-s)^2+s^2)$ or
#   $\sigma = s/(1-s)$: the library's `"rectified_flow"` (section 1).
# - The velocity $u = \hat\epsilon - \hat x_0 = (x_s - \hat x_0)/s$ is one more parameterisation beside $\epsilon$,
#   $v$ and $x_0$; each converts to the others and to the score $-\hat\epsilon/s$, exactly (section 2).
# - Euler on the flow ODE is DDIM with $\eta = 0$ and Euler in $\sigma$: one method (section 3). A single image's path
#   is straight in the flow's coordinates and in $x_0 + \sigma\epsilon$ alike; the marginal flow is curved in both.
# - What flow matching changes is where the levels lie (even in $s$) and how the loss weighs them ($(1+\sqrt{\rm SNR})^2$
#   on the $x_0$ error), close to $v$ on a cosine schedule (section 4).
# - Either kind of network samples under either kind of sampler (section 5), and at equal CPU minutes on the cars
#   section 6 prints which recipe won, row by row, with the bootstrap spreads.
#
# ## Exercises
#
# Each exercise has a cell for your answer and a cell that checks it. The next cell loads what they use, so that they
# run on their own: the mixture `mix` and float64 points. The checks compare your answers with the exact fields of
# `ddpm_lib.toy2d` and run them with the library's samplers (and, in exercise 1, its flow velocity) switched off
# (`refusing` from `ddpm_lib.grading`), so an answer that calls them fails.

# %%
import torch

from ddpm_lib import samplers, toy2d
from ddpm_lib.grading import names_used, refusing
from ddpm_lib.toy2d import ring

mix = ring()
g = torch.Generator().manual_seed(0)
SOLVERS = [
    "sample_ddpm",
    "sample_ddim",
    "sample_euler",
    "sample_heun",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
]
SAMPLER_FUNCTIONS = [(samplers, name) for name in SOLVERS]
LIBRARY = SAMPLER_FUNCTIONS + [(toy2d.GaussianMixture, "velocity")]
LIBRARY_NAMES = set(SOLVERS) | {"SAMPLERS", "Denoiser", "velocity"}
print(f"{len(mix.means)} blobs; points are (n, 2) float64")

# %% [markdown]
# **Exercise 1.** Write `velocity_from_x0(x_s, s, x0_hat)` and `eps_from_velocity(x_s, s, u)`: the velocity of the
# straight path from a denoiser's $\hat x_0$, and the noise estimate from a velocity, for points `(n, 2)` at time
# `s` in (0, 1). Return tensors of `x_s`'s shape. Print the velocity of the point (0.3, -0.2) at $s = 0.5$ when
# $\hat x_0 = (0.7, 0)$.


# %% nbgrader={"grade": false, "grade_id": "ex1-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def velocity_from_x0(x_s, s, x0_hat):
    return (x_s - x0_hat) / s


def eps_from_velocity(x_s, s, u):
    return x_s + (1 - s) * u


### END SOLUTION
print(velocity_from_x0(torch.tensor([[0.3, -0.2]]), 0.5, torch.tensor([[0.7, 0.0]])))

# %% nbgrader={"grade": true, "grade_id": "ex1-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
for fn in (velocity_from_x0, eps_from_velocity):
    used = names_used(fn) & LIBRARY_NAMES
    assert not used, f"{fn.__name__} uses {sorted(used)}: write the formula yourself"
for s in (0.05, 0.4, 0.9):
    x_s = (1 - s) * mix.sample(300, g, torch.float64) + s * torch.randn(
        300, 2, generator=g, dtype=torch.float64
    )
    x0_hat = mix.denoise(x_s / (1 - s), s / (1 - s))
    expected_u = mix.velocity(x_s, s)
    expected_eps = (x_s - (1 - s) * x0_hat) / s
    with refusing(*LIBRARY, answer=velocity_from_x0):
        u = velocity_from_x0(x_s, s, x0_hat)
        eps = eps_from_velocity(x_s, s, expected_u)
    assert u.shape == x_s.shape, (
        f"velocity_from_x0 should return shape {tuple(x_s.shape)}, got {tuple(u.shape)}"
    )
    assert torch.allclose(u, expected_u, atol=1e-8), (
        f"velocity_from_x0 differs from the exact velocity at s = {s}"
    )
    assert torch.allclose(eps, expected_eps, atol=1e-8), (
        f"eps_from_velocity differs from E[eps | x_s] at s = {s}"
    )

# %% [markdown]
# **Exercise 2.** Write `flow_euler(velocity, x, s_levels)`: Euler's method on $dx/ds = $ `velocity(x, s)` (a
# function of points `(n, 2)` and a float `s`) through the decreasing times `s_levels` (a float64 tensor `(N + 1,)`
# ending at 0), starting from `x` at `s_levels[0]`. Return the points at $s = 0$. Print the share of 1,000 samples
# within 0.15 of a blob's centre after 8 even steps from $s = 0.99$, with `mix.velocity` as the velocity.


# %% nbgrader={"grade": false, "grade_id": "ex2-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def flow_euler(velocity, x, s_levels):
    for s, s_next in zip(s_levels[:-1].tolist(), s_levels[1:].tolist()):
        x = x + (s_next - s) * velocity(x, s)
    return x


### END SOLUTION
levels8 = torch.linspace(0.99, 0, 9, dtype=torch.float64)
x1 = 0.99 * torch.randn(1000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
near = torch.cdist(flow_euler(mix.velocity, x1, levels8), mix.means).min(1).values < 0.15
print(f"{near.double().mean().item():.1%} within 0.15 of a blob")

# %% nbgrader={"grade": true, "grade_id": "ex2-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
used = names_used(flow_euler) & LIBRARY_NAMES
assert not used, f"flow_euler uses {sorted(used)}: write the loop yourself"
for n in (1, 3, 8):
    s_levels = torch.linspace(0.98, 0, n + 1, dtype=torch.float64)
    x = 0.98 * torch.randn(200, 2, generator=g, dtype=torch.float64)
    expected = samplers.sample_ddim(
        mix.denoise, x / (1 - s_levels[0]), s_levels / (1 - s_levels), eta=0.0
    )
    with refusing(*SAMPLER_FUNCTIONS, answer=flow_euler):  # the velocity is the answer's input
        got = flow_euler(mix.velocity, x, s_levels)
    assert got.shape == x.shape, (
        f"flow_euler should return shape {tuple(x.shape)}, got {tuple(got.shape)}"
    )
    assert torch.allclose(got, expected, atol=1e-8), (
        f"flow_euler with {n} steps differs from DDIM on the same levels"
    )

# %% [markdown]
# **Exercise 3.** A flow network's velocity $\hat u$ and its $\hat x_0$ are one prediction (section 2), so the flow loss
# $|\hat u - u|^2$ is a weighted $x_0$ error. Write `flow_weight(s)`: the factor $w(s)$ with $|\hat u - u|^2 = w(s)\,
# |\hat x_0 - x_0|^2$ at time `s` (a float in (0, 1)), where $u = \epsilon - x_0$ and $\hat u$ is the velocity implied
# by $\hat x_0$ at the same $x_s$. Print $w$ at $s = 0.5$, and check by hand that it is $(1 + \sqrt{\mathrm{SNR}})^2$
# with $\mathrm{SNR} = (1-s)^2/s^2$.


# %% nbgrader={"grade": false, "grade_id": "ex3-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def flow_weight(s):
    return 1 / s**2


### END SOLUTION
print(f"w(0.5) = {flow_weight(0.5):g}")

# %% nbgrader={"grade": true, "grade_id": "ex3-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
for s in (0.02, 0.3, 0.5, 0.97):
    x0 = mix.sample(100, g, torch.float64)
    eps = torch.randn(100, 2, generator=g, dtype=torch.float64)
    x0_hat = x0 + 0.1 * torch.randn(100, 2, generator=g, dtype=torch.float64)  # a wrong guess
    x_s = (1 - s) * x0 + s * eps
    u, u_hat = eps - x0, (x_s - x0_hat) / s
    w = flow_weight(s)
    loss_u, loss_x0 = ((u_hat - u) ** 2).sum(1), ((x0_hat - x0) ** 2).sum(1)
    assert torch.allclose(loss_u, w * loss_x0, rtol=1e-9), (
        f"flow_weight({s}) is not the ratio of the two losses"
    )
    snr = (1 - s) ** 2 / s**2
    assert abs(w - (1 + snr**0.5) ** 2) < 1e-9 * w, (
        f"flow_weight({s}) differs from (1 + sqrt(SNR))^2"
    )
