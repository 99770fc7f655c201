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
# # 05 · Training: Algorithm 1, then the engine
#
# **Goal.** Train $\epsilon_\theta$ to predict the noise in $x_t$. First the bare loop of Algorithm 1, written out by
# hand and checked against the library; then `ddpm_lib.training.Trainer`, which adds what a real run needs:
# mixed precision, an EMA of the weights, logging, sample grids and checkpoints that resume exactly.
#
# **Where it runs.** On a CUDA GPU this notebook trains the 64x64 configuration; on a CPU it trains the small
# 1.5M-parameter U-Net (no attention) on 32x32 toy cars for a fixed number of steps, in the precision measured fastest on this
# machine (bfloat16 where the CPU has bf16 instructions, float32 where bf16 is emulated; section 2 prints the ratio
# measured here and the benchmark's). A slower machine trains the same model for longer; the expected time is printed
# before training starts. For long runs use the command line: `python -m ddpm_lib.train --help` (and `torchrun` for
# several GPUs).
#
# **Deviations from the paper for a CPU**, each chosen by measuring quality per CPU minute (section 3): a 1.5M-parameter
# U-Net without attention instead of 35.7M, learning rate $10^{-3}$ with 100 warm-up steps instead of $2\times10^{-4}$
# with 5000, batch 64 instead of 128, EMA decay 0.999 instead of 0.9999, dropout 0 instead of 0.1, and the loss and
# noise levels of later work: a cosine schedule (Nichol & Dhariwal 2021) over $T = 500$ steps, the network predicting
# $v$ instead of $\epsilon$, with Min-SNR-5 weighting. With them cars appear within minutes rather than hours on a
# CPU (section 2 prints the time they take here).
#
# **Why no dropout.** Ho et al. (App. B) chose dropout 0.1 on CIFAR-10 by a sweep over 0.1 to 0.4: without it their
# 35.7M-parameter network, trained for 800,000 steps of 128 images (about 2,000 passes over the 50,000 images), gave
# samples with overfitting artefacts. Our run shows each of its 8,144 toy cars about 3.1 times (printed in section 2),
# far from that regime, so the CPU recipe leaves dropout out; `TrainConfig.cpu_demo(dropout=0.1)` puts it back.

# %%
import json
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

from ddpm_lib.checks import env_flag

FAST = env_flag("DDPM_FAST")
ASSETS = "../assets"
RUN = Path("../runs/notebook_05_fast" if FAST else "../runs/notebook_05")
device = select_device()
print(device_report(device))

# %% [markdown]
# ## 1. Algorithm 1, line by line
#
# > **Algorithm 1** Training (Ho et al. 2020)
# >
# > 1. **repeat**
# > 2. $\quad x_0 \sim q(x_0)$
# > 3. $\quad t \sim \mathrm{Uniform}(\{1, \dots, T\})$
# > 4. $\quad \epsilon \sim \mathcal N(0, I)$
# > 5. $\quad$ take a gradient descent step on $\nabla_\theta \left\lVert \epsilon - \epsilon_\theta\!\left(\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\ t\right)\right\rVert^2$
# > 6. **until** converged
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
ax.set_title(f"the tiny network after {len(losses)} steps: MSE against t")
ax.grid(alpha=0.3)
print(f"MSE at t = {ts[0]}: {per_t[0]:.3f}, at t = {ts[1]}: {per_t[1]:.3f}, at t = {ts[-1]}: {per_t[-1]:.4f}")

# %% [markdown]
# Small $t$ is by far the hardest in these units, the noise's (in the image's units it is the easiest: notebook 03's
# weights). At $t = 0$ the noise is a sliver of $x_t$ ($\sqrt{1-\bar\alpha_0} = \sqrt{\beta_1} =
# 0.01$), and predicting it means knowing the clean image to within that sliver; near $t = T$, $x_t$ is almost pure noise
# ($\sqrt{\bar\alpha_{T}} < 0.01$) and the network can nearly copy its input. Since $t$ is drawn uniformly, four
# training steps in five land at $t \ge 200$, where the curve is already low and flat.

