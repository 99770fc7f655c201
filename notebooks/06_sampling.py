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
# # 06 · Sampling: from noise to cars
#
# **Goal.** Run the reverse process. Write Algorithm 2 by hand and check it against the library, watch a batch of
# noise become cars with a slider over $t$, derive DDIM (Song et al. 2021) and check that it contains DDPM, compare the
# paper's 1000-step sampler with DDIM's 10 to 100 steps and the paper's two choices of the reverse variance, and
# measure what is still wrong with the samples' colours.
#
# **The model.** Every section samples one fixed model, `ddpm_lib/weights/ddpm_toy_cars_32.pt`
# (`ddpm_lib.checkpoints.DDPM_MODEL`): the paper's DDPM that notebook 05 trains (`--preset ddpm`: $\epsilon$-prediction,
# $L_\text{simple}$, linear schedule over $T = 1000$, the `small` U-Net with attention at 16x16), after 1,600 steps of
# 64 images. Notebook 07's evaluation study measured the same weights, so what this notebook finds, its defects
# included, matches the study. The first cells print the model and its recipe, read from the checkpoint.
#
# **Speed.** Every sampling cell goes through `ddpm_lib.sampling.generate` (or `trajectory`), which runs the network
# in the precision measured fastest on this machine. Every time printed is taken after a warm-up call at the same
# batch size (the first call at a new shape can pay one-time setup). The long cells size their batch from a measured
# speed, so the notebook takes about the same time on a fast and on a slow computer.
#
# **Deviation from the paper.** Algorithm 2 is run as written in section 1; everywhere else the sampler clips the
# predicted $\hat x_0$ to $[-1, 1]$ at each step, as the paper's code does (section 1 shows why).

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from ddpm_lib import GaussianDiffusion
from ddpm_lib.checkpoints import DDPM_MODEL, load_checkpoint, load_ema_model
from ddpm_lib.data import from_uint8, load_dataset
from ddpm_lib.devices import device_report, resolve_precision, select_device
from ddpm_lib.plotting import save_denoising_animation, show_images
from ddpm_lib.sampling import generate, trajectory
from ddpm_lib.widgets import trajectory_explorer, trajectory_static

from ddpm_lib.checks import env_flag

FAST = env_flag("DDPM_FAST")
ASSETS = "../assets"
checkpoint = DDPM_MODEL  # notebook 05's recipe after 1,600 steps, the model of notebook 07's study
device = select_device()
model, diffusion, config = load_ema_model(checkpoint, device)
S = config.image_size
card = load_checkpoint(checkpoint)["model_card"]
print(f"sampling from {checkpoint.name}: {card['title']}")
print(f"trained by: {card['command']}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print(f"{config.model} U-Net, {config.image_size}px, predicts {config.prediction_type}, T={diffusion.num_timesteps}, "
      f"{config.schedule} schedule, variance {diffusion.variance_type}, in eval mode: {not model.training}")

# %% [markdown]
# The precision is measured once per machine and model (a few seconds the first time, then cached), and every
# cell below uses it. `warm_up(n)` makes one two-step call at batch size `n`, so that the timed call after it
# measures sampling only. A timed probe then tells how long one network evaluation of one image takes here:

# %% tags=["nbval-ignore-output"]
# NBVAL_IGNORE_OUTPUT
precision = resolve_precision("auto", device, model, "sample", (3, S, S))
print(device_report(device, precision))


def warm_up(batch: int) -> None:
    """One short sampling call at this batch size, so that the next (timed) call at that size excludes one-time setup."""
    generate(model, diffusion, batch, S, num_steps=2, precision=precision)


warm_up(8)
probe = generate(model, diffusion, 8, S, num_steps=10, precision=precision)
per_image_step = probe.seconds / (8 * probe.num_steps)
print(f"{1000 * per_image_step:.1f} ms per image per step (8 images, 10 steps, after a warm-up)")


