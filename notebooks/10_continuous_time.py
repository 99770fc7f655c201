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
# # 10 · Continuous time: noise levels, the probability-flow ODE and samplers that need 10 network calls
#
# **Goal.** Notebooks 01-09 counted time in integer steps $t = 0 \dots T-1$ and sampled with DDPM (Ho et al. 2020)
# or DDIM (Song et al. 2021a). This notebook drops the integer: a trained network is a function of the image and a
# *noise level* $\sigma$, sampling is solving a differential equation from a large $\sigma$ down to 0, and a better
# solver needs fewer network evaluations (NFE) for the same images. It sits after notebook 09 (guidance, which works
# unchanged with every sampler here) and before notebook 11 (flow matching, whose straight path is one more noise
# schedule in the same picture) and notebook 12 (debugging).
#
# **You will:** turn every schedule into a list of noise levels; derive the probability-flow ODE and watch its
# trajectories beside ancestral sampling on a 2-D mixture whose denoiser is exact; check numerically that DDIM is
# Euler's method on that ODE; write a step of DPM-Solver++(2M) by hand; measure the order of accuracy of Euler, Heun
# and DPM-Solver++(2M) against an exact solution; compare two ways of spacing the levels; and read what each sampler
# buys on the course's own model, measured.
#
# **The published anchors** (CIFAR-10, FID, different base models: only the trend carries over; the next cell prints
# them): DDIM with $\eta = 0$ reaches 13.4 at 10 steps, 6.8 at 20 and 4.7 at 50 (Song et al. 2021a, Table 1);
# DPM-Solver 4.7 at 10 NFE (Lu et al. 2022a); UniPC 3.9 at 10 NFE (Zhao et al. 2023); EDM's Heun sampler 1.97 at
# 35 NFE (Karras et al. 2022). A good solver at 10 NFE matches DDIM at 50. But on *our* model stochastic sampling
# beat deterministic DDIM (notebook 06; the next cell prints its study again): whether an ODE solver helps here is
# measured below, not assumed.
#
# **Conventions.** The library's time runs from data ($t = 0$) to noise ($t = T-1$), and so do the noise levels
# here: $\sigma$ grows with $t$. Here $\sigma$ is the noise level of $x = x_0 + \sigma\epsilon$ (EDM's notation), not
# the standard deviation $\sigma_t$ of Algorithm 2's added noise (notebook 06). DPM-Solver's $\lambda$ is
# $-\log\sigma$, half the log-SNR.
#
# **The models.** `PRETRAINED` (`ddpm_lib/weights/pretrained_toy_cars_32.pt`, the shipped model, notebook 08's end
# point: $v$-prediction + Min-SNR-5, cosine schedule, $T = 500$) for every image below; `DDPM_MODEL` (the paper's
# recipe, linear schedule, $T = 1000$, notebooks 03-07) for its schedule. The next cell prints both recipes from their
# files.

# %%
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from ddpm_lib import samplers
from ddpm_lib.checkpoints import DDPM_MODEL, PRETRAINED, load_ema_model
from ddpm_lib.checks import env_flag
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.model_card import recipe_summary
from ddpm_lib.plotting import show_grids
from ddpm_lib.samplers import (
    EDM_SIGMA_MAX,
    EDM_SIGMA_MIN,
    Denoiser,
    karras_sigmas,
    make_sigmas,
    model_sigmas,
    network_evaluations,
    timestep_sigmas,
)
from ddpm_lib.sampling import generate
from ddpm_lib.schedules import alphas_cumprod_from_betas, log_snr, make_betas
from ddpm_lib.toy2d import GaussianMixture, ring

FAST = env_flag("DDPM_FAST")
N_IMAGES = 4 if FAST else 8  # images of the numerical checks (sections 4 and 5)
N_GRID = 2 if FAST else 16  # images per sampler in the live grid (section 8)
BENCHMARK = Path("../benchmarks/samplers.json")

model, diffusion, cfg = load_ema_model(PRETRAINED)
_, ddpm_diffusion, ddpm_cfg = load_ema_model(DDPM_MODEL)
print(f"PRETRAINED (the shipped model): {recipe_summary(cfg)}")
print(f"DDPM_MODEL: {recipe_summary(ddpm_cfg)}")

# %% [markdown]
# ## 1. Where the field stands, and where our model stood
#
# The published numbers quoted above, and notebook 06's measurement on `DDPM_MODEL` (`benchmarks/eval_study.json`:
# 128 samples per row, FID in the toy-cars feature space, ± the bootstrap std). Only rows of equal sample count
# compare.

# %%
LITERATURE = [  # (method, NFE, FID on CIFAR-10, source)
    ("DDIM eta=0", 10, 13.36, "Song et al. 2021a, Table 1"),
    ("DDIM eta=0", 20, 6.84, "Song et al. 2021a, Table 1"),
    ("DDIM eta=0", 50, 4.67, "Song et al. 2021a, Table 1"),
    ("DPM-Solver", 10, 4.70, "Lu et al. 2022a"),
    ("UniPC", 10, 3.87, "Zhao et al. 2023"),
    ("EDM Heun", 35, 1.97, "Karras et al. 2022, Table 2 (VP, unconditional)"),
]
print("published, CIFAR-10 (each on its own base model):")
for method, nfe, fid, source in LITERATURE:
    print(f"  {method:11s} {nfe:3d} NFE: FID {fid:5.2f}   ({source})")
study = json.loads(Path("../benchmarks/eval_study.json").read_text())
print(f"\nnotebook 06, DDPM_MODEL ({study['meta']['checkpoint_steps']:,} steps), 128 samples:")
for r in study["rows"]:
    if (
        r["study"] == "samplers"
        and r["num_samples"] == 128
        and r["steps"] in (10, 20, 50)
        and r["eta"] in (0, 1)
    ):
        print(
            f"  DDIM eta={r['eta']:g} {r['steps']:3d} NFE: FID {r['fid']:5.1f} ± {r['spread']['fid']:.1f}"
        )

