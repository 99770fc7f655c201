# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Sampling: from noise to cars
#
# **Goal.** Run the reverse process. Write Algorithm 2 by hand and check it against the library, watch a batch of
# noise become cars with a slider over $t$, then compare the paper's 1000-step sampler with DDIM (Song et al. 2021),
# which needs 10 to 100 steps, and the paper's two choices of the reverse variance.
#
# **The model.** The checkpoint trained in notebook 04 when it has trained at least as long as the pretrained
# toy-cars model shipped in `assets/` (trained for 3000 steps with `python -m ddpm_lib.train`, see the README);
# otherwise the pretrained one.

# %%
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from ddpm_lib import GaussianDiffusion
from ddpm_lib.data import load_dataset
from ddpm_lib.plotting import save_denoising_animation, show_images
from ddpm_lib.training import load_checkpoint, load_ema_model
from ddpm_lib.widgets import trajectory_explorer

FAST = os.environ.get("DDPM_FAST") == "1"
ASSETS = "../assets"
PRETRAINED = Path(ASSETS) / "pretrained_toy_cars_32.pt"
FROM_04 = Path("../runs/notebook_04/checkpoint.pt")

candidates = [PRETRAINED] + ([FROM_04] if FROM_04.exists() and not FAST else [])
checkpoint = max(candidates, key=lambda p: load_checkpoint(p)["step"])  # the longest-trained; ties go to the pretrained
model, diffusion, config = load_ema_model(checkpoint)
print(f"sampling from {checkpoint}, trained for {load_checkpoint(checkpoint)['step']} steps")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print(f"{config.model} U-Net, {config.image_size}px, T={diffusion.num_timesteps}, {config.schedule} schedule, "
      f"variance {diffusion.variance_type}, in eval mode: {not model.training}")

# %% [markdown]
# ## 1. Algorithm 2, line by line
#
# > 1: $x_T \sim \mathcal N(0, I)$
# > 2: **for** $t = T, \dots, 1$ **do**
# > 3: $z \sim \mathcal N(0, I)$ if $t > 1$, else $z = 0$
# > 4: $x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\left(x_t - \frac{1-\alpha_t}{\sqrt{1-\bar\alpha_t}}\,\epsilon_\theta(x_t, t)\right) + \sigma_t z$
# > 5: **end for** · 6: **return** $x_0$
#
# Line 4 is the posterior mean of notebook 02 with $x_0$ replaced by the model's estimate $\hat x_0$ (Eq. 11), plus
# noise of variance $\sigma_t^2$. With our 0-based index, the loop runs `t = T-1 ... 0` and adds no noise at `t = 0`.
# By hand, in float32, without clipping $\hat x_0$:

# %%
n = 4 if FAST else 8
g = torch.Generator().manual_seed(0)
x_T = torch.randn(n, 3, 32, 32, generator=g)
zs = torch.randn(diffusion.num_timesteps, n, 3, 32, 32, generator=g)  # the z of every step, drawn up front
betas, alphas, ab = (getattr(diffusion, k).float() for k in ("betas", "alphas", "alphas_cumprod"))
sigmas = diffusion.posterior_variance.float().sqrt()  # sigma_t^2 = tilde-beta_t

t_start = 199 if FAST else diffusion.num_timesteps - 1  # fast mode (tests) checks only the last 200 steps
x = x_T.clone()
with torch.no_grad():
    for t in reversed(range(t_start + 1)):  # line 2
        z = zs[t] if t > 0 else torch.zeros_like(x)  # line 3
        eps = model(x, torch.full((n,), t))
        x = (x - (1 - alphas[t]) / (1 - ab[t]).sqrt() * eps) / alphas[t].sqrt() + sigmas[t] * z  # line 4
by_hand = x.clamp(-1, 1)

x = x_T.clone()
for t in reversed(range(t_start + 1)):  # the library, one p_sample per step with the same z
    x = diffusion.p_sample(model, x, t, noise=zs[t], clip_denoised=False)
library = x.clamp(-1, 1)
print(f"max |hand - library| = {(by_hand - library).abs().max().item():.2e}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("Algorithm 2 by hand == library (to 1e-3):", (by_hand - library).abs().max().item() < 1e-3)

# %% [markdown]
# The same four-to-eight cars both ways:

# %%
show_images(torch.cat([by_hand, library]), nrow=n, title="top: by hand, bottom: library", scale=1.0);

# %% [markdown]
# ## 2. Watching the reverse process
#
# `sample(..., return_trajectory=True)` keeps $x_t$ and the model's current estimate of the result,
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta)/\sqrt{\bar\alpha_t}$, at every step. Drag the slider:
# $\hat x_0$ is a blurry average car early on, and commits to a colour, a type and details as $t$ falls. We sample in
# bfloat16 (autocast), which is ~3x faster on this CPU and gives the same pictures.