def batch_for(budget_s: float, steps: int, lo: int = 4, hi: int = 16) -> int:
    """The number of images (a multiple of 4 in [lo, hi]) that `steps` steps can sample in about `budget_s` seconds."""
    return max(lo, min(hi, int(budget_s / (steps * per_image_step)) // 4 * 4))


# %% [markdown]
# ## 1. Algorithm 2, line by line
#
# > 1: $x_T \sim \mathcal N(0, I)$
# >
# > 2: **for** $t = T, \dots, 1$ **do**
# >
# > 3: $\quad z \sim \mathcal N(0, I)$ if $t > 1$, else $z = 0$
# >
# > 4: $\quad x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\left(x_t - \frac{1-\alpha_t}{\sqrt{1-\bar\alpha_t}}\,\epsilon_\theta(x_t, t)\right) + \sigma_t z$
# >
# > 5: **end for**
# >
# > 6: **return** $x_0$
#
# Line 4 is the posterior mean of notebook 02 with $x_0$ replaced by the model's estimate
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta)/\sqrt{\bar\alpha_t}$ (Eq. 11), plus noise of variance
# $\sigma_t^2 = \tilde\beta_t$. With our 0-based index, the loop runs `t = T-1 ... 0` and adds no noise at `t = 0`.
# By hand, in float32, without clipping $\hat x_0$; the loop also records each image's mean of $\hat x_0$ (its overall
# brightness), which explains the figure below:

# %%
n = 2 if FAST else batch_for(240, 3 * diffusion.num_timesteps, lo=4, hi=8)  # 3 runs of 1000 steps: 8 images where they fit in 4 minutes
g = torch.Generator().manual_seed(0)
x_T = torch.randn(n, 3, S, S, generator=g).to(device)
zs = torch.randn(diffusion.num_timesteps, n, 3, S, S, generator=g).to(device)  # the z of every step, drawn up front
betas, alphas, ab = (getattr(diffusion, k).float().to(device) for k in ("betas", "alphas", "alphas_cumprod"))
sigmas = diffusion.posterior_variance.float().sqrt().to(device)  # sigma_t^2 = tilde-beta_t

t_start = 19 if FAST else diffusion.num_timesteps - 1  # fast mode (tests) runs only the last 20 steps
x0_level = {}  # t -> (n,): the mean of hat-x_0 over each image's pixels and channels
x = x_T.clone()
with torch.no_grad():
    for t in reversed(range(t_start + 1)):  # line 2
        z = zs[t] if t > 0 else torch.zeros_like(x)  # line 3
        eps = model(x, torch.full((n,), t, device=device))
        x0_level[t] = ((x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()).mean((1, 2, 3)).cpu()  # Eq. 11's hat-x_0
        x = (x - (1 - alphas[t]) / (1 - ab[t]).sqrt() * eps) / alphas[t].sqrt() + sigmas[t] * z  # line 4
by_hand = x.clamp(-1, 1).cpu()

x = x_T.clone()
for t in reversed(range(t_start + 1)):  # the library, one p_sample per step with the same z
    x = diffusion.p_sample(model, x, t, noise=zs[t], clip_denoised=False)
unclipped_raw = x.cpu()  # before the final clamp to [-1, 1]
library = unclipped_raw.clamp(-1, 1)
print(f"max |hand - library| = {(by_hand - library).abs().max().item():.2e}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("Algorithm 2 by hand == library (to 1e-3):", (by_hand - library).abs().max().item() < 1e-3)

# %% [markdown]
# Both give the same images, but not all of them are cars. Algorithm 2 as written never clips $\hat x_0$, and an
# image can end far outside the pixel range $[-1, 1]$: the final clamp then shows it flat black or white. The record
# says why. At $t = T-1$, $\hat x_0$ divides the model's small errors on $\epsilon$ by $\sqrt{\bar\alpha_t}$, that is
# multiplies them by $\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$ (printed below): its overall brightness is far outside
# $[-1, 1]$ for several images. Each step keeps part of that level in $x_{t-1}$, the later steps pull it back only
# partly (the figure after next), and an image that ends with its mean near or beyond $\pm 1$ has most of its pixels
# outside the range. Section 5 measures the error behind it.
#
# The library clips $\hat x_0$ to $[-1, 1]$ at every step by default (`clip_denoised=True`, as the paper's code does).
# The third row runs the same $x_T$ and the same $z$ with clipping:

# %%
x = x_T.clone()
with precision.autocast():
    for t in reversed(range(t_start + 1)):
        x = diffusion.p_sample(model, x, t, noise=zs[t])  # clip_denoised=True, the library's default
clipped = x.float().clamp(-1, 1).cpu()
print(f"sqrt((1 - bar-alpha_t) / bar-alpha_t) at t={t_start}: {((1 - ab[t_start]) / ab[t_start]).sqrt().item():.0f}")
print(f"mean of hat-x_0 per image at t={t_start}:", [f"{v:+.1f}" for v in x0_level[t_start].tolist()])
print("without clipping, the final mean per image:   ", [f"{v:+.1f}" for v in unclipped_raw.mean((1, 2, 3)).tolist()])
print("and its share of pixels outside [-1, 1]:      ", [f"{v:.0%}" for v in (unclipped_raw.abs() > 1).float().mean((1, 2, 3)).tolist()])
show_images(torch.cat([by_hand, library, clipped]), nrow=n, scale=1.0,
            title="by hand; library without clipping; library with clipping (same $x_T$, same $z$)");

# %%
fig, ax = plt.subplots(figsize=(8, 3))
ts_hand = sorted(x0_level)
ax.plot(ts_hand, torch.stack([x0_level[t] for t in ts_hand]).numpy(), lw=1)
ax.axhspan(-1, 1, color="green", alpha=0.1, label="the pixel range [-1, 1]")
ax.set_xlim(ts_hand[-1], ts_hand[0])  # time runs right to left: the sampler starts at T-1
ax.set_xlabel("index t (the sampler runs from right to left)")
ax.set_ylabel(r"mean of $\hat x_0$")
ax.set_title(r"each image's mean of $\hat x_0$ along Algorithm 2, without clipping")
ax.legend(loc="upper right")
ax.grid(alpha=0.3);

# %% [markdown]
# ## 2. Watching the reverse process
#
# `trajectory` runs one batch through `GaussianDiffusion.sample_progressive`, a generator that yields every step's
# $x_t$ and the model's current estimate of the result, $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta)/\sqrt{\bar\alpha_t}$,
# and keeps 100 evenly spaced steps as uint8 images. Drag the slider or press play: $\hat x_0$ is a blurry average
# car early on, and commits to a colour, a type and details as $t$ falls.

# %%
sampler, steps = ("ddim", 50) if FAST else ("ddpm", None)  # fast mode (tests): DDIM, 50 steps
num = 2 if FAST else batch_for(150, diffusion.num_timesteps, lo=8)  # 8 to 16 images: about 2.5 minutes of DDPM-1000 where 16 fit
warm_up(num)
traj = trajectory(model, diffusion, num, S, sampler=sampler, num_steps=steps, eta=1.0, seed=1, precision=precision,
                  progress=not FAST)
print(f"{sampler}, {len(traj['timesteps'])} of {diffusion.num_timesteps if sampler == 'ddpm' else steps} steps kept, "
      f"{num} images: {traj['seconds']:.1f} s after a warm-up ({traj['precision'].name}); "
      f"x_t {tuple(traj['x_t'].shape)} {traj['x_t'].dtype}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("first and last timestep visited:", traj["timesteps"][[0, -1]].tolist(),
      f"| samples within [-1, 1]: {bool(traj['samples'].abs().max() <= 1)}")

# %% tags=["nbval-ignore-output"]
# NBVAL_IGNORE_OUTPUT
trajectory_explorer(traj, nrow=4)

# %% [markdown]
# The same view at six slider positions, for readers of the stored notebook (top row: $x_t$; bottom: $\hat x_0$, the
# first four images; each title gives the index $t$):

# %%
last = len(traj["timesteps"]) - 1
picks = [round(f * last) for f in (0, 0.25, 0.5, 0.75, 0.9, 1.0)]  # slider positions (kept steps), not t
trajectory_static(traj, picks, nrow=2, num_images=4)
plt.show()
print("slider positions", picks, "are the indices t =", traj["timesteps"][picks].tolist())
if not FAST:
    first8 = {**traj, "x_t": traj["x_t"][:, :8], "x0_pred": traj["x0_pred"][:, :8]}  # 8 images, 30 frames: a GIF under 2 MB
    save_denoising_animation(first8, f"{ASSETS}/denoising.gif", frames=30, nrow=4, scale=2)
    print(f"denoising.gif: {Path(ASSETS, 'denoising.gif').stat().st_size / 2**20:.2f} MB")

# %% [markdown]
# ## 3. DDIM: the same marginals, fewer steps
#
# ### 3.1 A family of forward processes with DDPM's marginals
#
# $L_\text{simple}$ never uses the forward process as a chain: each training pair is drawn from the marginal
# $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)$ (Eq. 4). Song et al. (2021) ask which
# other processes have the same marginals. For any $\sigma = (\sigma_1, \dots, \sigma_T)$ with
# $\sigma_t^2 \le 1-\bar\alpha_{t-1}$, their Eq. 7 defines (in our notation: their $\alpha_t$ is our $\bar\alpha_t$)
#
# $$q_\sigma(x_{1:T} \mid x_0) = q_\sigma(x_T \mid x_0) \prod_{t=2}^{T} q_\sigma(x_{t-1} \mid x_t, x_0),
# \qquad q_\sigma(x_T \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_T}\,x_0, (1-\bar\alpha_T) I\big),$$
#
# $$q_\sigma(x_{t-1} \mid x_t, x_0) = \mathcal N\!\left(\sqrt{\bar\alpha_{t-1}}\,x_0
# + \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\;\frac{x_t - \sqrt{\bar\alpha_t}\,x_0}{\sqrt{1-\bar\alpha_t}},\ \sigma_t^2 I\right).$$
#
# It is written backwards ($x_T$ first, then each $x_{t-1}$ from $x_t$ and $x_0$) and it is not Markov: every step
# looks at $x_0$.
#
# **Every member has DDPM's marginals** (their Lemma 1). Suppose $q_\sigma(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t) I)$,
# true at $t = T$ by definition. Write $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ with
# $\epsilon \sim \mathcal N(0, I)$: the fraction in the mean above is exactly $\epsilon$, so
#
# $$x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,x_0 + \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\;\epsilon + \sigma_t z,
# \qquad z \sim \mathcal N(0, I) \text{ independent of } \epsilon,$$
#
# a Gaussian with mean $\sqrt{\bar\alpha_{t-1}}\,x_0$ and variance $(1-\bar\alpha_{t-1}-\sigma_t^2) + \sigma_t^2 = 1-\bar\alpha_{t-1}$.
# By induction from $t = T$ down, $q_\sigma(x_t \mid x_0) = q(x_t \mid x_0)$ at every $t$, whatever $\sigma$. Since
# $L_\text{simple}$ only sees these marginals, one trained $\epsilon_\theta$ serves every member of the family: $\sigma$
# is chosen at sampling time, not at training time.
#
# ### 3.2 The generative step
#
# To sample, replace the unknown $x_0$ by the model's estimate
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(x_t, t))/\sqrt{\bar\alpha_t}$. Then
# $(x_t - \sqrt{\bar\alpha_t}\,\hat x_0)/\sqrt{1-\bar\alpha_t} = \epsilon_\theta(x_t, t)$, and the step is their Eq. 12:
#
# $$x_{t-1} = \underbrace{\sqrt{\bar\alpha_{t-1}}\,\hat x_0}_{\text{predicted } x_0}
# + \underbrace{\sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\;\epsilon_\theta(x_t, t)}_{\text{direction pointing to } x_t}
# + \underbrace{\sigma_t z}_{\text{random noise}}, \qquad
# \sigma_t(\eta) = \eta\,\sqrt{\frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}}\,\sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_{t-1}}}
# \quad \text{(their Eq. 16)}.$$
#
# Nothing in the lemma needs consecutive steps: on any decreasing subsequence of indices, the previous element $s$
# takes the place of $t-1$ ($\bar\alpha_s$ for $\bar\alpha_{t-1}$), and the marginals at the visited steps are still
# Eq. 4's. That is how DDIM skips steps. `GaussianDiffusion.ddim_step(model, x_t, t, t_prev, eta)` is this update
# (`t_prev = -1` is the last step, to $x_0$, with $\bar\alpha = 1$); `sampling_timesteps("ddim", S)` lists the $S$
# evenly spaced indices it visits.
#
# ### 3.3 $\eta = 1$ on every step is DDPM with $\sigma_t^2 = \tilde\beta_t$, and only that
#
# **The variance.** On consecutive steps $\bar\alpha_t / \bar\alpha_{t-1} = \alpha_t = 1-\beta_t$, so
# $\sigma_t(1)^2 = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t = \tilde\beta_t$, the posterior variance of Eq. 7:
# DDPM's `fixed_small`.
#
# **The mean.** $1-\bar\alpha_{t-1}-\tilde\beta_t = (1-\bar\alpha_{t-1})\big(1-\frac{\beta_t}{1-\bar\alpha_t}\big)
# = \frac{(1-\bar\alpha_{t-1})(\alpha_t-\bar\alpha_t)}{1-\bar\alpha_t} = \frac{(1-\bar\alpha_{t-1})^2\,\alpha_t}{1-\bar\alpha_t}$,
# so the coefficient of $\epsilon_\theta$ is $\frac{(1-\bar\alpha_{t-1})\sqrt{\alpha_t}}{\sqrt{1-\bar\alpha_t}}$. Put
# $\epsilon_\theta = (x_t - \sqrt{\bar\alpha_t}\,\hat x_0)/\sqrt{1-\bar\alpha_t}$ and
# $\sqrt{\bar\alpha_t} = \sqrt{\alpha_t}\sqrt{\bar\alpha_{t-1}}$ into Eq. 12:
#
# $$x_{t-1} - \sigma_t z = \sqrt{\bar\alpha_{t-1}}\Big(1 - \frac{\alpha_t(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\Big)\hat x_0
# + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t
# = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,\hat x_0 + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t
# = \tilde\mu_t(x_t, \hat x_0),$$
#
# the posterior mean of Eq. 7 at $\hat x_0$: DDPM's step (`p_sample`), for any $\hat x_0$, clipped or not. DDPM's other
# choice, $\sigma_t^2 = \beta_t$ (`fixed_large`), is not a member: with the same mean, Eq. 12 forces
# $\sigma_t^2 = \tilde\beta_t$, and at the last step $1-\bar\alpha_{t-1}-\beta_t < 0$. The numbers, from one $x_t$ with one
# $z$, at several $t$ (index `t - 1 = -1` at `t = 0` is DDIM's last step):

# %%
large = GaussianDiffusion(diffusion.betas, variance_type="fixed_large")
g = torch.Generator().manual_seed(7)
x = torch.randn(4, 3, S, S, generator=g).to(device)  # an x_t (the same for every t: only the update is compared)
z = torch.randn(4, 3, S, S, generator=g).to(device)
gaps = {}
for t in (999, 500, 100, 10, 1, 0):
    ddim, _ = diffusion.ddim_step(model, x, t, t - 1, eta=1.0, noise=z)
    gaps[t] = [(ddim - d.p_sample(model, x, t, noise=z)).abs().max().item() for d in (diffusion, large)]
    print(f"t={t:3d}: max |DDIM(eta=1) - DDPM fixed_small| = {gaps[t][0]:.1e},   max |DDIM(eta=1) - DDPM fixed_large| = {gaps[t][1]:.1e}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("DDIM with eta = 1 on consecutive steps == DDPM fixed_small at every t (to 1e-5):", all(a < 1e-5 for a, _ in gaps.values()))
print("and != DDPM fixed_large where beta_t and tilde-beta_t differ (t = 1, 10; by > 1e-3):", all(gaps[t][1] > 1e-3 for t in (1, 10)))

# %% [markdown]
# ### 3.4 $\eta = 0$: a deterministic sampler
#
# With $\eta = 0$, $\sigma_t = 0$: Eq. 12 has no noise term, $x_{t-1}$ is a function of $x_t$ alone, and the whole
# sampler is a fixed map from $x_T$ to $x_0$ (Song et al. read it as a discretised ODE). Two checks: one step with
# two different $z$, and a 10-step sampler with the same $x_T$ and two different seeds.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
one, _ = diffusion.ddim_step(model, x, 500, 400, eta=0.0, noise=z)
other, _ = diffusion.ddim_step(model, x, 500, 400, eta=0.0, noise=-z)
print("one DDIM step, eta = 0, noise z and -z: identical =", torch.equal(one, other))
x_T2 = torch.randn(2, 3, S, S, generator=torch.Generator().manual_seed(8))
a = generate(model, diffusion, 2, S, num_steps=10, eta=0.0, x_T=x_T2, seed=0, precision=precision).images
b = generate(model, diffusion, 2, S, num_steps=10, eta=0.0, x_T=x_T2, seed=99, precision=precision).images
print("DDIM-10, eta = 0, same x_T, seeds 0 and 99: identical =", torch.equal(a, b))
assert torch.equal(one, other) and torch.equal(a, b)

# %% [markdown]
# ### 3.5 Fewer steps
#
# Below, the same $x_T$ through DDPM-1000 and through DDIM with 10 to 100 steps and $\eta \in \{0, 1\}$, with the time
# each took (after a warm-up at the same batch size, so the times compare).

# %%
settings = [("ddim", 10, 0.0), ("ddim", 10, 1.0)] if FAST else [("ddpm", None, 1.0)] + [("ddim", s, eta) for eta in (0.0, 1.0) for s in (10, 20, 50, 100)]
k = 4 if FAST else batch_for(60, diffusion.num_timesteps, hi=8)  # DDPM-1000 dominates the cost
x_T = torch.randn(k, 3, S, S, generator=torch.Generator().manual_seed(2)).to(device)
warm_up(k)
rows = []
for sampler, steps, eta in settings:
    out = generate(model, diffusion, k, S, sampler=sampler, num_steps=steps, eta=eta, x_T=x_T, seed=3, precision=precision)
    label = "DDPM 1000" if sampler == "ddpm" else f"DDIM {steps}, eta={eta:g}"
    rows.append((label, out))
    print(f"{label:18s} {out.seconds:6.2f} s for {k} images, {1000 * out.seconds / (k * out.num_steps):.1f} ms per image per step")
fig, axes = plt.subplots(len(rows), 1, figsize=(k * 0.9, 1.05 * len(rows)))
for ax, (label, out) in zip(axes, rows):
    show_images(out.images, nrow=k, ax=ax)
    ax.set_title(f"{label}: {out.seconds:.1f} s", fontsize=9, loc="left")
fig.tight_layout()

# %% [markdown]
# The cost per step is the same for every sampler (one network evaluation per image), so the cost is proportional to
# the number of steps: DDIM-50 costs a twentieth of DDPM-1000. Which sampler gives the best images for the cost was
# measured by `benchmarks/eval_study.py` (notebook 07; printed below: 128 samples per row, FID in the toy-cars
# features, with the real-vs-real baseline at that size). For this model $\eta = 1$ wins clearly at both step counts,
# and DDIM-20 with $\eta = 1$ is within the noise of DDIM-50. This is the reverse of Song et al.'s Table 1, where
# $\eta = 0$ had the best FID at 10-100 steps on well-trained CIFAR-10 models. bf16 does not explain it (the fp32 rows
# score the same). The benchmark's model is this notebook's, trained for the number of steps printed below, a short run:
# a deterministic sampler carries every error of a young model to the end, while each stochastic step adds fresh noise
# that the next steps correct (section 5 measures one such error). So the command line's default is DDIM, 50 steps,
# $\eta = 1$.

# %%
study = json.loads(Path("../benchmarks/eval_study.json").read_text())
meta = study["meta"]
# a study that ran before these weights were renamed records their former file name
name = meta["checkpoint"] if meta["checkpoint"] == checkpoint.name else f"{checkpoint.name} (the study's record: {meta['checkpoint']})"
print(f"benchmark: {name}, trained for {meta['checkpoint_steps']:,} steps; FID at 128 samples (± bootstrap std)")
baseline = next(b for b in study["baselines"] if b["num_samples"] == 128)
print(f"  real vs real: {baseline['fid']:.1f} ± {baseline['spread']['fid']:.1f}")
for r in study["rows"]:
    if r["study"] in ("samplers", "precision") and r["num_samples"] == 128 and r["steps"] in (20, 50):
        print(f"  DDIM-{r['steps']}, eta = {r['eta']:g}, {r['sampling_precision']}: {r['fid']:.1f} ± {r['spread']['fid']:.1f}")

# %% [markdown]
# ## 4. The two variance choices of the paper
#
# Ho et al. tried $\sigma_t^2 = \beta_t$ (`fixed_large`, optimal if $x_0$ were pure noise) and
# $\sigma_t^2 = \tilde\beta_t$ (`fixed_small`, optimal if $x_0$ were one fixed point) and found similar results; only
# the second is a DDIM sampler (section 3.3). The two differ only where $\beta_t$ and $\tilde\beta_t$ differ, at
# small $t$:

# %%
pair = [generate(model, d, k, S, sampler="ddpm", x_T=x_T, seed=4, precision=precision).images
        for d in ((diffusion, large) if not FAST else ())]  # 2 x 1000 steps: skipped in fast mode (tests)
pair = pair or [x_T.cpu().clamp(-1, 1)] * 2
fig, axes = plt.subplots(2, 1, figsize=(k * 0.9, 2.2))
show_images(pair[0], nrow=k, ax=axes[0], title=r"$\sigma_t^2 = \tilde\beta_t$ (fixed_small, the default)")
show_images(pair[1], nrow=k, ax=axes[1], title=r"$\sigma_t^2 = \beta_t$ (fixed_large)")
fig.tight_layout()
print(f"mean |difference| between the two: {(pair[0] - pair[1]).abs().mean().item():.3f} (pixel range 2)")

# %% [markdown]
# ## 5. A gallery, and a sanity check against the data
#
# Up to 128 samples (as many as take about 80 s here) with the command line's default sampler (DDIM, 50 steps,
# $\eta = 1$), 64 of them shown. Beside them,
# the nearest training image to each of the first samples (in pixel space): a model that memorised its data would
# show copies.

# %%
n_gallery = 4 if FAST else batch_for(80, 50, lo=32, hi=128)  # 128 where they take under ~80 s
warm_up(n_gallery)
gallery_steps = 20 if FAST else 50  # fast mode (tests): fewer steps
gallery = generate(model, diffusion, n_gallery, S, num_steps=gallery_steps, eta=1.0, seed=5, precision=precision)
fig = show_images(gallery.images[:64], nrow=8, scale=1.2,
                  title=f"DDIM {gallery_steps} steps, eta = 1: {min(64, n_gallery)} of {n_gallery} samples ({gallery.seconds:.0f} s for {n_gallery})")
plt.show()

# %%
train = load_dataset("toy_cars", image_size=S, num_images=1024 if FAST else (config.num_images or 8144))
real = from_uint8(train.images)
d = torch.cdist(gallery.images[:8].flatten(1), real.flatten(1))  # (8, N) pixel distances
nearest = real[d.argmin(1)]
show_images(torch.cat([gallery.images[:8], nearest]), nrow=min(8, n_gallery), title="top: samples, bottom: nearest training image", scale=1.0);

# %% [markdown]
# ### 5.1 The colours, measured
#
# The gallery looks paler than the data: many skies are a hazy white-blue, and a few images are very dark. Measured
# instead of judged by eye, for the data and for several samplers started from the same $x_T$ (one seed): the mean
# and standard deviation of each colour channel over all pixels; the spread (standard deviation over images) of
# each image's mean colour; and each image's brightness (the mean of its pixels, in $[0, 1]$) against the data's
# 5th and 95th percentiles, beyond each of which lies 5% of the data. A mean over $n$ images has a standard error of
# about (spread) $/\sqrt n$, printed as "s.e.".

# %%
brightness_of = lambda x: (x.mean((1, 2, 3)) + 1) / 2  # (N,) each image's brightness in [0, 1]
p5, p95 = torch.quantile(brightness_of(real), torch.tensor([0.05, 0.95])).tolist()


def colour_stats(x: torch.Tensor) -> dict:
    """Colour statistics of images (N, 3, H, W) in [-1, 1]."""
    per_image = x.mean((2, 3))  # (N, 3): each image's mean colour
    b = brightness_of(x)
    return {
        "n": len(x),
        "mean": x.mean((0, 2, 3)),
        "se": per_image.std(0) / len(x) ** 0.5,
        "std": x.std((0, 2, 3)),
        "spread": per_image.std(0),
        "brighter": (b > p95).float().mean().item(),
        "darker": (b < p5).float().mean().item(),
        "brightness": b,
    }


n_colour = 4 if FAST else batch_for(100, 80, lo=32, hi=128)  # 4 samplers, 80 steps in all per image
colour = {
    "data": colour_stats(real),
    f"{'DDIM 50' if FAST else 'DDPM 1000'} (section 2)": colour_stats(traj["samples"]),
    f"DDIM {gallery_steps}, eta=1 (gallery)": colour_stats(gallery.images),
}
for steps, eta, clip in [(10, 0.0, True), (10, 1.0, True)] + ([] if FAST else [(50, 0.0, True), (10, 1.0, False)]):
    out = generate(model, diffusion, n_colour, S, num_steps=steps, eta=eta, seed=5, clip_denoised=clip, precision=precision)
    colour[f"DDIM {steps}, eta={eta:g}" + ("" if clip else ", no clipping")] = colour_stats(out.images)

signed = lambda v: " ".join(f"{x:+.2f}" for x in v.tolist())
plain = lambda v: " ".join(f"{x:.2f}" for x in v.tolist())
print(f"{'':30s}{'n':>5s}  {'mean R, G, B':^17s}  {'s.e.':>4s}  {'pixel std R, G, B':^17s}  {'image-mean spread':^17s}  {'> data p95':>10s}  {'< data p5':>9s}")
for name, c in colour.items():
    print(f"{name:30s}{c['n']:5d}  {signed(c['mean']):^17s}  {c['se'].max().item():4.2f}  {plain(c['std']):^17s}  {plain(c['spread']):^17s}"
          f"  {c['brighter']:10.0%}  {c['darker']:9.0%}")
clipped_rows = [c for name, c in colour.items() if name != "data" and "no clipping" not in name]
ratios = torch.stack([c["spread"] / colour["data"]["spread"] for c in clipped_rows])
print(f"\nthe samplers with clipping: image-mean spread {ratios.min():.1f} to {ratios.max():.1f} times the data's; "
      f"{min(c['brighter'] for c in clipped_rows):.0%} to {max(c['brighter'] for c in clipped_rows):.0%} brighter than the data's p95, "
      f"{min(c['darker'] for c in clipped_rows):.0%} to {max(c['darker'] for c in clipped_rows):.0%} darker than its p5 (5% each for the data)")
gaps = {name: ((c["mean"] - colour["data"]["mean"]).abs() / c["se"]).max().item() for name, c in colour.items() if name != "data"}
widest = max(gaps, key=gaps.get)
print(f"largest gap between a row's channel mean and the data's: {gaps[widest]:.1f} standard errors ({widest})")

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1.4, 1]})
names = list(colour)
width = 0.8 / len(names)
for i, name in enumerate(names):
    c = colour[name]
    axes[0].bar(np.arange(3) + (i - len(names) / 2 + 0.5) * width, c["mean"].numpy(), width, yerr=2 * c["se"].numpy(),
                capsize=2, label=f"{name} (n={c['n']})", color="k" if name == "data" else None)