# %% [markdown]
# ## 2. From an integer $t$ to a noise level $\sigma$
#
# Every schedule of notebook 01 noises as $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$. Divide
# by $\sqrt{\bar\alpha_t}$:
#
# $$x = \frac{x_t}{\sqrt{\bar\alpha_t}} = x_0 + \sigma_t\,\epsilon, \qquad
# \sigma_t = \sqrt{\frac{1-\bar\alpha_t}{\bar\alpha_t}}, \qquad
# \bar\alpha_t = \frac{1}{1+\sigma_t^2}, \qquad
# \log\mathrm{SNR}_t = \log\frac{\bar\alpha_t}{1-\bar\alpha_t} = -2\log\sigma_t .$$
#
# The rescaled $x$ is the data plus noise of standard deviation $\sigma$ (the "variance-exploding" view of Song et al.
# 2021b): the same process, only measured in other units. A schedule is then nothing but a list of levels
# $\sigma_0 < \dots < \sigma_{T-1}$, and the network, fed $x_t = x / \sqrt{1+\sigma^2}$ at the timestep of $\sigma$,
# is a **denoiser** $D(x, \sigma) \approx \mathbb E[x_0 \mid x_0 + \sigma\epsilon = x]$ (`samplers.Denoiser`; between
# two of the model's levels it interpolates the timestep in $\log\sigma$).
#
# Flow matching's straight path $x_s = (1-s)\,x_0 + s\,\epsilon$ (notebook 11; the library's `rectified_flow`
# schedule with $s_t = (t+1)/(T+1)$) is one more such list: $x_s/(1-s) = x_0 + \frac{s}{1-s}\epsilon$, so
# $\sigma = s/(1-s)$. The cell checks `model_sigmas` against each schedule: against $\bar\alpha_t$ of the schedule
# rebuilt by `make_betas` for the two course models, against the log-SNR of `schedules.log_snr`, and against the
# closed form $s/(1-s)$ for the straight path.

# %%
SCHEDULE_SET = {  # label -> the process
    f"linear, T={ddpm_diffusion.num_timesteps} (DDPM_MODEL)": ddpm_diffusion,
    f"cosine, T={diffusion.num_timesteps} (PRETRAINED)": diffusion,
    "rectified_flow, T=500 (notebook 11)": GaussianDiffusion(make_betas("rectified_flow", 500)),
}
for (label, process), name in zip(SCHEDULE_SET.items(), ("linear", "cosine", "rectified_flow")):
    sigma = model_sigmas(process)  # (T,) float64
    ab = alphas_cumprod_from_betas(make_betas(name, process.num_timesteps))
    by_hand = ((1 - ab) / ab).sqrt()  # sigma_t = sqrt((1 - bar-alpha_t) / bar-alpha_t)
    snr_gap = (-2 * sigma.log() - log_snr(process.betas)).abs().max().item()
    print(
        f"{label:38s} sigma from {sigma[0]:.4g} to {sigma[-1]:.4g}; max relative |model_sigmas - by hand| "
        f"{((sigma - by_hand).abs() / by_hand).max().item():.1e}, max |-2 log sigma - log-SNR| {snr_gap:.1e}"
    )
T_RF = 500
s_rf = torch.arange(1, T_RF + 1, dtype=torch.float64) / (T_RF + 1)
rf_gap = (model_sigmas(SCHEDULE_SET["rectified_flow, T=500 (notebook 11)"]) - s_rf / (1 - s_rf)) / (
    s_rf / (1 - s_rf)
)
print(
    f"rectified_flow: max relative |model_sigmas - s / (1 - s)| = {rf_gap.abs().max().item():.1e}"
)
print(f"cosine: the largest beta_t is {diffusion.betas.max().item():.3f}, the clip of make_betas")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
for label, process in SCHEDULE_SET.items():
    sigma = model_sigmas(process)
    print(
        f"{label:38s} sigma_0 = {sigma[0]:.3g}, sigma_T-1 = {sigma[-1]:.3g}; increasing: {bool((sigma.diff() > 0).all())}"
    )
print("every check above within 1e-9 (relative):", rf_gap.abs().max().item() < 1e-9)

# %% [markdown]
# The three schedules as noise levels against the fraction of the way $t/T$. The cosine schedule of the shipped model
# ends far above the linear one: its last level is clipped only by $\beta_t \le 0.999$. The grey band is EDM's range
# $[0.002, 80]$ for 32-pixel images (Karras et al. 2022, Table 1): above 80 an image is lost in the noise, below
# 0.002 nothing visible changes.

# %%
fig, ax = plt.subplots(figsize=(7.5, 4))
for label, process in SCHEDULE_SET.items():
    T_ = process.num_timesteps
    ax.plot(np.arange(T_) / T_, model_sigmas(process).numpy(), label=label)
ax.axhspan(EDM_SIGMA_MIN, EDM_SIGMA_MAX, color="0.9", label="EDM's range [0.002, 80]")
ax.set_yscale("log")
ax.set_xlabel("t / T")
ax.set_ylabel(r"$\sigma_t = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$")
ax.set_title("every schedule is a list of noise levels")
ax.legend(fontsize=8)
ax.grid(alpha=0.3, which="both")
# %% [markdown]
# ## 3. The SDE and the probability-flow ODE
#
# Let the level $\sigma(\tau)$ grow with a continuous time $\tau$. The forward process is then a stochastic
# differential equation (Song et al. 2021b, Eq. 9, the variance-exploding SDE): noise is added at the rate that
# makes the variance grow as $\sigma^2$,
#
# $$dx = \sqrt{\tfrac{d\sigma^2}{d\tau}}\;dw .$$
#
# It runs backwards in time as another SDE (Anderson 1982; Song et al. 2021b, Eq. 6), which needs the **score**
# $\nabla_x \log p_\sigma(x)$ of the noisy data, and, remarkably, as an ordinary differential equation with the same
# marginals $p_\sigma$ at every level, the **probability-flow ODE** (Song et al. 2021b, Eq. 13; with $\sigma$ as the
# time variable, Karras et al. 2022, Eq. 1):
#
# $$dx = -\tfrac{d\sigma^2}{d\tau}\,\nabla\log p_\sigma(x)\,d\tau + \sqrt{\tfrac{d\sigma^2}{d\tau}}\;d\bar w,
# \qquad\qquad \frac{dx}{d\sigma} = -\sigma\,\nabla_x\log p_\sigma(x) = \frac{x - D(x, \sigma)}{\sigma} .$$
#
# The last step is Tweedie's formula (Efron 2011): $D(x, \sigma) = x + \sigma^2\,\nabla_x\log p_\sigma(x)$, so a
# network trained to denoise *is* a score model. The ODE maps each noise image to one data image, deterministically;
# DDPM's ancestral sampler draws fresh noise at every step and follows the reverse SDE.
#
# On the 2-D ring of `ddpm_lib.toy2d` (eight Gaussian blobs) the denoiser is known exactly, so both run without a
# network: Euler steps of the ODE (`samplers.sample_euler`) and ancestral steps (`samplers.sample_ddpm`) over the same
# levels from the same starting points, shown in a DDPM's units $x_t = x/\sqrt{1+\sigma^2}$ so that every path starts
# in $\mathcal N(0, I)$.

# %%
data = ring()  # GaussianMixture: 8 blobs of std 0.05 on a circle of radius 0.7
exact = data.denoise  # the exact D(x, sigma) = E[x0 | x0 + sigma eps = x], (n, 2) -> (n, 2)
levels = karras_sigmas(EDM_SIGMA_MIN, EDM_SIGMA_MAX, 200)  # (201,): 200 levels from 80 down, then 0


