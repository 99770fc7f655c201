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
# # 05 · Training: Algorithm 1, then the engine
#
# **Goal.** Train $\epsilon_\theta$ to predict the noise in $x_t$. First the bare loop of Algorithm 1, written out by
# hand and checked against the library; then `ddpm_lib.training.Trainer`, which adds what a real run needs:
# mixed precision, an EMA of the weights, logging, sample grids and checkpoints that resume exactly.
#
# **Where it runs.** On a CUDA GPU this notebook trains the 64x64 configuration; on a CPU it trains the small
# 1.6M-parameter U-Net on 32x32 toy cars for a fixed number of steps, in the precision measured fastest on this
# machine (bfloat16 where the CPU has bf16 instructions, float32 where bf16 is emulated). A slower machine trains the
# same model for longer; the expected time is printed before training starts. For long runs use the command line:
# `python -m ddpm_lib.train --help` (and `torchrun` for several GPUs).
#
# **Deviations from the paper for a CPU:** a 1.6M-parameter U-Net instead of 35.7M, learning rate $10^{-3}$ with 100
# warm-up steps instead of $2\times10^{-4}$ with 5000, batch 64 instead of 128, EMA decay 0.999 instead of 0.9999,
# no dropout. These make a few minutes of CPU enough to see cars appear.

# %%
import os
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from ddpm_lib import GaussianDiffusion, build_model, make_betas
from ddpm_lib.checkpoints import load_checkpoint
from ddpm_lib.config import TrainConfig
from ddpm_lib.data import load_dataset
from ddpm_lib.devices import device_report, select_device
from ddpm_lib.plotting import plot_loss, show_images
from ddpm_lib.training import Trainer
from ddpm_lib.unet import UNET_PRESETS

FAST = os.environ.get("DDPM_FAST") == "1"
ASSETS = "../assets"
RUN = Path("../runs/notebook_05_fast" if FAST else "../runs/notebook_05")
device = select_device()
print(device_report(device))

# %% [markdown]
# ## 1. Algorithm 1, line by line
#
# > **repeat**
# > 2: $x_0 \sim q(x_0)$ · 3: $t \sim \mathrm{Uniform}(\{1, \dots, T\})$ · 4: $\epsilon \sim \mathcal N(0, I)$
# > 5: take a gradient step on $\nabla_\theta \left\lVert \epsilon - \epsilon_\theta\!\left(\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\ t\right)\right\rVert^2$
# > **until** converged
#
# This is the simplified objective $L_\text{simple}$ (Eq. 14): predict the noise, with a plain mean squared error.
# In code, with our 0-based `t` drawn from `0..T-1`:

# %%
torch.manual_seed(0)
dataset = load_dataset("toy_cars", image_size=32, num_images=256 if FAST else 2048)
diffusion = GaussianDiffusion(make_betas("linear", 1000))
model = build_model("tiny", image_size=32)
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)

losses = []
for _ in range(20 if FAST else 200):
    x0 = torch.stack([dataset[i][0] for i in torch.randint(len(dataset), (32,))])  # line 2
    t = torch.randint(0, diffusion.num_timesteps, (32,))  # line 3
    noise = torch.randn_like(x0)  # line 4
    ab = diffusion.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise  # Eq. 4
    loss = F.mse_loss(model(x_t, t), noise)  # line 5
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
print(f"loss: first 10 steps {sum(losses[:10]) / 10:.3f}, last 10 steps {sum(losses[-10:]) / 10:.3f}")

# %% [markdown]
# The library's `training_loss` is the same computation; given the same $t$ and $\epsilon$, it returns the same number:

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    by_hand = F.mse_loss(model(x_t, t), noise)
    library = diffusion.training_loss(model, x0, "mse", t=t, noise=noise)
print("by hand == library (to 1e-5):", abs(by_hand - library).item() < 1e-5)

# %% [markdown]
# Why predict the noise rather than the image? Ho et al. show (Sec. 3.2) that the reverse-process mean written with
# an $\epsilon$-prediction makes the variational bound a weighted denoising score-matching loss; dropping the weights
# (Eq. 14) gave their best samples. The loss at a given $t$ also tells how hard that noise level is:

# %%
with torch.no_grad():
    probe = torch.stack([dataset[i][0] for i in range(64)])
    ts = list(range(0, 1000, 50))
    per_t = [diffusion.training_loss(model, probe, t=torch.full((64,), t), noise=torch.randn_like(probe)).item() for t in ts]
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(ts, per_t, "o-")
ax.set_xlabel("t")
ax.set_ylabel("MSE of the noise prediction")
ax.set_title("after a few steps: small t (little noise, hard to see) is the hardest")
ax.grid(alpha=0.3);

# %% [markdown]
# ## 2. The engine
#
# `Trainer` runs the same step with everything a long run needs:
#
# | feature | why |
# | --- | --- |
# | precision chosen by measurement (`ddpm_lib.devices`): bf16 autocast where it is measured faster, fp32 where bf16 is emulated; fp16 + GradScaler on GPUs without bf16 | the measured ratio is printed below; the loss stays in float32 |
# | channels-last memory format | faster convolutions on CPU and tensor cores |
# | Adam with linear warm-up, gradient clipping at 1.0 | the paper's recipe |
# | EMA of the weights, with warm-up | the paper samples from EMA weights (decay 0.9999); notebook 07 measures the difference |
# | atomic checkpoints with every RNG state | a killed run resumes **exactly** |
# | `torchrun` support | the same code trains on several GPUs or nodes with DDP |
#
# The configuration is a frozen dataclass whose defaults are the paper's; `TrainConfig.cpu_demo()` holds the CPU
# choices listed at the top.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
paper, cpu = TrainConfig(), TrainConfig.cpu_demo()
def effective(cfg, field):  # dropout None means "the preset's own", e.g. the paper's 0.1
    value = getattr(cfg, field)
    return UNET_PRESETS[cfg.model].dropout if field == "dropout" and value is None else value


for field in ["model", "schedule", "num_timesteps", "batch_size", "lr", "warmup_steps", "grad_clip", "ema_decay", "dropout"]:
    print(f"{field:14s} paper: {effective(paper, field)!s:14s} cpu_demo: {effective(cpu, field)}")

# %%
if FAST:
    config = TrainConfig.cpu_demo(model="tiny", num_images=256, batch_size=32, max_steps=30, log_every=5, sample_every=15,
                                  sample_steps=10, num_sample_images=4, checkpoint_every=15)
elif device.type == "cuda":  # the 64x64 configuration; a step budget that fits a 30-minute cell on one GPU
    config = TrainConfig(model="ddpm-64", image_size=64, batch_size=64, warmup_steps=1000, max_steps=6000, max_minutes=25,
                         sample_every=1000, checkpoint_every=1000, ema_decay=0.999)
else:  # a step budget: the same model on every CPU, in more or less time
    config = TrainConfig.cpu_demo(max_steps=300, sample_every=100, checkpoint_every=100)
shutil.rmtree(RUN, ignore_errors=True)  # running this cell starts a fresh run (section 3 shows how to continue one)
trainer = Trainer(config, RUN, device=device)
print(device_report(device, trainer.precision))
print(trainer.describe())

# %% [markdown]
# Training shows a progress bar with the loss and images per second; the loss history goes to `loss.csv` and a sample
# grid from fixed noise to `samples/` every `sample_every` steps, so you can watch a run from another window too.
# First ten steps to measure this machine's speed, and the time the whole budget will take:

# %% tags=["nbval-ignore-output"]
# NBVAL_IGNORE_OUTPUT
start = time.perf_counter()
trainer.fit(max_steps=10)  # also writes a checkpoint and a sample grid; the speed comes from the logged window
per_step = config.batch_size / trainer.history[-1]["img_per_s"]
print(f"{per_step:.2f} s per step of {config.batch_size} images in {trainer.precision.name}: "
      f"the {config.max_steps} steps will take about {per_step * config.max_steps / 60:.1f} min")

# %% tags=["nbval-ignore-output"]
# NBVAL_IGNORE_OUTPUT
history = trainer.fit()
minutes = (time.perf_counter() - start) / 60
print(f"{trainer.step} steps in {minutes:.1f} min, {trainer.step * config.batch_size / (60 * minutes):.0f} images/s")