axes[0].set_xticks(range(3), ["red", "green", "blue"])
axes[0].set_ylabel("channel mean (pixels in [-1, 1])")
axes[0].set_title("channel means, ± 2 s.e.")
axes[0].legend(fontsize=7, ncol=2)
axes[0].grid(alpha=0.3, axis="y")
bins = np.linspace(0, 1, 26)
for name in ["data", f"DDIM {gallery_steps}, eta=1 (gallery)", "DDIM 10, eta=0"]:
    axes[1].hist(colour[name]["brightness"].numpy(), bins=bins, density=True, histtype="step", lw=1.5, label=name)
for p in (p5, p95):
    axes[1].axvline(p, color="k", ls=":", lw=1)
axes[1].set_xlabel("image brightness (mean pixel, in [0, 1]); dotted: the data's 5th and 95th percentiles")
axes[1].set_title("brightness of each image")
axes[1].legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# ### 5.2 Why: the model's error on each image's mean colour
#
# An image's mean colour, its lowest spatial frequency, is the first thing the noise lets through: averaged over the
# $HW$ pixels the noise's standard deviation falls by $\sqrt{HW} = 32$, so the image mean has a signal-to-noise ratio
# $\mathrm{snr}_t = \bar\alpha_t\,\mathrm{Var}(\text{image mean}) \,/\, \big((1-\bar\alpha_t)/HW\big)$ in $x_t$, far above
# a single pixel's. The sampler fixes each image's overall colour where $\mathrm{snr}_t$ nears 1, at large $t$. There
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta)/\sqrt{\bar\alpha_t}$ multiplies any error of $\epsilon_\theta$
# on the image mean by $\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$ (157 at $t = 999$).
#
# How small can that error be? Guessing the noise's image mean from $x_t$'s image mean alone, the best linear guess
# leaves an error variance of $\frac{1}{HW}\cdot\frac{\mathrm{snr}_t}{1+\mathrm{snr}_t}$ (Gaussian conditioning); the
# best predictor does at least as well. Below, on real images noised at several $t$: (a) the model's error on the
# noise's image mean against that bound; (b) the spread of the image means of $\hat x_0$ (without and with
# clipping) against the data's, which the optimal $\hat x_0 = \mathbb E[x_0 \mid x_t]$ never exceeds; (c) the
# brightness of $\hat x_0$ along the section-2 trajectories, to see when each image settles.