def run_with_path(name, x, sigmas, seed=0):
    """A sampler of the family on the exact denoiser; returns the end and the path in x_t units, (S + 1, n, 2)."""
    path = [x / math.sqrt(1 + float(sigmas[0]) ** 2)]

    def record(step):
        path.append(step.x_next / math.sqrt(1 + step.sigma_next**2))

    g = torch.Generator().manual_seed(seed)
    end = samplers.SAMPLERS[name](exact, x, sigmas, generator=g, callback=record)
    return end, torch.stack(path)


x_T = torch.randn(
    12, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64
)  # DDPM units
x_start = x_T * math.sqrt(1 + float(levels[0]) ** 2)  # x = x_t sqrt(1 + sigma^2)
ends, paths = {}, {}
for name in ("euler", "ddpm"):
    ends[name], paths[name] = run_with_path(name, x_start, levels)
again = {name: run_with_path(name, x_start, levels, seed=1)[0] for name in ("euler", "ddpm")}
for name, title in (("euler", "ODE (Euler)"), ("ddpm", "ancestral (DDPM)")):
    length = paths[name].diff(dim=0).norm(dim=-1).sum(0).mean().item()
    print(
        f"{title:17s} mean path length {length:.2f}; another noise seed changes the end by "
        f"{(again[name] - ends[name]).norm(dim=1).max().item():.2f} (max over the 12 paths)"
    )

# %%
grid = torch.linspace(-1.6, 1.6, 161, dtype=torch.float64)
points = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2)
density = (
    data.log_prob(points, 0.05).exp().reshape(161, 161)
)  # the data, blurred a little to be visible
fig, axes = plt.subplots(1, 2, figsize=(11, 5.3), sharey=True)
for ax, (name, title) in zip(
    axes, (("euler", "probability-flow ODE (Euler)"), ("ddpm", "ancestral sampling (DDPM)"))
):
    ax.contourf(grid, grid, density, levels=12, cmap="Greys")
    for i in range(paths[name].shape[1]):
        p = paths[name][:, i]
        ax.plot(p[:, 0], p[:, 1], lw=1, color=f"C{i % 10}")
        ax.plot(p[0, 0], p[0, 1], "o", color=f"C{i % 10}", ms=4)
        ax.plot(p[-1, 0], p[-1, 1], "x", color="k", ms=6)
    ax.set_title(f"{title}: {len(levels) - 1} steps, the same 12 starts")
    ax.set_aspect("equal")
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
fig.suptitle(
    r"paths in $x_t = x/\sqrt{1+\sigma^2}$ from $\mathcal{N}(0, I)$ (dots) to the data (crosses), exact denoiser"
)
fig.tight_layout()
# %% [markdown]
# Both end on the ring: they sample the same distribution, which the next cell checks on 2,000 starts (the share of
# points on each blob, against the data's $1/8$). The ODE's paths are smooth and deterministic (the end does not
# depend on the seed, printed above); the ancestral paths wander, and another seed sends them elsewhere. Smoothness is
# what a higher-order solver exploits: it can take long steps along a curve it can extrapolate.

# %%
many = torch.randn(
    2000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64
) * math.sqrt(1 + float(levels[0]) ** 2)
print(f"{len(many):,} starts, {len(levels) - 1} steps each")
for name in ("euler", "ddpm"):
    end = samplers.SAMPLERS[name](exact, many, levels, generator=torch.Generator().manual_seed(0))
    nearest = torch.cdist(end, data.means).min(1)
    share = torch.bincount(nearest.indices, minlength=8).double() / len(end)
    print(
        f"{name:5s}: share per blob {' '.join(f'{s:.3f}' for s in share.tolist())}; "
        f"within 4 std of a centre: {(nearest.values < 4 * data.std).double().mean().item():.3f}"
    )

# %% [markdown]
# ## 4. DDIM is Euler's method on the probability-flow ODE
#
# In these units DDIM's deterministic step (Song et al. 2021a, Eq. 12 with $\eta = 0$) keeps the predicted noise
# $\hat\epsilon = (x - D)/\sigma$ and moves to the next level: $x_\text{next} = D + \sigma_\text{next}\hat\epsilon$. One
# line of algebra turns it into an Euler step of $dx/d\sigma = (x - D)/\sigma$:
#
# $$x_\text{next} = D + \frac{\sigma_\text{next}}{\sigma}(x - D) = x + (\sigma_\text{next} - \sigma)\,\frac{x - D}{\sigma} .$$
#
# (Song et al. 2021a, Sec. 4.3, and Karras et al. 2022, Sec. 3, make the same observation.) Numerically, on the shipped
# model, 10 steps on its own timesteps (`timestep_sigmas`) from the same noise: `sample_ddim(eta=0)` against
# `sample_euler`, and both against notebook 06's `GaussianDiffusion.sample(..., "ddim", 10, 0.0)`, which computes in
# the DDPM's units $x_t$.