# %%
num, sampler, steps = (4, "ddim", 50) if FAST else (16, "ddpm", None)  # fast mode (tests): DDIM, 50 steps
start = time.perf_counter()
with torch.autocast("cpu", dtype=torch.bfloat16):
    samples, trajectory = diffusion.sample(model, (num, 3, 32, 32), sampler, steps, eta=1.0, generator=torch.Generator().manual_seed(1),
                                           return_trajectory=True, progress=not FAST)
print(f"{sampler}, {len(trajectory['timesteps'])} steps, {num} images: {time.perf_counter() - start:.1f} s; "
      f"trajectory x_t {tuple(trajectory['x_t'].shape)}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("first and last timestep visited:", trajectory["timesteps"][[0, -1]].tolist(),
      f"| samples within [-1, 1]: {bool(samples.abs().max() <= 1)}")

# %% tags=["nbval-ignore-output"]
# NBVAL_IGNORE_OUTPUT
trajectory_explorer(trajectory)

# %% [markdown]
# The same at fixed steps, for readers of the stored notebook (top row of each pair: $x_t$; bottom: $\hat x_0$):

# %%
last = len(trajectory["timesteps"]) - 1
picks = [round(f * last) for f in (0, 0.25, 0.5, 0.75, 0.9, 1.0)]  # for DDPM: t = 999, 749, 499, 249, 99, 0
fig, axes = plt.subplots(2, len(picks), figsize=(2.3 * len(picks), 5))
for col, i in enumerate(picks):
    t = int(trajectory["timesteps"][i])
    show_images(trajectory["x_t"][i, :4].clamp(-1, 1), nrow=2, title=f"$x_t$, t={t}", ax=axes[0, col])
    show_images(trajectory["x0_pred"][i, :4], nrow=2, title=rf"$\hat x_0$, t={t}", ax=axes[1, col])
fig.tight_layout()
if not FAST:
    save_denoising_animation(trajectory, f"{ASSETS}/denoising.gif", frames=60, nrow=4)

# %% [markdown]
# ## 3. Fewer steps: DDIM
#
# Song et al. (2021) observed that the DDPM training objective only fixes the marginals $q(x_t \mid x_0)$, and that a
# whole family of reverse processes shares them. Its update from step $t$ to an earlier step $s$ (Eq. 12) is
#
# $$x_s = \sqrt{\bar\alpha_s}\,\hat x_0 + \sqrt{1-\bar\alpha_s-\sigma^2}\,\epsilon_\theta(x_t, t) + \sigma z,\qquad
# \sigma = \eta\sqrt{\tfrac{1-\bar\alpha_s}{1-\bar\alpha_t}}\sqrt{1-\tfrac{\bar\alpha_t}{\bar\alpha_s}}.$$
#
# $s$ need not be $t-1$: DDIM can skip steps. $\eta = 0$ gives a deterministic sampler; $\eta = 1$ with every step is
# exactly DDPM (the test suite checks it). Below, the same $x_T$ through each sampler, with the time it took.

# %%
settings = [("ddim", 10, 0.0), ("ddim", 10, 1.0)] if FAST else [("ddpm", None, 0.0)] + [("ddim", s, eta) for eta in (0.0, 1.0) for s in (10, 20, 50, 100)]
k = 4 if FAST else 8
x_T = torch.randn(k, 3, 32, 32, generator=torch.Generator().manual_seed(2))
rows, labels, timings = [], [], {}
for sampler, steps, eta in settings:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = diffusion.sample(model, x_T.shape, sampler, steps, eta, x_T=x_T, generator=torch.Generator().manual_seed(3))
    label = "DDPM 1000" if sampler == "ddpm" else f"DDIM {steps}, eta={eta:g}"
    timings[label] = time.perf_counter() - start
    rows.append(out)
    labels.append(label)
fig, axes = plt.subplots(len(rows), 1, figsize=(k * 0.9, 1.05 * len(rows)))
for ax, row, label in zip(axes, rows, labels):
    show_images(row, nrow=k, ax=ax)
    ax.set_title(f"{label}: {timings[label]:.1f} s", fontsize=9, loc="left")
fig.tight_layout()