# %%
x0 = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(6))[: 16 if FAST else 128]]
ts_probe = [999, 700, 400, 100] if FAST else [999, 950, 900, 850, 800, 750, 700, 650, 600, 500, 400, 300, 200, 100]
var_mean = x0.mean((2, 3)).var(0).mean().item()  # Var(image mean), averaged over the channels
g = torch.Generator().manual_seed(9)
probe_rows = []
for t in ts_probe:
    noise = torch.randn(x0.shape, generator=g)
    x_t = diffusion.q_sample(x0, t, noise)
    with torch.no_grad(), precision.autocast():
        eps = model(x_t.to(device), torch.full((len(x0),), t, device=device)).float().cpu()
    x0_pred = diffusion.predict_x0_from_noise(x_t, t, eps)
    a = diffusion.alphas_cumprod[t].item()
    snr = a * var_mean / ((1 - a) / (S * S))
    probe_rows.append(
        {
            "t": t,
            "snr": snr,
            "error": (eps - noise).mean((2, 3)).std().item(),
            "bound": (snr / (1 + snr) / (S * S)) ** 0.5,
            "raw": x0_pred.mean((2, 3)).std(0).mean().item(),
            "clipped": x0_pred.clamp(-1, 1).mean((2, 3)).std(0).mean().item(),
        }
    )