# %%
sigmas10 = timestep_sigmas(diffusion, 10)  # (11,): the model's 10 DDIM timesteps as levels, then 0
x_T = torch.randn(N_IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # a DDPM's x_T
x_first = x_T * math.sqrt(1 + float(sigmas10[0]) ** 2)  # x = x_t sqrt(1 + sigma^2)
print("levels:", " ".join(f"{s:.3g}" for s in sigmas10.tolist()))
out = {}
for dtype in (
    torch.float32,
    torch.float64,
):  # float64: the samplers' arithmetic; the network always runs in float32
    x = x_first.to(dtype)
    out["ddim", dtype] = samplers.sample_ddim(Denoiser(model, diffusion), x, sigmas10, eta=0.0)
    out["euler", dtype] = samplers.sample_euler(Denoiser(model, diffusion), x, sigmas10)
    gap = (out["ddim", dtype] - out["euler", dtype]).abs().max().item()
    print(f"{str(dtype):14s} max |DDIM(eta=0) - Euler| = {gap:.1e}")
print(
    f"float32's spacing at |x| = {x_first.abs().max().item():.3g}, the first step's scale: "
    f"{torch.finfo(torch.float32).eps * x_first.abs().max().item():.1e}"
)

# %% [markdown]
# The two forms agree to rounding, not bit for bit: at the cosine schedule's first level, $\sigma \approx 10^4$, $x$
# is about $10^4$ in size, and Euler's form $x + (\sigma_\text{next} - \sigma)(x - D)/\sigma$ subtracts two numbers of
# that size to land near 1: in float32 it keeps only the digits that float32 holds at $10^4$ (the spacing the cell
# printed). DDIM's form $D + (\sigma_\text{next}/\sigma)(x - D)$ never forms the large sum. In float64 arithmetic the
# gap shrinks to what the network's float32 input leaves.
#
# Notebook 06's DDIM computes in $x_t$ units, with $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon)/\sqrt{\bar\alpha_t}$:
# at the first step $1/\sqrt{\bar\alpha_t} \approx 10^4$ multiplies float32 rounding the same way. The same
# comparison in float64 arithmetic (a wrapper that runs the network in float32 and returns float64) shows what is
# left once that rounding is gone.


# %%
class Float32Network(nn.Module):
    """The network in float32 on a float64 x_t: GaussianDiffusion's arithmetic in float64, as Denoiser's above."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x_t, t):
        return self.net(x_t.float(), t).double()


vp32 = diffusion.sample(
    model, tuple(x_T.shape), "ddim", 10, 0.0, x_T=x_T
)  # notebook 06's DDIM, float32
vp64 = diffusion.sample(Float32Network(model), tuple(x_T.shape), "ddim", 10, 0.0, x_T=x_T.double())
gap32 = (vp32 - out["ddim", torch.float32].clamp(-1, 1)).abs().max().item()
gap64 = (vp64 - out["ddim", torch.float64].clamp(-1, 1)).abs().max().item()
rounding = (out["ddim", torch.float32] - out["ddim", torch.float64]).abs().max().item()
print(
    f"max |GaussianDiffusion DDIM - sample_ddim|: float32 {gap32:.1e}, float64 arithmetic {gap64:.1e}"
)
print(f"for scale: sample_ddim in float32 against float64 {rounding:.1e}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print(
    "DDIM(eta=0) == Euler on the model's levels, float64 arithmetic (max |difference| < 1e-4):",
    (out["ddim", torch.float64] - out["euler", torch.float64]).abs().max().item() < 1e-4,
)
print(
    "notebook 06's DDIM == sample_ddim, float64 arithmetic (max |difference| < 1e-4):", gap64 < 1e-4
)
print("the float32 gaps shrink in float64 arithmetic:", gap64 < gap32)

# %% [markdown]
# ## 5. Higher order: Heun and DPM-Solver++(2M)
#
# Euler's method is first order: its error per unit of $\sigma$ shrinks like the step size $h$, so halving the error
# doubles the cost. Two second-order methods, whose error shrinks like $h^2$:
#
# **Heun** (Karras et al. 2022, Algorithm 2): an Euler step to $\tilde x$ at $\sigma_\text{next}$, then the trapezoid
# rule with the slopes at both ends,
#
# $$d = \frac{x - D(x, \sigma)}{\sigma},\quad \tilde x = x + (\sigma_\text{next} - \sigma)\,d,\quad
# \tilde d = \frac{\tilde x - D(\tilde x, \sigma_\text{next})}{\sigma_\text{next}},\quad
# x_\text{next} = x + (\sigma_\text{next} - \sigma)\,\frac{d + \tilde d}{2} .$$
#
# Two network evaluations per step, except the last (to $\sigma = 0$, where $\tilde d$ is undefined), which stays an
# Euler step: $N$ steps cost $2N - 1$ evaluations (`network_evaluations("heun", N)`; the cell below counts the calls).
#
# **DPM-Solver++(2M)** (Lu et al. 2022b) solves the ODE's linear part exactly. With $\lambda = -\log\sigma$,
# $\frac{d}{d\sigma}\frac{x}{\sigma} = -\frac{D}{\sigma^2}$, and integrating over one step from $\lambda$ to
# $\lambda_\text{next}$ (step $h = \lambda_\text{next} - \lambda$):
#
# $$x(\sigma_\text{next}) = \frac{\sigma_\text{next}}{\sigma}\,x + \sigma_\text{next}\int_{\lambda}^{\lambda_\text{next}} e^{\lambda'}\,D(x_{\lambda'}, \sigma_{\lambda'})\,d\lambda' .$$
#
# Only $D$ is approximated. Held constant over the step, the integral is $(1 - e^{-h})\,D$ and the update is
# $x_\text{next} = \frac{\sigma_\text{next}}{\sigma}x + (1 - \frac{\sigma_\text{next}}{\sigma})D$: DDIM again. Extrapolated
# linearly in $\lambda$ from the previous step's $D_\text{prev}$ (step ratio $r = h_\text{prev}/h$), the integral adds
# $\frac{h - 1 + e^{-h}}{rh}(D - D_\text{prev})$; Lu et al. use the weight $\frac{1 - e^{-h}}{2r}$ instead, equal to
# leading order in $h$, which keeps the method second order. The multistep update, still one evaluation per step:
#
# $$x_\text{next} = \frac{\sigma_\text{next}}{\sigma}\,x + \big(1 - e^{-h}\big)\Big[\big(1 + \tfrac{1}{2r}\big)D - \tfrac{1}{2r}D_\text{prev}\Big] .$$
#
# The first step has no $D_\text{prev}$ and the last one goes to $\sigma = 0$ (where $h$ is infinite and the update is
# $x_\text{next} = D$): both are first order. One step, written by hand:


# %%
def dpmpp_2m_step(x, sigma, sigma_next, denoised, denoised_prev=None, h_prev=None):
    """One DPM-Solver++(2M) step in sigma units (Lu et al. 2022b, Algorithm 2); returns (x_next, h)."""
    if sigma_next == 0:
        return denoised, None  # the last step: the exact solution for D held constant is D itself
    h = math.log(sigma) - math.log(sigma_next)  # lambda_next - lambda, lambda = -log(sigma)
    d = denoised  # first order: D held constant over the step (DDIM)
    if denoised_prev is not None:  # second order: D extrapolated linearly in lambda
        r = h_prev / h
        d = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * denoised_prev
    return (sigma_next / sigma) * x + (1 - math.exp(-h)) * d, h


# %% [markdown]
# The check: run the library's `sample_dpmpp_2m` on the shipped model (10 levels of the Karras spacing of section 7,
# float64 arithmetic), record every step through its callback, and redo each step with `dpmpp_2m_step` from the same
# $x$, $D$ and previous $D$.

# %%
sigmas_k = make_sigmas(diffusion, 10, "karras")  # (11,)
x = (x_T * math.sqrt(1 + float(sigmas_k[0]) ** 2)).double()
steps = []
library_out = samplers.sample_dpmpp_2m(
    Denoiser(model, diffusion), x, sigmas_k, callback=steps.append
)
gaps, previous, h_prev = [], None, None
for step in steps:
    mine, h = dpmpp_2m_step(step.x, step.sigma, step.sigma_next, step.denoised, previous, h_prev)
    gaps.append((mine - step.x_next).abs().max().item() / step.x_next.abs().max().item())
    previous, h_prev = step.denoised, h
print(f"{len(steps)} steps; max relative |by hand - sample_dpmpp_2m| per step: {max(gaps):.1e}")


class Counted:
    """A denoiser that counts its calls: the network evaluations a sampler spends."""

    def __init__(self, denoise):
        self.denoise, self.calls = denoise, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.denoise(x, sigma)


heun_ring = Counted(exact)
_ = samplers.sample_heun(heun_ring, many[:8], levels[::20])
print(
    f"Heun, {len(levels[::20]) - 1} steps on the ring: {heun_ring.calls} denoiser calls; "
    f"network_evaluations('heun', {len(levels[::20]) - 1}) = {network_evaluations('heun', len(levels[::20]) - 1)}"
)

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print(
    "the hand-written DPM-Solver++(2M) step == the library's, every step (relative 1e-12):",
    max(gaps) < 1e-12,
)
print(
    "Heun's calls == network_evaluations('heun', N) == 2N - 1:",
    heun_ring.calls
    == network_evaluations("heun", len(levels[::20]) - 1)
    == 2 * (len(levels[::20]) - 1) - 1,
)

# %% [markdown]
# **Its SDE variant.** Section 3's reverse SDE can be solved the same way: DPM-Solver++(2M) SDE (Lu et al. 2022b,
# Sec. 5; k-diffusion's `sample_dpmpp_2m_sde`) lets a share $\eta h$ of each step be taken by fresh noise,
#
# $$x_\text{next} = \frac{\sigma_\text{next}}{\sigma}e^{-\eta h}\,x + \left(1 - e^{-(1+\eta)h}\right)D
# + \sigma_\text{next}\sqrt{1 - e^{-2\eta h}}\;z, \qquad z \sim \mathcal{N}(0, I),$$
#
# plus the same correction from the step before; $\eta = 0$ is the ODE solver's first-order step, $\eta = 1$ (the
# library's `sample_dpmpp_2m_sde`) the SDE. Like DDPM's ancestral steps, the noise it adds can correct a model's
# errors instead of carrying them along; section 8 measures whether that pays on our model.

# %% [markdown]
# ## 6. Order of accuracy, against an exact solution
#
# For Gaussian data $x_0 \sim \mathcal N(\mu, \tau^2 I)$ the denoiser is linear,
# $D(x, \sigma) = \mu + \frac{\tau^2}{\tau^2+\sigma^2}(x - \mu)$, and the ODE
# $\frac{dx}{d\sigma} = \frac{\sigma}{\tau^2+\sigma^2}(x - \mu)$ has the exact solution
#
# $$x(\sigma') = \mu + \big(x(\sigma) - \mu\big)\sqrt{\frac{\tau^2 + \sigma'^2}{\tau^2 + \sigma^2}} .$$
#
# Each solver runs from $\sigma = 80$ down to $\sigma_\text{min} = 0.002$ on $N$ Karras levels (section 7), and its
# error is the largest distance to the exact $x(\sigma_\text{min})$ over 1,000 starts. The final jump to $\sigma = 0$ is
# left out: every solver takes it as $x \leftarrow D$, which would add the same error to all. A method of order $p$
# has error $\propto \mathrm{NFE}^{-p}$: a straight line of slope $-p$ on a log-log plot. The right panel repeats the
# measurement on the ring, whose ODE has no closed form, against Heun with 2,000 levels as the reference.

# %%
MU, TAU = torch.tensor([0.3, -0.2], dtype=torch.float64), 0.5
gaussian = GaussianMixture(MU[None], TAU)  # one component: D is gaussian.denoise


def exact_flow(x, sigma, sigma_next):
    """The exact solution of the probability-flow ODE for N(MU, TAU^2 I) data, (n, 2)."""
    return MU + (x - MU) * math.sqrt((TAU**2 + sigma_next**2) / (TAU**2 + sigma**2))


def errors(denoise, start, reference, counts=(4, 8, 16, 32, 64, 128, 256)):
    """{solver: (NFE list, error list)}: each solver on `n` Karras levels (no final 0) for n in `counts`."""
    result = {}
    for name in ("euler", "heun", "dpmpp_2m"):
        nfes, errs = [], []
        for n in counts:
            counted = Counted(denoise)
            sigmas = karras_sigmas(EDM_SIGMA_MIN, EDM_SIGMA_MAX, n)[:-1]  # (n,): stop at sigma_min
            end = samplers.SAMPLERS[name](counted, start, sigmas)
            nfes.append(counted.calls)
            errs.append((end - reference).norm(dim=1).max().item())
        result[name] = (nfes, errs)
    return result


def slope(nfes, errs, last=4):
    """The least-squares slope of log(error) against log(NFE) over the `last` points."""
    return np.polyfit(np.log(nfes[-last:]), np.log(errs[-last:]), 1)[0]


start = MU + torch.randn(
    1000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64
) * math.sqrt(TAU**2 + EDM_SIGMA_MAX**2)
gauss_errors = errors(gaussian.denoise, start, exact_flow(start, EDM_SIGMA_MAX, EDM_SIGMA_MIN))
ring_start = many[:200]
ring_levels = karras_sigmas(EDM_SIGMA_MIN, EDM_SIGMA_MAX, 2000)[:-1]
ring_reference = samplers.sample_heun(exact, ring_start, ring_levels)
ring_errors = errors(exact, ring_start, ring_reference)
print(
    f"sigma from {EDM_SIGMA_MAX:g} to {EDM_SIGMA_MIN:g}; Gaussian: {len(start):,} starts; ring: {len(ring_start)} starts, "
    f"the reference Heun on {len(ring_levels):,} levels"
)
slopes = {}
for title, result in (("Gaussian, exact", gauss_errors), ("ring, reference", ring_errors)):
    slopes[title] = {name: -slope(*result[name]) for name in result}
    print(
        f"{title:16s} order (minus the slope over the last 4 points): "
        + ", ".join(f"{name} {p:.2f}" for name, p in slopes[title].items())
    )

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, (title, result) in zip(
    axes,
    (
        ("Gaussian data, exact solution", gauss_errors),
        ("ring, Heun-2000 as reference", ring_errors),
    ),
):
    for name, (nfes, errs) in result.items():
        ax.loglog(nfes, errs, "o-", label=name)
    nfe = np.array([10, 500])
    ax.loglog(nfe, 3 / nfe, "k:", lw=1, label="slope -1")
    ax.loglog(nfe, 30 / nfe**2, "k--", lw=1, label="slope -2")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
axes[0].set_ylabel(r"max error at $\sigma_{\min}$")
axes[0].legend(fontsize=8)
# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
gauss, ring_orders = slopes["Gaussian, exact"], slopes["ring, reference"]
print(
    "Gaussian, exact: Euler order 1, Heun and DPM-Solver++(2M) order 2 (each within 0.2):",
    abs(gauss["euler"] - 1) < 0.2
    and abs(gauss["heun"] - 2) < 0.2
    and abs(gauss["dpmpp_2m"] - 2) < 0.2,
)
print(
    "ring, reference: Euler order 1 (within 0.2); Heun and DPM-Solver++(2M) above 1.4, not yet 2:",
    abs(ring_orders["euler"] - 1) < 0.2
    and all(1.4 < ring_orders[name] < 1.9 for name in ("heun", "dpmpp_2m")),
)

# %% [markdown]
# On the ring the second-order methods have not reached order 2 even at 256 levels: its blobs are narrow (std 0.05),
# so $D$ turns sharply near $\sigma \approx 0.05$, and there the steps are still large against that scale. The orders
# hold only once the steps are small: at the left of each panel the second-order methods can be *worse*
# than Euler (Heun's first slope is a poor guess over a step from 80 to a few). A sampler for images lives in that
# left corner, at 5-20 NFE, so the asymptotic order is a hint, not a verdict: section 8 measures.
#
# ## 7. Where to put the levels
#
# A solver's error depends on the steps it takes. Two lists of 10 levels for the shipped model:
#
# - **timesteps** (`timestep_sigmas`): DDIM's choice, the model's own timesteps evenly spaced in $t$. The first is the
#   model's last level, where $x_t$ is pure noise and $D$ can only return the average image.
# - **Karras** (`karras_sigmas`, Karras et al. 2022, Eq. 5): evenly spaced in $\sigma^{1/\rho}$ with $\rho = 7$,
#   $\sigma_i = \big(\sigma_\text{max}^{1/\rho} + \tfrac{i}{N-1}(\sigma_\text{min}^{1/\rho} - \sigma_\text{max}^{1/\rho})\big)^\rho$,
#   over the model's range cut to EDM's $[0.002, 80]$ (`make_sigmas(..., "karras")`). $\rho = 7$ spends more steps at
#   low noise, where the details of an image are decided.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
level_lists = {
    "timesteps": make_sigmas(diffusion, 10, "timesteps"),
    "karras": make_sigmas(diffusion, 10, "karras"),
}
for spacing, sig in level_lists.items():
    print(f"{spacing:9s}", " ".join(f"{s:.3g}" for s in sig.tolist()))

# %%
fig, ax = plt.subplots(figsize=(7.5, 3.6))
for spacing, sig in level_lists.items():
    ax.plot(range(len(sig) - 1), sig[:-1].numpy(), "o-", label=f"{spacing} (then 0)")
ax.set_yscale("log")
ax.set_xlabel("step i")
ax.set_ylabel(r"$\sigma_i$")
ax.set_title(f"10 levels for the shipped model (cosine, T = {diffusion.num_timesteps})")
ax.legend()
ax.grid(alpha=0.3, which="both")

# %% [markdown]
# ## 8. Quality against network evaluations on the course's model, measured
#
# `benchmarks/samplers.py` draws the same number of images with each sampler and level list at several step counts
# from one seed, and scores them against 5,000 training images (FID, precision, recall in the toy-cars feature space,
# notebook 07; ± the std over bootstrap resamples), beside as many held-out real images (the real-vs-real baseline);
# a timing pass then measures seconds per image on the CPU it ran on. The next cell prints its settings and table for
# the shipped model.


# %%
def load_benchmark(path=BENCHMARK):
    """benchmarks/samplers.json, or an error that says how to make it."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist yet: run `python benchmarks/samplers.py --out benchmarks/samplers.json` "
            "from the repository root (it measures every sampler of this section), then run this notebook again"
        )
    return json.loads(path.read_text())


