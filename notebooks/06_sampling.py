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
# # 06 · Sampling: from noise to cars
#
# **Goal.** Run the reverse process. Write Algorithm 2 by hand and check it against the library, watch a batch of
# noise become cars with a slider over $t$, then compare the paper's 1000-step sampler with DDIM (Song et al. 2021),
# which needs 10 to 100 steps, and the paper's two choices of the reverse variance.
#
# **The model.** The checkpoint trained in notebook 05 when it has trained at least as long as the pretrained
# toy-cars model shipped with the package (1,600 steps of `python -m ddpm_lib.train`, see the README); otherwise the
# pretrained one.
#
# **Speed.** Every sampling cell goes through `ddpm_lib.sampling.generate` (or `trajectory`), which runs the network
# in the precision measured fastest on this machine. The long cells size their batch from a measured speed, so the
# notebook takes about the same time on a fast and on a slow computer.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from ddpm_lib import GaussianDiffusion
from ddpm_lib.checkpoints import PRETRAINED, load_checkpoint, load_ema_model
from ddpm_lib.data import from_uint8, load_dataset
from ddpm_lib.devices import device_report, resolve_precision, select_device
from ddpm_lib.plotting import save_denoising_animation, show_images
from ddpm_lib.sampling import generate, trajectory
from ddpm_lib.widgets import trajectory_explorer

FAST = os.environ.get("DDPM_FAST") == "1"
ASSETS = "../assets"
FROM_05 = Path("../runs/notebook_05/checkpoint.pt")

candidates = [PRETRAINED] + ([FROM_05] if FROM_05.exists() and not FAST else [])
checkpoint = max(candidates, key=lambda p: load_checkpoint(p)["step"])  # the longest-trained; ties go to the pretrained
device = select_device()
model, diffusion, config = load_ema_model(checkpoint, device)
S = config.image_size
print(f"sampling from {checkpoint.name}, trained for {load_checkpoint(checkpoint)['step']} steps")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print(f"{config.model} U-Net, {config.image_size}px, T={diffusion.num_timesteps}, {config.schedule} schedule, "
      f"variance {diffusion.variance_type}, in eval mode: {not model.training}")

# %% [markdown]
# The precision is measured once per machine and model (a few seconds the first time, then cached), and every
# cell below uses it. A warm-up batch also tells how long one network evaluation of one image takes here:

# %% tags=["nbval-ignore-output"]
# NBVAL_IGNORE_OUTPUT
precision = resolve_precision("auto", device, model, "sample", (3, S, S))
print(device_report(device, precision))
probe = generate(model, diffusion, 8, S, num_steps=10, precision=precision)  # also a warm-up: later timings exclude setup
per_image_step = probe.seconds / (8 * probe.num_steps)
print(f"{1000 * per_image_step:.1f} ms per image per step")


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
# Line 4 is the posterior mean of notebook 02 with $x_0$ replaced by the model's estimate $\hat x_0$ (Eq. 11), plus
# noise of variance $\sigma_t^2$. With our 0-based index, the loop runs `t = T-1 ... 0` and adds no noise at `t = 0`.
# By hand, in float32, without clipping $\hat x_0$:

# %%
n = 4 if FAST else 8
g = torch.Generator().manual_seed(0)
x_T = torch.randn(n, 3, S, S, generator=g).to(device)
zs = torch.randn(diffusion.num_timesteps, n, 3, S, S, generator=g).to(device)  # the z of every step, drawn up front
betas, alphas, ab = (getattr(diffusion, k).float().to(device) for k in ("betas", "alphas", "alphas_cumprod"))
sigmas = diffusion.posterior_variance.float().sqrt().to(device)  # sigma_t^2 = tilde-beta_t

t_start = 199 if FAST else diffusion.num_timesteps - 1  # fast mode (tests) checks only the last 200 steps
x = x_T.clone()
with torch.no_grad():
    for t in reversed(range(t_start + 1)):  # line 2
        z = zs[t] if t > 0 else torch.zeros_like(x)  # line 3
        eps = model(x, torch.full((n,), t, device=device))
        x = (x - (1 - alphas[t]) / (1 - ab[t]).sqrt() * eps) / alphas[t].sqrt() + sigmas[t] * z  # line 4
by_hand = x.clamp(-1, 1).cpu()