# %% [markdown]
# ## 2. The engine
#
# `Trainer` runs the same step with everything a long run needs:
#
# | feature | why |
# | --- | --- |
# | precision chosen by measurement (`ddpm_lib.devices`): bf16 autocast where it is measured faster, fp32 where bf16 is emulated; fp16 + GradScaler on GPUs without bf16 | the measured ratio is printed below; the loss stays in float32 |
# | channels-last memory format | the layout oneDNN's CPU convolutions and GPU tensor cores work in (the benchmark's figures below) |
# | Adam with linear warm-up, gradient clipping at 1.0 | the paper's recipe |
# | EMA of the weights, with warm-up | the paper samples from EMA weights (decay 0.9999); notebook 07 measures both on short runs (section 2 below) |
# | atomic checkpoints with every RNG state | a killed run resumes **exactly** |
# | `torchrun` support | the same code trains on several GPUs or nodes with DDP |
#
# The configuration is a frozen dataclass whose defaults are the paper's; `TrainConfig.cpu_demo()` holds the CPU
# choices listed at the top.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
paper, cpu = TrainConfig(), TrainConfig.cpu_demo()
def effective(cfg, field):  # None means "the preset's own", e.g. the paper's dropout 0.1
    value = getattr(cfg, field)
    return getattr(UNET_PRESETS[cfg.model], field) if field in ("dropout", "attention_resolutions") and value is None else value


for field in ["model", "attention_resolutions", "schedule", "num_timesteps", "prediction_type", "snr_gamma", "batch_size", "lr",
              "warmup_steps", "grad_clip", "ema_decay", "dropout"]:  # fmt: skip
    print(f"{field:14s} paper: {effective(paper, field)!s:14s} cpu_demo: {effective(cpu, field)}")

# %% [markdown]
# What the benchmark (`benchmarks/results.json`, `make bench`) measured for this model on its machine, a CPU with
# AVX-512 BF16 instructions at 2 threads. The engine's step includes channels-last, clipping and the EMA update:

# %%
bench = json.loads(Path("../benchmarks/results.json").read_text())
print(bench["machine"])
print(f"training, images/s: plain fp32 loop {bench['train_img_s_fp32_eager']:.1f}, engine fp32 {bench['train_img_s_engine_fp32']:.1f}, "
      f"engine bf16 {bench['train_img_s_engine_bf16']:.1f} (bf16 {bench['bf16_vs_fp32_train_engine']:.2f}x fp32)")
if "emulated_avx2_bf16_speedup" in bench:  # measured by `bench.py --emulate-avx2`
    print(f"sampling with kernels limited to AVX2 (bf16 emulated, as on a CPU without bf16 instructions): "
          f"bf16 {1 / bench['emulated_avx2_bf16_speedup']:.0f}x slower than fp32, so 'auto' chooses {bench['emulated_avx2_choice']}")

# %%
if FAST:
    config = TrainConfig.cpu_demo(model="tiny", num_images=256, batch_size=32, max_steps=30, log_every=5, sample_every=15,
                                  sample_steps=10, num_sample_images=4, checkpoint_every=15)
elif device.type == "cuda":  # the 64x64 configuration; a step budget that fits a 30-minute cell on one GPU
    config = TrainConfig(model="ddpm-64", image_size=64, batch_size=64, warmup_steps=1000, max_steps=6000, max_minutes=25,
                         sample_every=1000, checkpoint_every=1000, ema_decay=0.999)
else:  # a step budget: the same model on every CPU, in more or less time
    config = TrainConfig.cpu_demo(max_steps=400, sample_every=200, checkpoint_every=200)