bench = load_benchmark()
shipped = bench["models"]["shipped"]
runs = sorted(shipped["runs"], key=lambda r: (r["label"], r["nfe"]))
base = shipped["baseline"]
print(
    f"{shipped['checkpoint']}; {bench['settings']['num_samples']} samples per row against "
    f"{bench['settings']['num_reference']:,} training images, "
    f"{bench['settings']['bootstrap']} bootstrap resamples; timed on {bench['machine']}"
)
print(
    f"real vs real: FID {base['fid']:.2f}, precision {base['precision']:.3f}, recall {base['recall']:.3f}\n"
)
print(
    f"{'sampler and levels':22s} {'steps':>5s} {'NFE':>4s} {'FID':>14s} {'precision':>9s} {'recall':>7s} {'s / image':>9s}"
)
for r in runs:
    print(
        f"{r['label']:22s} {r['steps']:5d} {r['nfe']:4d} {r['fid']:7.2f} ± {r['fid_std']:4.2f} "
        f"{r['precision']:9.3f} {r['recall']:7.3f} {r['seconds_per_image']:9.3f}"
    )

# %%
fig, ax = plt.subplots(figsize=(8, 4.5))
for i, label in enumerate(sorted({r["label"] for r in runs})):
    rows = [r for r in runs if r["label"] == label]
    ax.errorbar(
        [r["nfe"] for r in rows],
        [r["fid"] for r in rows],
        yerr=[r["fid_std"] for r in rows],
        fmt="o-",
        capsize=3,
        label=label,
        color=f"C{i}",
    )