data_spread = var_mean**0.5
for r in probe_rows:
    print(f"t={r['t']:3d}: snr {r['snr']:8.3f} | error on the noise's image mean {r['error']:.4f}, bound {r['bound']:.4f} "
          f"({r['error'] / r['bound']:4.1f}x) | spread of hat-x_0's image means {r['raw']:.2f}, clipped {r['clipped']:.2f} (data {data_spread:.2f})")

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
tt = [r["t"] for r in probe_rows]
axes[0].semilogy(tt, [r["error"] for r in probe_rows], "o-", label=r"model: std of $\epsilon_\theta - \epsilon$, image mean")
axes[0].semilogy(tt, [r["bound"] for r in probe_rows], "k--", label="best linear guess from $x_t$'s image mean")
axes[0].set_title("(a) error on the noise's image mean")
axes[1].semilogy(tt, [r["raw"] for r in probe_rows], "o-", label=r"$\hat x_0$")
axes[1].semilogy(tt, [r["clipped"] for r in probe_rows], "o-", label=r"$\hat x_0$ clipped to [-1, 1]")
axes[1].axhline(data_spread, color="k", ls="--", label="the data (an upper bound for the optimal)")
axes[1].set_title(r"(b) spread of the image means of $\hat x_0$")
levels = brightness_of(from_uint8(traj["x0_pred"].flatten(0, 1))).view(len(traj["timesteps"]), -1)  # (steps, B)
axes[2].plot(traj["timesteps"].numpy(), levels.numpy(), lw=1)
axes[2].axhspan(p5, p95, color="k", alpha=0.1, label="the data's 5th to 95th percentile")
axes[2].set_title(r"(c) brightness of $\hat x_0$ along section 2's sampler")
off = (levels - levels[-1]).abs() > 0.1  # (steps, B): still more than 0.1 away from the final brightness
settle = [int(traj["timesteps"][min(int(torch.nonzero(col).max()) + 1 if col.any() else 0, len(col) - 1)]) for col in off.T]
snr_all = diffusion.alphas_cumprod * var_mean / ((1 - diffusion.alphas_cumprod) / (S * S))  # the image mean's snr_t
print(f"the image mean's snr_t is at least 1 up to t = {int(torch.nonzero(snr_all >= 1).max())}; each image's brightness "
      f"stays within 0.1 of its final value from t = {settle}")