# %% [markdown]
# Two lessons. The cost is proportional to the number of steps: DDIM-50 is 20x cheaper than DDPM-1000. And the
# deterministic sampler ($\eta = 0$) exposes the model's errors: a briefly trained model's noise prediction is
# slightly off, and with no fresh noise to correct it the error accumulates into grain and off-palette colours.
# With $\eta = 1$, each step's fresh noise washes earlier mistakes out. For this model, `DDIM 50, eta=1` is the best
# picture per second, and it is the default of `python -m ddpm_lib.sample`.
#
# ## 4. The two variance choices of the paper
#
# Ho et al. tried $\sigma_t^2 = \beta_t$ (`fixed_large`, optimal if $x_0$ were pure noise) and
# $\sigma_t^2 = \tilde\beta_t$ (`fixed_small`, optimal if $x_0$ were one fixed point) and found similar results. The two
# differ only where $\beta_t$ and $\tilde\beta_t$ differ, at small $t$:

# %%
large = GaussianDiffusion(diffusion.betas, variance_type="fixed_large")
pair = []
for d in (diffusion, large) if not FAST else ():  # 2 x 1000 steps: skipped in fast mode (tests)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pair.append(d.sample(model, x_T.shape, "ddpm", x_T=x_T, generator=torch.Generator().manual_seed(4)))
pair = pair or [x_T.clamp(-1, 1)] * 2
fig, axes = plt.subplots(2, 1, figsize=(k * 0.9, 2.2))
show_images(pair[0], nrow=k, ax=axes[0], title=r"$\sigma_t^2 = \tilde\beta_t$ (fixed_small, the default)")
show_images(pair[1], nrow=k, ax=axes[1], title=r"$\sigma_t^2 = \beta_t$ (fixed_large)")
fig.tight_layout()
print(f"mean |difference| between the two: {(pair[0] - pair[1]).abs().mean().item():.3f} (pixel range 2)")

# %% [markdown]
# ## 5. A gallery, and a sanity check against the data
#
# 64 samples with the default sampler. Beside them, the nearest training image to each of the first samples (in
# pixel space): a model that memorised its data would show copies.

# %%
n_gallery = 16 if FAST else 64
with torch.autocast("cpu", dtype=torch.bfloat16):
    gallery = diffusion.sample(model, (n_gallery, 3, 32, 32), "ddim", 50, eta=1.0, generator=torch.Generator().manual_seed(5))
fig = show_images(gallery, nrow=8, title="DDIM 50 steps, eta = 1", scale=1.2)
if not FAST:
    fig.savefig(f"{ASSETS}/samples.png", dpi=110, bbox_inches="tight")
plt.show()

# %%
train = load_dataset("toy_cars", image_size=32, num_images=1024 if FAST else (config.num_images or 8144))
real = train.images.float() / 127.5 - 1
d = torch.cdist(gallery[:8].flatten(1), real.flatten(1))  # (8, N) pixel distances
nearest = real[d.argmin(1)]
show_images(torch.cat([gallery[:8], nearest]), nrow=8, title="top: samples, bottom: nearest training image", scale=1.0)
print("per-channel mean, samples:", [round(v, 2) for v in gallery.mean((0, 2, 3)).tolist()],
      "| data:", [round(v, 2) for v in real.mean((0, 2, 3)).tolist()])

# %% [markdown]
# ## Summary
#
# - Algorithm 2 runs the learned reverse chain from $x_T \sim \mathcal N(0, I)$; each step is the posterior mean at the
#   predicted $\hat x_0$ plus fresh noise.
# - DDIM reaches a comparable picture in 50 steps instead of 1000, when it keeps some noise ($\eta = 1$); the
#   deterministic $\eta = 0$ needs a better-trained model.
# - The two variance choices give nearly the same samples.
#
# ## Exercises
#
# 1. Time DDIM with 25 steps and $\eta = 0.5$. Where does it fall between the rows above?
# 2. Sample with `clip_denoised=False`. What changes, and why does clipping $\hat x_0$ to $[-1, 1]$ help a young model?
# 3. Interpolate between two $x_T$ (spherical interpolation) and sample each with DDIM, $\eta = 0$. Is the path between
#    the two cars smooth? *Hint:* deterministic sampling maps each $x_T$ to one image.
#
# A check for exercise 3's hint: DDIM with $\eta = 0$ is a deterministic function of $x_T$.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
with torch.autocast("cpu", dtype=torch.bfloat16):
    a = diffusion.sample(model, x_T[:2].shape, "ddim", 10, 0.0, x_T=x_T[:2], generator=torch.Generator().manual_seed(0))
    b = diffusion.sample(model, x_T[:2].shape, "ddim", 10, 0.0, x_T=x_T[:2], generator=torch.Generator().manual_seed(99))
print("same x_T, different generators, eta = 0: identical =", torch.equal(a, b))
assert torch.equal(a, b)