ax.axhline(base["fid"], color="k", ls=":", label="real vs real")
ax.set_xscale("log")
nfe_ticks = sorted({r["nfe"] for r in runs})
ax.set_xticks(nfe_ticks, [str(n) for n in nfe_ticks])
ax.minorticks_off()
ax.set_xlabel("network evaluations per image (NFE)")
ax.set_ylabel("FID (toy-cars features)")
ax.set_title(
    f"the shipped model: {bench['settings']['num_samples']} samples per point, ± bootstrap std"
)
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
# %% [markdown]
# **The choice.** The rule (the benchmark's `choose`, redone here from the table): take the sampler with the lowest
# FID among those at 50 network evaluations; then the fewest-evaluation run that matches it, with an FID no higher
# than the best's plus its bootstrap std, and precision and recall within 0.03 of the best's. The speedup is the ratio
# of their NFE. The cell checks that the benchmark's stored choice is the rule's.

# %%
MATCH = 0.03  # precision and recall of a match lie within this of the best's
best = min((r for r in runs if r["nfe"] == 50), key=lambda r: r["fid"])
matching = [
    r
    for r in runs
    if r["fid"] <= best["fid"] + best["fid_std"]
    and abs(r["precision"] - best["precision"]) <= MATCH
    and abs(r["recall"] - best["recall"]) <= MATCH
]
fastest = min(matching, key=lambda r: (r["nfe"], r["fid"]))
choice = bench["choice"]
print(
    f"the rule: {choice.get('rule', f'FID <= best + its bootstrap std; precision and recall within {MATCH}')}"
)
print(
    f"best at 50 NFE:       {best['label']}, {best['steps']} steps: FID {best['fid']:.2f} ± {best['fid_std']:.2f}, "
    f"precision {best['precision']:.3f}, recall {best['recall']:.3f}"
)
print(
    f"fewest NFE matching:  {fastest['label']}, {fastest['steps']} steps = {fastest['nfe']} NFE: FID {fastest['fid']:.2f}, "
    f"precision {fastest['precision']:.3f}, recall {fastest['recall']:.3f}"
)
print(
    f"speedup: {best['nfe'] / fastest['nfe']:.1f}x fewer network evaluations, "
    f"{best['seconds_per_image'] / fastest['seconds_per_image']:.1f}x in measured time per image"
)
print(
    "the benchmark's stored choice is the same:",
    (
        choice["best_50"]["label"],
        choice["best_50"]["steps"],
        choice["fastest_matching"]["label"],
        choice["fastest_matching"]["steps"],
    )
    == (best["label"], best["steps"], fastest["label"], fastest["steps"]),
)