if (RUN / "checkpoint.pt").exists() and (kept := load_checkpoint(RUN / "checkpoint.pt")["step"]) > config.max_steps:
    print(f"{RUN} holds a run continued to step {kept}: it is kept; this notebook trains in {RUN.name}_fresh")
    RUN = RUN.with_name(RUN.name + "_fresh")
shutil.rmtree(RUN, ignore_errors=True)  # this cell starts a fresh run; a run continued past the budget is kept (above)
trainer = Trainer(config, RUN, device=device)
print(device_report(device, trainer.precision))
print(trainer.describe())
print(f"{config.max_steps} steps of {config.batch_size} images show each of the {len(trainer.dataset):,d} images "
      f"{config.max_steps * config.batch_size / len(trainer.dataset):.1f} times on average")

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
# explains the sampler). The step-10 grid is still noise; then the scene's layout and colours come first (a sky
# over a road), then the cars' silhouettes, then sharper edges and wheels.

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
# The EMA averages the weights over roughly the last $1/(1-\text{decay})$ steps, and its decay warms up as
# $\min(\text{decay}, (1+k)/(10+k))$ after $k$ updates. The same noise through the EMA weights and the raw weights:

# %%
noise = trainer.fixed_noise[:8]
ema_samples = trainer.sample(noise=noise)
raw = trainer.ema.module
trainer.ema.module = trainer.model  # temporarily sample from the raw weights
raw_samples = trainer.sample(noise=noise)
trainer.ema.module = raw
fig, axes = plt.subplots(2, 1, figsize=(8, 2.6))
show_images(ema_samples, nrow=8, title="EMA weights", ax=axes[0])
show_images(raw_samples, nrow=8, title="raw weights", ax=axes[1])
decay = min(config.ema_decay, (1 + trainer.step) / (10 + trainer.step))
print(f"after {trainer.step} updates the EMA decay is {decay:.4f}: it averages over roughly the last {1 / (1 - decay):.0f} steps")

# %% [markdown]
# Which of the two is better is a question for a metric, not for the eye. Notebook 07 scores both on two runs of the
# former CPU recipe (linear or cosine, eps, attention) stopped at 135 steps (`benchmarks/eval_study.json`; FID on 64
# samples, lower is better, ± its bootstrap spread):

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
study = json.loads(Path("../benchmarks/eval_study.json").read_text())
for row in study["rows"]:
    if row["study"] == "training" and row["eta"] == 1.0:
        print(f"{row['schedule']:6s} schedule, {row['weights']:3s} weights, {row['train_steps']} steps: "
              f"FID {row['fid']:5.1f} ± {row['spread']['fid']:.1f}")

# %% [markdown]
# At that length the answer depends on the run: with the cosine schedule the EMA weights are far better, with the
# linear one the raw weights are slightly better. So short a run has barely warmed the EMA up, and its raw weights
# depend on where the last steps happened to land. The case for the EMA (Ho et al. sample from an EMA with decay 0.9999)
# is made on long runs, which this notebook does not measure.