for ax in axes:
    ax.set_xlim(max(tt[0], int(traj["timesteps"][0])), 0)  # the sampler's direction: from t = T-1 down to 0
    ax.set_xlabel("index t")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# **What the numbers say** (the lines printed above). Where the image mean is clearly visible ($\mathrm{snr}_t \ge 1$,
# from $t = 600$ down) the model's error on it is at or near the bound. At high noise it is not: the error stays near
# 0.02 while the bound falls more than tenfold (the ratio printed for $t = 999$; panel a). This young network has not
# learned to predict the mean of the noise there; the image mean is 3 of the $3HW$ numbers in $L_\text{simple}$, so
# the loss barely notices it. $\hat x_0$ multiplies the error by $\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$: at $t = 999$
# the image means of $\hat x_0$ spread more than ten times as wide as the data's, and still about twice as wide after
# clipping (panel b), where the optimal denoiser's would spread less than the data's. The sampler settles each image's
# brightness near the index where the image mean's $\mathrm{snr}_t$ reaches 1, at high noise (panel c; the last printed
# line gives both), so the error made there stays in the samples. The summary lines under the table of 5.1 measure
# what is left: every sampler with clipping spreads the image means wider than the data's, and puts far more than the
# data's 5% of its images beyond each of the data's 5% tails.
#
# So the effect is an **exposure error**: each image's overall brightness, its lowest spatial frequency, is spread
# too wide. The pale, hazy skies are its bright end, the very dark images its dark end. The channel means themselves
# stay close to the data's, within a couple of standard errors (the last line under the table gives the largest gap):
# what is wrong is how far each image's brightness strays, not the average colour.
#
# **Which sampler settings help** (the spread column of the table of 5.1, all from the same $x_T$): clipping $\hat x_0$
# matters most (compare DDIM-10 with $\eta = 1$ with and without it); $\eta = 1$ spreads less than $\eta = 0$: a
# deterministic sampler carries an early error to the end, while fresh noise lets the later, accurate steps revise
# part of it; 50 steps spread a little less than 10 with $\eta = 1$. The DDPM-1000 row holds only the few images of
# section 2 (its $n$ is printed). No setting brings the spread down to the data's: the cure belongs to training, a
# network that predicts the noise's image mean at high $t$.

# %% [markdown]
# ## 6. The cure is in training
#
# Notebook 08 changes the recipe one measured change at a time and samples the model of the improved recipe,
# `ddpm_lib/weights/pretrained_toy_cars_32.pt`, with the colour measurements of 5.1. The colour problem of 5.2 is cured
# there, by the recipe changes that the measurements chose, not by any sampler setting.