# %% [markdown]
# **Reading the choice.** When the fewest-NFE match is the best run itself, no cheaper sampler passed the rule. Look at
# the table for why: on Karras levels the ODE solver and its SDE variant reach the best FID within its spread at 10-15
# network evaluations, but with lower precision and higher recall than stochastic DDIM at 50. They draw more varied
# cars, fewer of which look like the data's. FID, one number, cannot see that trade; precision and recall can, which is
# why the rule asks for all three. The command lines keep the measured best (`samplers.DEFAULT_SAMPLER` and
# `DEFAULT_STEPS`).
#
# **Against the literature.** On CIFAR-10 the published trend is: deterministic DDIM beats stochastic DDIM at few
# steps (Song et al. 2021a, Table 1); a second-order solver at about 10 NFE matches DDIM at 50 (Lu et al. 2022a and b);
# Heun beats Euler at equal NFE (Karras et al. 2022). The next cell asks each question of the table above and prints
# the answer it finds here, with the numbers.


# %%
def run(label, nfe):
    """The benchmark's row of `label` at `nfe` network evaluations, or None."""
    return next((r for r in runs if r["label"] == label and r["nfe"] == nfe), None)


def fid(r):
    return f"{r['label']} at {r['nfe']} NFE: FID {r['fid']:.2f} ± {r['fid_std']:.2f}"


def compare(question, a, b):
    """Is run `a`'s FID lower than run `b`'s by more than their two bootstrap stds together?"""
    if a is None or b is None:
        print(f"{question}: not in the benchmark's grid")
        return
    margin = a["fid_std"] + b["fid_std"]
    verdict = (
        "yes"
        if a["fid"] < b["fid"] - margin
        else "no, the reverse"
        if b["fid"] < a["fid"] - margin
        else "within the spread"
    )
    print(f"{question} {verdict}\n    {fid(a)}\n    {fid(b)}")


for nfe in (10, 50):
    compare(
        f"deterministic DDIM better than stochastic at {nfe} NFE?",
        run("ddim eta=0", nfe),
        run("ddim eta=1", nfe),
    )
compare(
    "DPM-Solver++(2M) at 10 NFE better than deterministic DDIM at 10?",
    run("dpmpp_2m karras", 10),
    run("ddim eta=0", 10),
)
compare(
    "DPM-Solver++(2M) at 10 NFE better than deterministic DDIM at 50?",
    run("dpmpp_2m karras", 10),
    run("ddim eta=0", 50),
)
compare("Heun better than Euler at about 20 NFE?", run("heun karras", 19), run("euler karras", 20))
compare(
    "Karras levels better than timesteps for DPM-Solver++(2M) at 10 NFE?",
    run("dpmpp_2m karras", 10),
    run("dpmpp_2m timesteps", 10),
)
compare(
    "DPM-Solver++(2M) SDE better than the ODE solver at 10 NFE?",
    run("dpmpp_2m_sde karras", 10),
    run("dpmpp_2m karras", 10),
)
compare(
    "DPM-Solver++(2M) SDE better than stochastic DDIM at 10 NFE?",
    run("dpmpp_2m_sde karras", 10),
    run("ddim eta=1", 10),
)

# %% [markdown]
# **A live look.** The same 16 starting noises (8 in fast mode) through six samplers at about 10 network evaluations
# each, on this machine: DDIM with $\eta = 0$ and $\eta = 1$ on the model's timesteps, and Euler, DPM-Solver++(2M), its
# SDE variant and Heun on Karras levels (Heun at 6 steps = 11 NFE, its nearest count). `generate` draws the same $x_T$ from the same
# seed whatever the sampler, so the grids compare image by image.

# %%
LIVE = [  # (title, sampler, steps, eta)
    ("DDIM eta=0", "ddim", 10, 0.0),
    ("DDIM eta=1", "ddim", 10, 1.0),
    ("Euler, Karras", "euler", 10, 0.0),
    ("DPM-Solver++(2M), Karras", "dpmpp_2m", 10, 0.0),
    ("DPM-Solver++(2M) SDE, Karras", "dpmpp_2m_sde", 10, 0.0),
    ("Heun, Karras", "heun", 6, 0.0),
]
grids = {}
for title, sampler, n_steps, eta in LIVE:
    live = generate(
        model,
        diffusion,
        N_GRID,
        32,
        sampler=sampler,
        num_steps=n_steps,
        eta=eta,
        seed=0,
        precision="fp32",
    )
    grids[f"{title}: {live.num_steps} NFE"] = live.images
    print(f"{title:26s} {live.num_steps:2d} NFE, {live.seconds:.1f} s for {N_GRID} images")
show_grids(grids, nrow=4, scale=1.0)
# %% [markdown]
# ## Summary
#
# - A schedule is a list of noise levels $\sigma_t = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$; in units
#   $x = x_t/\sqrt{\bar\alpha_t} = x_0 + \sigma\epsilon$ every model is a denoiser $D(x, \sigma)$, and any level in its
#   range can be visited. Flow matching's straight path is the list $\sigma = s/(1-s)$.
# - Sampling is solving the probability-flow ODE $dx/d\sigma = (x - D(x, \sigma))/\sigma$ (Song et al. 2021b;
#   Karras et al. 2022) from a large $\sigma$ to 0; DDPM's ancestral sampler follows the reverse SDE instead. Both
#   reach the data distribution (section 3).
# - DDIM with $\eta = 0$ is Euler's method on that ODE: the same numbers up to rounding (section 4).
# - Heun (2 evaluations a step) and DPM-Solver++(2M) (1 evaluation a step, the linear part solved exactly and $D$
#   extrapolated in $\lambda = -\log\sigma$) are second order: on an exact oracle their error falls like
#   $\mathrm{NFE}^{-2}$, Euler's like $\mathrm{NFE}^{-1}$ (section 6), once the steps are small.
# - The levels matter as much as the solver: Karras's $\rho = 7$ spacing against the model's own timesteps (section 7).
# - Whether a solver pays on a given model is measured, not assumed: section 8 prints the table for the shipped model,
#   the rule that picks a sampler, the choice and its speedup, and where the result here agrees with the literature.
#
# ## Exercises
#
# Each exercise has a cell for your answer and a cell that checks it. The next cell loads what they use, so that they
# run on their own, without the cells above: three schedules as $\bar\alpha_t$ tensors `ALPHAS_CUMPROD` (float64
# `(T,)`), and a batch `x` `(4, 3, 8, 8)`. The checks compare your answers with `ddpm_lib.samplers` and run them with
# its level and sampler functions switched off (`refusing` from `ddpm_lib.grading`), so an answer that calls them fails.

# %%
import math

import torch

from ddpm_lib import samplers
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.grading import names_used, refusing
from ddpm_lib.samplers import karras_sigmas, model_sigmas
from ddpm_lib.schedules import alphas_cumprod_from_betas, make_betas