# %% [markdown]
# ## 3. The CPU recipe, chosen by measurement
#
# `TrainConfig.cpu_demo()` was chosen by a study, `benchmarks/recipe.py`. Each recipe changes one thing of the former
# CPU recipe (the paper's loss, linear schedule and $T = 1000$ with this U-Net, attention at 16x16, learning rate
# $10^{-3}$, batch 64, EMA 0.999): learning rate, warm-up, batch, EMA, schedule, $T$, loss, width, depth, attention,
# dropout. Each trains for the steps that **10 minutes of a 2-core CPU** buy: every recipe's seconds per step were timed
# on that CPU (a CPU with AVX-512 BF16 instructions), then the steps were run on a GPU, which computes the same steps
# sooner. At 1, 3, 5 and 10 minutes the EMA weights draw 1,000 samples that notebook 07's metrics score. The former
# recipe ran with three seeds, so the spread between seeds is known; a change is kept only when it lowers FID by more
# than twice that spread, and the kept changes together were trained once more on the CPU itself, by its own clock.
#
# Two of the changes are losses this series has not met yet. **v-prediction** (Salimans & Ho 2022, App. D) asks the
# network for the *velocity*
# $$v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0 ,$$
# and the samplers recover the noise from it, $\hat\epsilon = \sqrt{1-\bar\alpha_t}\,x_t + \sqrt{\bar\alpha_t}\,\hat v$
# (`GaussianDiffusion.eps_from_output`). **Min-SNR-$\gamma$ weighting** (Hang et al. 2023) starts from what each loss
# asks of $\hat x_0$. With $\mathrm{SNR}_t = \bar\alpha_t / (1 - \bar\alpha_t)$,
# $$\|\epsilon - \hat\epsilon\|^2 = \mathrm{SNR}_t\,\|x_0 - \hat x_0\|^2, \qquad \|v - \hat v\|^2 = (\mathrm{SNR}_t + 1)\,\|x_0 - \hat x_0\|^2 :$$
# both losses weigh the nearly clean steps (large SNR) enormously. Min-SNR-$\gamma$ multiplies each image's loss by
# $\min(\mathrm{SNR}_t, \gamma)/\mathrm{SNR}_t$ (for $\epsilon$) or $\min(\mathrm{SNR}_t, \gamma)/(\mathrm{SNR}_t + 1)$ (for $v$),
# so that either becomes $\min(\mathrm{SNR}_t, \gamma)\,\|x_0 - \hat x_0\|^2$: no step counts more than $\gamma$ times its
# $x_0$ error. The cell checks that identity with the library's loss, then draws the weights over $t$.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
cpu_diffusion = {kind: GaussianDiffusion(make_betas("cosine", 500), prediction_type=kind) for kind in ("epsilon", "v_prediction")}
g = torch.Generator().manual_seed(0)
x0_check = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
noise_check = torch.randn(x0_check.shape, generator=g, dtype=torch.float64)
x0_hat = x0_check + 0.1 * torch.randn(x0_check.shape, generator=g, dtype=torch.float64)  # one estimate of x_0
t_check = torch.tensor([5, 100, 250, 450])
d = cpu_diffusion["epsilon"]
x_t_check = d.q_sample(x0_check, t_check, noise_check)
eps_hat = d.predict_noise_from_x0(x_t_check, t_check, x0_hat)  # the same estimate, as an eps prediction ...
v_hat = d.velocity(x0_hat, t_check, eps_hat)  # ... and as a v prediction
snr = d.snr(t_check)
by_hand = (snr.clamp(max=5.0) * (x0_hat - x0_check).pow(2).flatten(1).mean(1)).mean().item()
for kind, output in (("epsilon", eps_hat), ("v_prediction", v_hat)):
    lib = cpu_diffusion[kind].training_loss(lambda x, t, out=output: out, x0_check, t=t_check, noise=noise_check, snr_gamma=5.0).item()
    print(f"{kind:12s} Min-SNR-5 loss equals mean min(SNR, 5) |x0 - x0_hat|^2 (to float32 precision): {abs(lib - by_hand) < 1e-5 * by_hand}")

# %%
t_all = torch.arange(500)
snr_all = cpu_diffusion["epsilon"].snr(t_all)
fig, ax = plt.subplots(figsize=(6.5, 3.4))
for label, w in [("eps loss (L_simple): SNR", snr_all), ("v loss: SNR + 1", snr_all + 1), ("either with Min-SNR-5: min(SNR, 5)", snr_all.clamp(max=5))]:
    ax.plot(t_all, w, label=label)
ax.set_yscale("log")
ax.set_xlabel("t (cosine schedule, T = 500)")
ax.set_ylabel("weight on the x0 error")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The study's curves (`benchmarks/recipe.json`; grey: one change each; black: the former recipe's three seeds; the
# dot: the new default trained on the CPU by its own clock), and where each recipe ends in precision and recall,
# as fractions of the real-vs-real baseline:

# %%
from ddpm_lib.plotting import plot_recipe_study

study = json.loads(Path("../benchmarks/recipe.json").read_text())
highlight = ["combined (CPU clock)", "v-minsnr5", "T500", "cosine", "no-attention"]
fig = plot_recipe_study(study, highlight=highlight)
plt.show()
runs = study["budget_10min"]["runs"]
final = {n: sum(s["curve"][-1]["fid"] for s in r["seeds"]) / len(r["seeds"]) for n, r in runs.items()}
for name in sorted(final, key=final.get)[:8] + ["default"]:
    last = runs[name]["seeds"][0]["curve"][-1]
    print(f"{name:13s} FID {final[name]:5.1f} (seeds: {len(runs[name]['seeds'])})  steps in 10 min: {last['step']:5d}  "
          f"precision {last['precision']:.2f}  recall {last['recall']:.2f}")
cpu = study["budget_10min"]["cpu_runs"]["combined"]["curve"][-1]
print(f"new default, on the CPU: FID {cpu['fid']:.1f} after {cpu['step']} steps; precision {cpu['precision']:.2f} "
      f"({cpu['precision'] / cpu['baseline']['precision']:.0%} of real vs real), recall {cpu['recall']:.2f} "
      f"({cpu['recall'] / cpu['baseline']['recall']:.0%})")

# %% [markdown]
# What the study found, at 10 CPU minutes (FID in the toy-cars feature space; the former recipe: 20.7, seeds spread
# ± 2.9):
#
# - **The loss matters most.** v-prediction with Min-SNR-5: 12.4. Min-SNR-5 on the $\epsilon$ loss: 16.8. v-prediction
#   *alone* is the worst working recipe (43.4, recall 0.04). Its weight on the $x_0$ error, $\mathrm{SNR}_t + 1$, is not
#   more lopsided than $\epsilon$'s $\mathrm{SNR}_t$: it stays at least 1 at high noise, where $\epsilon$'s falls to
#   about $10^{-8}$ (the plot above). So the weighting alone does not explain the failure, and the study did not
#   separate the cause. Hang et al. report that Min-SNR-5 speeds up convergence for both targets; here it is what
#   makes v work.
# - **Fewer, better-spread noise levels**: $T = 500$ 12.8, the cosine schedule 14.0 (Nichol & Dhariwal 2021).
# - **Cheaper steps**: no attention (the step takes 547 ms instead of 699: 28% more steps) 14.6; one ResBlock per level 16.2
#   (below the bar). Batch 32 (twice the steps) 17.9; batch 128 29.3. Narrower (24 channels, 32.2), wider (48, 29.6) and
#   the `tiny` net (27.0) lose.
# - **Within the noise**: learning rate 5e-4 or 2e-3, warm-up 0 or 500, EMA 0.995 or 0.9995. Dropout 0.1 costs (22.5).
#   The EMA without its warm-up fails (155): at decay 0.999, 858 updates leave 42% of the random initial weights in it.
# - **Together** (v + Min-SNR-5, cosine, $T = 500$, no attention), trained for 10 minutes on the CPU itself: **FID 8.6**,
#   precision 50% and recall 65% of the real-vs-real values. The recipe's 10-minute targets were 75% and 60%: recall is
#   met, precision is not; the curves are still falling steeply at 10 minutes, so more minutes buy more than any recipe
#   change did.

# %% [markdown]
# ## 4. Checkpoints and exact resume
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
# On a CPU, the same run continues from a shell (the command below; `--max-steps` is the run's new total), and
# `python -m ddpm_lib.sample --checkpoint runs/notebook_05/checkpoint.pt` samples it; the shipped model is this recipe
# after 3,600 steps. Running this notebook again starts a fresh run, but never over a run continued past the notebook's
# budget: that one is kept and the notebook trains in `runs/notebook_05_fresh` instead.