# %%
fig = plot_loss(RUN / "loss.csv")
if not FAST:
    fig.savefig(f"{ASSETS}/loss_curve.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# ### Samples as training goes
#
# Each grid was drawn from the same fixed noise with the EMA weights (DDIM, 50 steps, $\eta = 1$; notebook 06
# explains the sampler). Shapes come first, then colours, then details.

# %%
import matplotlib.image as mpimg

grids = sorted((RUN / "samples").glob("step_*.png"))
picks = [grids[i] for i in sorted({round(i * (len(grids) - 1) / 3) for i in range(4)})]
fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.4))
for ax, path in zip(list(axes) if len(picks) > 1 else [axes], picks):
    ax.imshow(mpimg.imread(path))
    ax.set_title(path.stem.replace("_", " "))
    ax.set_axis_off()

# %% [markdown]
# ### EMA against the raw weights
#
# The EMA averages the weights over the last ~$1/(1-\text{decay})$ steps. The raw weights follow the last few batches'
# gradients and are noisier; the same noise through both:

# %%
noise = trainer.fixed_noise[:8]
ema_samples = trainer.sample(noise=noise)
raw = trainer.ema.module
trainer.ema.module = trainer.model  # temporarily sample from the raw weights
raw_samples = trainer.sample(noise=noise)
trainer.ema.module = raw
fig, axes = plt.subplots(2, 1, figsize=(8, 2.6))
show_images(ema_samples, nrow=8, title="EMA weights", ax=axes[0])
show_images(raw_samples, nrow=8, title="raw weights", ax=axes[1]);

# %% [markdown]
# ## 3. Checkpoints and exact resume
#
# `checkpoint.pt` holds the model, the EMA, the optimizer, the step, the configuration and every random-number
# generator's state. It is written to a temporary file and renamed, so a crash never leaves half a file, and it
# loads with `torch.load(weights_only=True)`, which cannot run code. A run resumed from it continues exactly as
# if it had never stopped (the test suite kills a run with SIGKILL and checks the final weights bit for bit).

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
ckpt = load_checkpoint(RUN / "checkpoint.pt")
print("checkpoint keys:", sorted(ckpt))
print("config matches:", ckpt["config"] == trainer.state_dict()["config"], "| step matches:", ckpt["step"] == trainer.step)

# %%
resumed = Trainer(config, RUN, resume=True, device=device, progress=False)
print("resumed at step", resumed.step, "with", sum(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(),
      trainer.model.state_dict().values())), "of", len(trainer.model.state_dict()), "tensors identical")

# %% [markdown]
# From a shell, the same run continues with `python -m ddpm_lib.train --out runs/notebook_05 --resume --max-steps N`
# (running the configuration cell above again would start a fresh run instead).
#
# ## Summary
#
# - Algorithm 1 is five lines: draw $x_0$, $t$, $\epsilon$; noise with Eq. 4; regress $\epsilon$.
# - The engine adds speed (the measured precision, channels-last), stability (warm-up, clipping), the EMA the samples
#   come from, and checkpoints that resume exactly.
# - The checkpoint in `runs/notebook_05/` is what notebook 06 samples from, when it has trained longer than the
#   pretrained model shipped with the package.
#
# ## Exercises
#
# 1. Train with `loss_type="l1"` for the same budget and compare the loss curves. Which is lower, and does that
#    mean better samples? *Hint:* the two losses are on different scales.
# 2. Set `ema_decay=0.9999` for a short run and look at the samples. Why are they worse? *Hint:* with warm-up the
#    decay after $k$ updates is $\min(0.9999, (1+k)/(10+k))$; how many steps does the EMA average over?
# 3. Measure images per second with `precision="fp32"` and `precision="bf16"`, and compare with what `"auto"` chose
#    (`trainer.precision`). *Hint:* `history[-1]["img_per_s"]`.
#
# A check of exercise 2's hint: the effective averaging window after $k$ updates.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
for k in [100, 1000, 10_000]:
    decay = min(0.9999, (1 + k) / (10 + k))
    print(f"after {k:6d} updates: decay {decay:.5f}, averages over ~{1 / (1 - decay):,.0f} steps")
assert min(0.9999, (1 + 100) / 110) < 0.92