# %% [markdown]
# ## Summary
#
# - Algorithm 2 runs the learned reverse chain from $x_T \sim \mathcal N(0, I)$; each step is the posterior mean at the
#   predicted $\hat x_0$ plus fresh noise. Run as written, without clipping $\hat x_0$, some images end flat black or
#   white; clipping $\hat x_0$ to $[-1, 1]$ at each step keeps them in range.
# - DDIM (Song et al. 2021) is a family of non-Markovian processes with DDPM's marginals $q(x_t \mid x_0)$, so one
#   trained $\epsilon_\theta$ serves all of them. Its step (Eq. 12) may skip indices; $\sigma_t(\eta)$ (Eq. 16) sets the
#   fresh noise. $\eta = 1$ on every step is exactly DDPM with $\sigma_t^2 = \tilde\beta_t$ (checked to float
#   precision); $\eta = 0$ is deterministic.
# - The cost is proportional to the number of steps. For this briefly trained model (the paper's recipe after 1,600
#   steps) $\eta = 1$ scores best at 20 and 50 steps (the benchmark of notebook 07), the reverse of what Song et al.
#   found for well-trained models.
# - The two variance choices give nearly the same samples.
# - The samples' brightness is spread wider than the data's (too many pale and too many dark images): the young
#   model errs on the mean of the noise at high $t$, and $\hat x_0$ multiplies that error by up to 157 just where the
#   sampler fixes each image's overall colour. Clipping and $\eta = 1$ reduce the spread; no sampler setting removes it.
#   Notebook 08 removes it by changing the training recipe.
#
# ## Exercises
#
# Each exercise has a cell for your answer and a cell that checks it. The next cell imports what they use and builds
# a known denoiser: for data whose pixels are independent $\mathcal N(m, s^2)$, the optimal $\epsilon_\theta$ is known
# in closed form (notebook 03), $\epsilon^*(x_t, t) = \mathbb E[\epsilon \mid x_t] = \sqrt{1-\bar\alpha_t}\,
# (x_t - \sqrt{\bar\alpha_t}\,m)/(\bar\alpha_t s^2 + 1 - \bar\alpha_t)$. It takes the place of the network, so every
# sampler runs in milliseconds. The section runs on its own, without the cells above. Each answer computes by hand
# what the library's samplers compute: the checks run it with those library functions refused (`refusing` from
# `ddpm_lib.grading`, the list `SAMPLER_LIBRARY`), then compare its values with the library's.

# %%
import collections
import math

import numpy as np
import torch

import ddpm_lib.sampling
from ddpm_lib import GaussianDiffusion, make_betas
from ddpm_lib.grading import refusing


# the reverse process's steps and the schedules of visited steps: what the exercises re-derive
SAMPLER_LIBRARY = [
    (GaussianDiffusion, name)
    for name in (
        "q_posterior",
        "predict_x0_from_noise",
        "predict_noise_from_x0",
        "p_mean_variance",
        "_p_sample",
        "p_sample",
        "ddim_step",
        "ddim_timesteps",
        "sampling_timesteps",
        "sample_progressive",
        "sample",
    )
] + [(ddpm_lib.sampling, "generate"), (ddpm_lib.sampling, "trajectory")]

diffusion = GaussianDiffusion(make_betas("linear", 1000))  # T = 1000; its constants are float64
ab = diffusion.alphas_cumprod  # bar-alpha_t, shape (1000,)
DATA_MEAN, DATA_STD = 0.3, 0.2  # the data: every pixel independent N(m, s^2)