# %%
print(f"python -m ddpm_lib.train --out {RUN.relative_to('..')} --resume --max-steps 4000")

# %% [markdown]
# ## Summary
#
# - Algorithm 1 is a loop of four lines: draw $x_0$, $t$, $\epsilon$; noise with Eq. 4; regress $\epsilon$.
# - The engine adds speed (the measured precision, channels-last), stability (warm-up, clipping), the EMA the samples
#   come from, and checkpoints that resume exactly.
# - The checkpoint in `runs/notebook_05/` continues from a shell as shown above; the model shipped with the package is
#   the same recipe after 3,600 steps (notebook 06, section 6).
# - The CPU recipe was chosen by quality per CPU minute: v-prediction with Min-SNR-5, a cosine schedule over
#   $T = 500$ and no attention reach FID 8.6 in 10 minutes where the paper's loss and schedule reached 20.7.
# - Dropout (0.1 in the paper) is off in the CPU recipe, whose run sees each image a few times, not thousands.

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer and a cell that checks it. The next cell imports what they use and builds
# small fixtures (a few seconds, no real training); the section runs on its own, without the cells above.

# %%
import math

import torch

from ddpm_lib import build_model
from ddpm_lib.checkpoints import STUDY_MODEL, load_ema_model
from ddpm_lib.config import TrainConfig
from ddpm_lib.data import load_dataset
from ddpm_lib.training import Trainer

torch.manual_seed(0)
cars = load_dataset("toy_cars", image_size=32, num_images=64)
x0 = torch.stack([cars[i][0] for i in range(20)])  # 20 toy cars in [-1, 1], (20, 3, 32, 32)
t_probe = torch.arange(0, 1000, 50)  # (20,): two timesteps in each bucket of 100
noise = torch.randn_like(x0)  # (20, 3, 32, 32)
pretrained, diffusion, _ = load_ema_model(STUDY_MODEL)  # an eps-predicting small U-Net (eval mode), linear T = 1000

# a tiny run of the engine: 5 steps of Algorithm 1 on batches of 8, in float32, keeping the raw weights after each step
small_run = Trainer(TrainConfig.cpu_demo(model="tiny", batch_size=8, precision="fp32", channels_last=False), dataset=cars, progress=False)
raw_after_step = []
for _ in range(5):
    small_run.train_step()
    raw_after_step.append({name: w.detach().clone() for name, w in small_run.model.state_dict().items()})

# a fresh tiny U-Net and the gradient of L_simple on one batch, before any optimiser step
fresh = build_model("tiny", image_size=32)
diffusion.training_loss(fresh, x0[:8], t=t_probe[:8], noise=noise[:8]).backward()
grads = [p.grad.detach().clone() for p in fresh.parameters()]

# %% [markdown]
# **Exercise 1.** $L_\text{simple}$ per noise level, by hand. For each of the 20 cars `x0[i]`, build $x_t$ with Eq. 4
# at `t_probe[i]` with the noise `noise[i]` (use `diffusion.alphas_cumprod`, not `q_sample` or `training_loss`), run
# the network `pretrained(x_t, t)` (an $\epsilon$-predicting model, notebook 07's study model) under `torch.no_grad()`, and compute `per_image_loss`, a float32 tensor
# `(20,)`: the mean over the image's $3 \cdot 32 \cdot 32$ elements of $(\epsilon - \epsilon_\theta(x_t, t))^2$. Then
# `bucket_loss`, a tensor `(10,)`: the mean of `per_image_loss` over each bucket of timesteps $[100b, 100b + 100)$.
# Because Algorithm 1 draws $t$ uniformly, $L_\text{simple}$ is the average of the ten bucket losses.