BETAS = {
    name: make_betas(name, T)
    for name, T in (("linear", 1000), ("cosine", 500), ("rectified_flow", 500))
}
ALPHAS_CUMPROD = {
    name: alphas_cumprod_from_betas(betas) for name, betas in BETAS.items()
}  # (T,) float64 each
x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
print({name: tuple(ab.shape) for name, ab in ALPHAS_CUMPROD.items()}, tuple(x.shape))

LEVELS = ["model_sigmas", "timestep_sigmas", "karras_sigmas", "make_sigmas"]
SOLVERS = ["sample_ddpm", "sample_ddim", "sample_euler", "sample_heun", "sample_dpmpp_2m"]
SOLVERS += ["sample_dpmpp_2m_sde"]
LIBRARY = [(samplers, name) for name in LEVELS + SOLVERS]
LIBRARY += [(globals(), name) for name in ("karras_sigmas", "model_sigmas")]
LIBRARY_NAMES = set(LEVELS + SOLVERS) | {"SAMPLERS", "Denoiser"}

# %% [markdown]
# **Exercise 1.** Write `sigma_from_alpha_bar(alphas_cumprod)`: the noise levels $\sigma_t$ of a float64 tensor
# `(T,)` of $\bar\alpha_t$, and `alpha_bar_from_sigma(sigmas)`, its inverse, each returning a float64 tensor of the
# same shape. Print the last level $\sigma_{T-1}$ of each of the three schedules.


# %% nbgrader={"grade": false, "grade_id": "ex1-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def sigma_from_alpha_bar(alphas_cumprod):
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def alpha_bar_from_sigma(sigmas):
    return 1 / (1 + sigmas**2)


### END SOLUTION
for name, ab in ALPHAS_CUMPROD.items():
    print(f"{name}: sigma_T-1 = {sigma_from_alpha_bar(ab)[-1].item():.4g}")

# %% nbgrader={"grade": true, "grade_id": "ex1-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
for fn in (sigma_from_alpha_bar, alpha_bar_from_sigma):
    used = names_used(fn) & LIBRARY_NAMES
    assert not used, f"{fn.__name__} uses {sorted(used)}: write the formula yourself"
for name, betas in BETAS.items():
    expected = model_sigmas(GaussianDiffusion(betas))
    with refusing(*LIBRARY, answer=sigma_from_alpha_bar):
        got = sigma_from_alpha_bar(ALPHAS_CUMPROD[name])
        back = alpha_bar_from_sigma(got)
    assert got.shape == expected.shape, (
        f"{name}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    )
    assert torch.allclose(got.double(), expected, rtol=1e-9), (
        f"{name}: sigma_from_alpha_bar differs from the library's levels"
    )
    assert torch.allclose(back.double(), ALPHAS_CUMPROD[name], rtol=1e-9), (
        f"{name}: alpha_bar_from_sigma does not invert it"
    )

# %% [markdown]
# **Exercise 2.** Write `euler_step(x, sigma, sigma_next, denoised)`: one Euler step of the probability-flow ODE
# $dx/d\sigma = (x - D)/\sigma$ from level `sigma` to `sigma_next` (floats, `sigma` > 0, `sigma_next` >= 0), given
# $D$ = `denoised`, a tensor of `x`'s shape. Return a tensor of `x`'s shape. Then print the largest difference between
# your step and DDIM's form $D + (\sigma_\text{next}/\sigma)(x - D)$ for $D = 0.5\,x$, $\sigma = 3$,
# $\sigma_\text{next} = 1$.


# %% nbgrader={"grade": false, "grade_id": "ex2-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def euler_step(x, sigma, sigma_next, denoised):
    slope = (x - denoised) / sigma  # dx/dsigma at (x, sigma)
    return x + (sigma_next - sigma) * slope


### END SOLUTION
d_ = 0.5 * x
print(
    f"max |Euler - DDIM| = {(euler_step(x, 3.0, 1.0, d_) - (d_ + (1 / 3) * (x - d_))).abs().max().item():.1e}"
)

# %% nbgrader={"grade": true, "grade_id": "ex2-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
used = names_used(euler_step) & LIBRARY_NAMES
assert not used, f"euler_step uses {sorted(used)}: write the step yourself"
g_ = torch.Generator().manual_seed(1)
for sigma_, sigma_next_ in [(80.0, 20.0), (3.0, 1.0), (0.5, 0.49), (2.0, 0.0)]:
    denoised_ = torch.randn(x.shape, generator=g_, dtype=torch.float64)
    levels_ = torch.tensor([sigma_, sigma_next_], dtype=torch.float64)
    expected = samplers.sample_euler(lambda x_, s_, d=denoised_: d, x, levels_)
    with refusing(*LIBRARY, answer=euler_step):
        got = euler_step(x, sigma_, sigma_next_, denoised_)
    assert got.shape == x.shape, (
        f"euler_step should return shape {tuple(x.shape)}, got {tuple(got.shape)}"
    )
    assert torch.allclose(got, expected, rtol=1e-9, atol=1e-9), (
        f"euler_step({sigma_} -> {sigma_next_}) differs from sample_euler"
    )

# %% [markdown]
# **Exercise 3.** Write `karras_levels(sigma_min, sigma_max, num_steps, rho=7.0)`: EDM's levels (Karras et al. 2022,
# Eq. 5), $\sigma_i = \big(\sigma_\text{max}^{1/\rho} + \tfrac{i}{N-1}(\sigma_\text{min}^{1/\rho} -
# \sigma_\text{max}^{1/\rho})\big)^\rho$ for $i = 0 \dots N-1$ with $N$ = `num_steps` $\ge 2$, then a final 0: a float64
# tensor `(N + 1,)`. Print them for $[0.002, 80]$ and 10 steps.


# %% nbgrader={"grade": false, "grade_id": "ex3-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def karras_levels(sigma_min, sigma_max, num_steps, rho=7.0):
    i = torch.arange(num_steps, dtype=torch.float64)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (hi + i / (num_steps - 1) * (lo - hi)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


### END SOLUTION
print(" ".join(f"{s:.4g}" for s in karras_levels(0.002, 80.0, 10).tolist()))

# %% nbgrader={"grade": true, "grade_id": "ex3-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
used = names_used(karras_levels) & LIBRARY_NAMES
assert not used, f"karras_levels uses {sorted(used)}: build the levels yourself"
for lo_, hi_, n_, rho_ in [
    (0.002, 80.0, 10, 7.0),
    (0.01, 10.0, 2, 7.0),
    (0.002, 80.0, 18, 3.0),
    (0.1, 1.0, 5, 1.0),
]:
    expected = karras_sigmas(lo_, hi_, n_, rho_)
    with refusing(*LIBRARY, answer=karras_levels):
        got = karras_levels(lo_, hi_, n_, rho_)
    assert got.shape == expected.shape, (
        f"karras_levels({lo_}, {hi_}, {n_}) should have shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    )
    assert torch.allclose(got.double(), expected, rtol=1e-9), (
        f"karras_levels({lo_}, {hi_}, {n_}, rho={rho_}) differs from karras_sigmas"
    )