x = x_T.clone()
for t in reversed(range(t_start + 1)):  # the library, one p_sample per step with the same z
    x = diffusion.p_sample(model, x, t, noise=zs[t], clip_denoised=False)
library = x.clamp(-1, 1).cpu()
print(f"max |hand - library| = {(by_hand - library).abs().max().item():.2e}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("Algorithm 2 by hand == library (to 1e-3):", (by_hand - library).abs().max().item() < 1e-3)

# %% [markdown]
# The same images both ways. Algorithm 2 as written never clips $\hat x_0$, so a few samples drift outside $[-1, 1]$
# and show as flat black or white after the final clamp; the library clips $\hat x_0$ at every step by default
# (`clip_denoised=True`, as the paper's code does), which section 3 uses.

# %%
show_images(torch.cat([by_hand, library]), nrow=n, title="top: by hand, bottom: library (no clipping)", scale=1.0);

# %% [markdown]
# ## 2. Watching the reverse process
#
# `trajectory` runs one batch through `GaussianDiffusion.sample_progressive`, a generator that yields every step's
# $x_t$ and the model's current estimate of the result, $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta)/\sqrt{\bar\alpha_t}$,
# and keeps 100 evenly spaced steps as uint8 images. Drag the slider (or press play): $\hat x_0$ is a blurry average
# car early on, and commits to a colour, a type and details as $t$ falls.

# %%
sampler, steps = ("ddim", 50) if FAST else ("ddpm", None)  # fast mode (tests): DDIM, 50 steps
num = 4 if FAST else batch_for(120, diffusion.num_timesteps)  # about two minutes of DDPM-1000, whatever the machine
traj = trajectory(model, diffusion, num, S, sampler=sampler, num_steps=steps, eta=1.0, seed=1, precision=precision,
                  progress=not FAST)
print(f"{sampler}, {len(traj['timesteps'])} of {diffusion.num_timesteps if sampler == 'ddpm' else steps} steps kept, "
      f"{num} images: {traj['seconds']:.1f} s ({traj['precision'].name}); x_t {tuple(traj['x_t'].shape)} {traj['x_t'].dtype}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("first and last timestep visited:", traj["timesteps"][[0, -1]].tolist(),
      f"| samples within [-1, 1]: {bool(traj['samples'].abs().max() <= 1)}")

# %% tags=["nbval-ignore-output"]
# NBVAL_IGNORE_OUTPUT
trajectory_explorer(traj)

# %% [markdown]
# The same at fixed steps, for readers of the stored notebook (top row: $x_t$; bottom: $\hat x_0$, four images each):

# %%
last = len(traj["timesteps"]) - 1
picks = [round(f * last) for f in (0, 0.25, 0.5, 0.75, 0.9, 1.0)]
fig, axes = plt.subplots(2, len(picks), figsize=(2.3 * len(picks), 5))
for col, i in enumerate(picks):
    t = int(traj["timesteps"][i])
    show_images(traj["x_t"][i, :4], nrow=2, title=f"$x_t$, t={t}", ax=axes[0, col])
    show_images(traj["x0_pred"][i, :4], nrow=2, title=rf"$\hat x_0$, t={t}", ax=axes[1, col])
fig.tight_layout()
if not FAST:
    save_denoising_animation(traj, f"{ASSETS}/denoising.gif", frames=40, nrow=4, scale=2)
    print(f"denoising.gif: {Path(ASSETS, 'denoising.gif').stat().st_size / 2**20:.1f} MB")

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
# exactly DDPM with $\sigma_t^2 = \tilde\beta_t$ (the test suite checks it). Below, the same $x_T$ through each sampler,
# with the time it took (after the warm-up above, so the times compare).

# %%
settings = [("ddim", 10, 0.0), ("ddim", 10, 1.0)] if FAST else [("ddpm", None, 1.0)] + [("ddim", s, eta) for eta in (0.0, 1.0) for s in (10, 20, 50, 100)]
k = 4 if FAST else batch_for(60, diffusion.num_timesteps, hi=8)  # DDPM-1000 dominates the cost
x_T = torch.randn(k, 3, S, S, generator=torch.Generator().manual_seed(2)).to(device)
rows = []
for sampler, steps, eta in settings:
    out = generate(model, diffusion, k, S, sampler=sampler, num_steps=steps, eta=eta, x_T=x_T, seed=3, precision=precision)
    label = "DDPM 1000" if sampler == "ddpm" else f"DDIM {steps}, eta={eta:g}"
    rows.append((label, out))
fig, axes = plt.subplots(len(rows), 1, figsize=(k * 0.9, 1.05 * len(rows)))
for ax, (label, out) in zip(axes, rows):
    show_images(out.images, nrow=k, ax=ax)
    ax.set_title(f"{label}: {out.seconds:.1f} s", fontsize=9, loc="left")
fig.tight_layout()

# %% [markdown]
# The cost is proportional to the number of steps: DDIM-50 costs a twentieth of DDPM-1000. Which sampler gives the
# best images for the cost was measured in notebook 07 (`benchmarks/eval_study.json`, 128 samples per row, FID in
# the toy-cars features, real-vs-real 3.7 ± 1.0 at that size): for this model $\eta = 1$ wins at every step count,
# e.g. DDIM-50 FID 15.6 ± 1.8 with $\eta = 1$ against 29.7 ± 3.3 ($\eta = 0.5$) and 32.7 ± 2.0 ($\eta = 0$), and
# DDIM-20 with $\eta = 1$ (17.5 ± 2.2) is within the noise of DDIM-50. This is the reverse of Song et al.'s Table 1,
# where $\eta = 0$ had the best FID at 10-100 steps on well-trained CIFAR-10 models. Neither bf16 (fp32 scores the
# same: 32.9 and 15.7) nor clipping explains it; a deterministic sampler cannot wash out the errors of a model
# trained for only 1,600 steps, while each stochastic step adds fresh noise that corrects them. So the command
# line's default is DDIM, 50 steps, $\eta = 1$.
#
# ## 4. The two variance choices of the paper
#
# Ho et al. tried $\sigma_t^2 = \beta_t$ (`fixed_large`, optimal if $x_0$ were pure noise) and
# $\sigma_t^2 = \tilde\beta_t$ (`fixed_small`, optimal if $x_0$ were one fixed point) and found similar results. The two
# differ only where $\beta_t$ and $\tilde\beta_t$ differ, at small $t$:

# %%
large = GaussianDiffusion(diffusion.betas, variance_type="fixed_large")
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
# 64 samples with the command line's default sampler (DDIM, 50 steps, $\eta = 1$). Beside them, the nearest training
# image to each of the first samples (in pixel space): a model that memorised its data would show copies.

# %%
gallery = generate(model, diffusion, 16 if FAST else 64, S, num_steps=50, eta=1.0, seed=5, precision=precision)
fig = show_images(gallery.images, nrow=8, title=f"DDIM 50 steps, eta = 1 ({gallery.seconds:.0f} s)", scale=1.2)
if not FAST:
    fig.savefig(f"{ASSETS}/samples.png", dpi=110, bbox_inches="tight")
plt.show()

# %%
train = load_dataset("toy_cars", image_size=S, num_images=1024 if FAST else (config.num_images or 8144))
real = from_uint8(train.images)
d = torch.cdist(gallery.images[:8].flatten(1), real.flatten(1))  # (8, N) pixel distances
nearest = real[d.argmin(1)]
show_images(torch.cat([gallery.images[:8], nearest]), nrow=8, title="top: samples, bottom: nearest training image", scale=1.0)
print("per-channel mean, samples:", [round(v, 2) for v in gallery.images.mean((0, 2, 3)).tolist()],
      "| data:", [round(v, 2) for v in real.mean((0, 2, 3)).tolist()])

# %% [markdown]
# ## Summary
#
# - Algorithm 2 runs the learned reverse chain from $x_T \sim \mathcal N(0, I)$; each step is the posterior mean at the
#   predicted $\hat x_0$ plus fresh noise.
# - DDIM visits a subset of the steps (Eq. 12); its cost falls in proportion, and $\eta$ sets how much fresh noise each
#   step adds. For this briefly trained model $\eta = 1$ scores best at every step count (notebook 07), the reverse
#   of what Song et al. found for well-trained models.
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
a = generate(model, diffusion, 2, S, num_steps=10, eta=0.0, x_T=x_T[:2], seed=0, precision=precision).images
b = generate(model, diffusion, 2, S, num_steps=10, eta=0.0, x_T=x_T[:2], seed=99, precision=precision).images
print("same x_T, different seeds, eta = 0: identical =", torch.equal(a, b))
assert torch.equal(a, b)