# %% nbgrader={"grade": false, "grade_id": "ex1-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
ab_probe = diffusion.alphas_cumprod[t_probe].float().view(-1, 1, 1, 1)  # bar-alpha_t, (20, 1, 1, 1)
x_t_probe = ab_probe.sqrt() * x0 + (1 - ab_probe).sqrt() * noise  # Eq. 4
with torch.no_grad():
    eps_pred = pretrained(x_t_probe, t_probe)
per_image_loss = ((noise - eps_pred) ** 2).mean(dim=(1, 2, 3))
bucket_loss = per_image_loss.view(10, 2).mean(dim=1)  # t_probe is sorted: 2 consecutive images per bucket
### END SOLUTION
print("loss per bucket of 100 steps:", [round(v, 4) for v in bucket_loss.tolist()])

# %% nbgrader={"grade": true, "grade_id": "ex1-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
with torch.no_grad():
    expected = torch.stack([diffusion.training_loss(pretrained, x0[i : i + 1], t=t_probe[i : i + 1], noise=noise[i : i + 1])
                            for i in range(20)])  # fmt: skip
    whole_batch = diffusion.training_loss(pretrained, x0, t=t_probe, noise=noise)
assert per_image_loss.shape == (20,), f"per_image_loss should have shape (20,), got {tuple(per_image_loss.shape)}"
assert torch.allclose(per_image_loss.float(), expected, rtol=1e-4, atol=1e-6), (
    f"per_image_loss differs from the library's training_loss by up to {(per_image_loss.float() - expected).abs().max().item():.2e}"
)
assert bucket_loss.shape == (10,), f"bucket_loss should have shape (10,), got {tuple(bucket_loss.shape)}"
assert torch.allclose(bucket_loss.float(), expected.view(10, 2).mean(1), rtol=1e-4, atol=1e-6), "bucket b averages the images with t in [100b, 100b + 100)"
assert torch.isclose(bucket_loss.float().mean(), whole_batch, rtol=1e-4), "the mean of the bucket losses should be L_simple of the whole batch"

# %% [markdown]
# **Exercise 2.** The EMA by hand. `raw_after_step` holds the engine's raw weights (a dict name -> tensor) after each
# of its 5 steps. The engine's first EMA update copies the weights; the $k$-th update after it ($k = 1, 2, \dots$) sets
# $\text{ema} \leftarrow d_k\,\text{ema} + (1 - d_k)\,w$ with $d_k = \min(\text{decay}, (1+k)/(10+k))$ and
# decay = `small_run.config.ema_decay`. Compute `ema_weights`, a dict name -> tensor with the EMA after the 5 steps.

# %% nbgrader={"grade": false, "grade_id": "ex2-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
ema_weights = {name: w.clone() for name, w in raw_after_step[0].items()}  # the first update copies
for k, weights in enumerate(raw_after_step[1:], start=1):
    d = min(small_run.config.ema_decay, (1 + k) / (10 + k))
    for name, w in weights.items():
        ema_weights[name] = d * ema_weights[name] + (1 - d) * w
### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex2-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
engine_ema = small_run.ema.module.state_dict()
assert set(ema_weights) == set(engine_ema), "ema_weights should have one entry per tensor of the model's state_dict"
worst = max((ema_weights[n].float() - engine_ema[n].float()).abs().max().item() for n in engine_ema)
assert worst < 1e-6, f"ema_weights differs from the engine's EMA by up to {worst:.2e}: check k and the warm-up of the decay"

# %% [markdown]
# **Exercise 3.** Why warm up the learning rate? The engine sets it to $\text{lr}\cdot\min(1, (s+1)/\text{warmup})$ at
# step $s$ (0-based). Compute `lr_first`, the learning rate of the first step of `TrainConfig.cpu_demo()` (a float),
# and `first_update`, a list of tensors, one per parameter of `fresh`: the change that Adam (betas 0.9 and 0.999,
# eps $10^{-8}$) makes to each parameter at its first step with that learning rate and the gradients `grads`. Write
# Adam's first step out (its moment estimates after their bias correction), without `torch.optim`. Then
# `largest_change`, the largest absolute change over all parameters (a float). Compare it with `lr_first`.