def gaussian_eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The optimal eps_theta(x_t, t) for the Gaussian data: x_t (B, C, H, W), t a LongTensor (B,)."""
    a = ab.to(x_t.dtype)[t].view(-1, *[1] * (x_t.dim() - 1))  # (B, 1, 1, 1)
    return (1 - a).sqrt() * (x_t - a.sqrt() * DATA_MEAN) / (a * DATA_STD**2 + 1 - a)


g = torch.Generator().manual_seed(0)
x_t = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)  # a batch at some step
z = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)  # that step's fresh noise
x_T = torch.randn(20000, 1, 1, 1, generator=g, dtype=torch.float64)  # 20,000 one-pixel images of pure noise

# %% [markdown]
# **Exercise 1. One DDPM step by hand.** Write `ddpm_step(x_t, t, z)`: Algorithm 2, line 4, from `x_t` (float64,
# `(B, C, H, W)`) at the integer index `t` to $x_{t-1}$, with $\epsilon_\theta$ = `gaussian_eps`,
# $\sigma_t^2 = \tilde\beta_t$ and the fresh noise `z`; no clipping, and no noise at `t = 0`. Use the schedule of
# `diffusion` (`diffusion.betas`, `ab`), not `p_sample`. Return a tensor of `x_t`'s shape.

# %% nbgrader={"grade": false, "grade_id": "ex1-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def ddpm_step(x_t, t, z):
    beta, a_t = diffusion.betas[t].item(), ab[t].item()
    a_prev = ab[t - 1].item() if t > 0 else 1.0
    sigma = math.sqrt(beta * (1 - a_prev) / (1 - a_t))  # tilde-beta_t (Eq. 7), 0 at t = 0
    eps = gaussian_eps(x_t, torch.full((len(x_t),), t))
    mean = (x_t - beta / math.sqrt(1 - a_t) * eps) / math.sqrt(1 - beta)  # Algorithm 2, line 4
    return mean + sigma * z if t > 0 else mean


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex1-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
for t_ in (999, 500, 1, 0):
    expected = diffusion.p_sample(gaussian_eps, x_t, t_, noise=z, clip_denoised=False)
    with refusing(*SAMPLER_LIBRARY, answer=ddpm_step):
        got = ddpm_step(x_t, t_, z)
    assert got.shape == x_t.shape, f"ddpm_step should return shape {tuple(x_t.shape)}, got {tuple(got.shape)}"
    err = (got - expected).abs().max().item()
    assert err < 1e-10, f"at t={t_}, ddpm_step differs from p_sample by {err:.2e}" + (" (no noise at t = 0)" if t_ == 0 else "")

# %% [markdown]
# **Exercise 2. $\sigma_t(\eta)$, Eq. 16.** Write `ddim_sigma(t, t_prev, eta)`, returning a Python float: the noise
# scale of a DDIM step from index `t` to index `t_prev` < `t` (not necessarily `t - 1`), where `t_prev = -1` means the
# last step, to $x_0$, with $\bar\alpha = 1$.

# %% nbgrader={"grade": false, "grade_id": "ex2-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def ddim_sigma(t, t_prev, eta):
    a_t = ab[t].item()
    a_prev = ab[t_prev].item() if t_prev >= 0 else 1.0
    return eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex2-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
for t_, t_prev_, eta_ in [(999, 979, 1.0), (500, 400, 0.5), (10, 9, 1.0), (20, -1, 1.0), (700, 600, 0.3)]:
    noisy = diffusion.ddim_step(gaussian_eps, x_t, t_, t_prev_, eta_, noise=z, clip_denoised=False)[0]
    quiet = diffusion.ddim_step(gaussian_eps, x_t, t_, t_prev_, eta_, noise=torch.zeros_like(z), clip_denoised=False)[0]
    sigma_library = ((noisy - quiet) * z).sum().item() / (z * z).sum().item()  # the library's step adds sigma * z
    with refusing(*SAMPLER_LIBRARY, answer=ddim_sigma):
        got = float(ddim_sigma(t_, t_prev_, eta_))
    assert abs(got - sigma_library) < 1e-9, f"ddim_sigma({t_}, {t_prev_}, {eta_}) = {got:.6g}, but the library's step uses {sigma_library:.6g}"
for t_ in (999, 300, 1):
    with refusing(*SAMPLER_LIBRARY, answer=ddim_sigma):
        got = ddim_sigma(t_, t_ - 1, 1.0)
    assert abs(got**2 - diffusion.posterior_variance[t_].item()) < 1e-12, "with eta = 1 on consecutive steps, sigma^2 is tilde-beta_t"

# %% [markdown]
# **Exercise 3. The DDIM step by hand, Eq. 12.** Write `ddim_update(x_t, t, t_prev, eta, z)`: from `x_t` at index `t`
# to index `t_prev` (`-1`: to $x_0$), with $\epsilon_\theta$ = `gaussian_eps`, $\hat x_0$ not clipped, $\sigma$ from
# your `ddim_sigma` and the fresh noise `z` (`x_t`'s shape). Return a tensor of `x_t`'s shape.

# %% nbgrader={"grade": false, "grade_id": "ex3-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def ddim_update(x_t, t, t_prev, eta, z):
    a_t = ab[t].item()
    a_prev = ab[t_prev].item() if t_prev >= 0 else 1.0
    sigma = ddim_sigma(t, t_prev, eta)
    eps = gaussian_eps(x_t, torch.full((len(x_t),), t))
    x0_pred = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # Eq. 4 solved for x_0
    return math.sqrt(a_prev) * x0_pred + math.sqrt(1 - a_prev - sigma**2) * eps + sigma * z  # Eq. 12


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex3-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
for t_, t_prev_, eta_ in [(999, 899, 0.0), (999, 899, 1.0), (500, 250, 0.5), (30, 29, 1.0), (20, -1, 0.0), (20, -1, 1.0)]:
    expected = diffusion.ddim_step(gaussian_eps, x_t, t_, t_prev_, eta_, noise=z, clip_denoised=False)[0]
    with refusing(*SAMPLER_LIBRARY, answer=ddim_update):
        got = ddim_update(x_t, t_, t_prev_, eta_, z)
    assert got.shape == x_t.shape, f"ddim_update should return shape {tuple(x_t.shape)}, got {tuple(got.shape)}"
    err = (got - expected).abs().max().item()
    assert err < 1e-9, f"ddim_update(x_t, {t_}, {t_prev_}, {eta_}, z) differs from ddim_step by {err:.2e}"

# %% [markdown]
# **Exercise 4. The steps DDIM visits.** With $S$ steps out of $T$, DDIM visits $S$ indices spread evenly over
# $[0, T-1]$, both ends included, each rounded to the nearest integer (a half to the even neighbour, as numpy rounds),
# from $T-1$ down to 0; with $S = 1$ it visits $T-1$ only. Write `ddim_pairs(T, S)`: the list of the $S$ pairs
# `(t, t_prev)` of Python ints that the sampler steps through, in order, the last one being `(0, -1)` (or `(T - 1, -1)`
# when $S = 1$). The check refuses the library's `ddim_timesteps` and `sampling_timesteps`.

# %% nbgrader={"grade": false, "grade_id": "ex4-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def ddim_pairs(T, S):
    visits = [T - 1] if S == 1 else [int(v) for v in np.round(np.linspace(0, T - 1, S))][::-1]
    return list(zip(visits, visits[1:] + [-1]))


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex4-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
for T_, S_ in [(1000, 1), (1000, 2), (1000, 7), (1000, 10), (1000, 50), (1000, 1000), (300, 7), (300, 64), (50, 49)]:
    visits = GaussianDiffusion(make_betas("linear", T_)).sampling_timesteps("ddim", S_)
    expected = list(zip(visits, visits[1:] + [-1]))
    with refusing(*SAMPLER_LIBRARY, answer=ddim_pairs):
        got = [(int(a), int(b)) for a, b in ddim_pairs(T_, S_)]
    assert len(got) == S_, f"ddim_pairs({T_}, {S_}) should hold {S_} pairs, got {len(got)}"
    first = next((i for i, (p, q) in enumerate(zip(got, expected)) if p != q), None)
    assert first is None, f"ddim_pairs({T_}, {S_}): pair {first} is {got[first]}, the library steps through {expected[first]}"

# %% [markdown]
# **Exercise 5. How many deterministic steps does the data's spread need?** Write `ddim_sample(x_T, S)`:
# deterministic DDIM ($\eta = 0$) over $S$ steps from `x_T`, with your `ddim_update` and `ddim_pairs` ($T = 1000$),
# returning the final $x_0$ unclamped, of `x_T`'s shape. Then fill the dict `ddim_stds`, mapping each $S$ in
# `(10, 20, 50, 100, 250, 1000)` to the standard deviation (a float) of `ddim_sample(x_T, S)` over the 20,000 pixels,
# and set `enough_steps` to the smallest of those $S$ whose standard deviation is within 2% of the data's
# $s = 0.2$. *Hint for the discussion:* where does the data's signal-to-noise ratio $\bar\alpha_t s^2/(1-\bar\alpha_t)$
# cross 1, and how many of DDIM's steps lie below that index?

# %% nbgrader={"grade": false, "grade_id": "ex5-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def ddim_sample(x_T, S):
    x = x_T
    for t, t_prev in ddim_pairs(1000, S):
        x = ddim_update(x, t, t_prev, 0.0, torch.zeros_like(x))
    return x


ddim_stds = {S: ddim_sample(x_T, S).std().item() for S in (10, 20, 50, 100, 250, 1000)}
enough_steps = min(S for S, std in ddim_stds.items() if abs(std - DATA_STD) <= 0.02 * DATA_STD)
### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex5-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
library_stds = {}
for S_ in (10, 20, 50, 100, 250, 1000):
    (last,) = collections.deque(diffusion.sample_progressive(gaussian_eps, tuple(x_T.shape), "ddim", S_, 0.0, x_T=x_T, clip_denoised=False), maxlen=1)
    library_stds[S_] = last.x_prev.std().item()
for S_ in (10, 250):
    with refusing(*SAMPLER_LIBRARY, answer=ddim_sample):
        mine = ddim_sample(x_T, S_)
    assert mine.shape == x_T.shape, f"ddim_sample should return shape {tuple(x_T.shape)}, got {tuple(mine.shape)}"
    assert abs(mine.std().item() - library_stds[S_]) < 1e-9, f"ddim_sample(x_T, {S_}) differs from the library's deterministic DDIM"
assert set(ddim_stds) == set(library_stds), f"ddim_stds should have the keys {sorted(library_stds)}"
for S_, std in library_stds.items():
    assert abs(ddim_stds[S_] - std) < 1e-9, f"ddim_stds[{S_}] = {ddim_stds[S_]:.4f} is not the std of ddim_sample(x_T, {S_})"
expected_steps = min(S_ for S_, std in library_stds.items() if abs(std - DATA_STD) <= 0.02 * DATA_STD)
assert enough_steps == expected_steps, f"enough_steps = {enough_steps}: check which standard deviations lie within 2% of {DATA_STD}"