# %% nbgrader={"grade": false, "grade_id": "ex3-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
demo = TrainConfig.cpu_demo()
lr_first = demo.lr * min(1.0, 1 / demo.warmup_steps)
first_update = []
for g in grads:
    m_hat = (1 - 0.9) * g / (1 - 0.9)  # = g: after one step the bias-corrected first moment is the gradient
    v_hat = (1 - 0.999) * g**2 / (1 - 0.999)  # = g^2
    first_update.append(-lr_first * m_hat / (v_hat.sqrt() + 1e-8))  # about -lr_first * sign(g), whatever |g| is
largest_change = max(u.abs().max().item() for u in first_update)
### END SOLUTION
print(f"lr at step 0: {lr_first:.1e}; largest change of a weight: {largest_change:.2e}")

# %% nbgrader={"grade": true, "grade_id": "ex3-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
probe = Trainer(TrainConfig.cpu_demo(model="tiny", precision="fp32"), dataset=cars, progress=False)
assert math.isclose(lr_first, probe.lr_at(0), rel_tol=1e-12), "lr_first is not the engine's learning rate at step 0 (Trainer.lr_at)"
params = [p.detach().double() for p in fresh.parameters()]
reference = [p.detach().clone().double().requires_grad_() for p in fresh.parameters()]
for r, g in zip(reference, grads):
    r.grad = g.double()
torch.optim.Adam(reference, lr=lr_first, betas=(0.9, 0.999), eps=1e-8).step()
expected = [r.detach() - p for r, p in zip(reference, params)]
assert len(first_update) == len(expected), f"first_update needs one tensor per parameter ({len(expected)}), got {len(first_update)}"
for u, e in zip(first_update, expected):
    assert u.shape == e.shape, f"a change of shape {tuple(u.shape)} for a parameter of shape {tuple(e.shape)}"
    assert torch.allclose(u.double(), e, rtol=1e-5, atol=1e-12), "first_update differs from Adam's first step"
assert math.isclose(largest_change, max(e.abs().max().item() for e in expected), rel_tol=1e-5), "largest_change is the largest |change|"

# %% [markdown]
# **Exercise 4.** How long does the EMA's warm-up last? Compute `warmup_end`, a dict that maps each decay of the
# configuration table, 0.999 (`cpu_demo`) and 0.9999 (the paper), to the smallest number of updates $k$ at which
# $(1+k)/(10+k)$ reaches it (an int), and `window_at_400`, the averaging window $1/(1 - d_k)$ of the `cpu_demo` EMA
# after this notebook's $k = 400$ updates (a float). Does the notebook's run ever leave the warm-up?

# %% nbgrader={"grade": false, "grade_id": "ex4-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
# (1 + k) / (10 + k) >= d  <=>  k >= (10 d - 1) / (1 - d)
warmup_end = {d: math.ceil(round((10 * d - 1) / (1 - d), 6)) for d in (0.999, 0.9999)}
window_at_400 = 1 / (1 - min(0.999, (1 + 400) / (10 + 400)))
### END SOLUTION
print(warmup_end, f"window after 400 updates: {window_at_400:.1f} steps")

# %% nbgrader={"grade": true, "grade_id": "ex4-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
for d in (0.999, 0.9999):
    k = warmup_end[d]
    assert isinstance(k, int), f"warmup_end[{d}] should be an int, got {type(k).__name__}"
    assert (1 + k) / (10 + k) >= d - 1e-15 and (k == 0 or k / (9 + k) < d), f"warmup_end[{d}] = {k} is not the first k whose (1+k)/(10+k) reaches {d}"
assert math.isclose(window_at_400, (10 + 400) / 9, rel_tol=1e-9), "window_at_400 is 1 / (1 - d_400), with d_400 still in the warm-up"
