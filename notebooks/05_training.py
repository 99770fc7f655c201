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
# **Goal.** Train $\epsilon_\theta$ to predict the noise in $x_t$, by the paper's recipe: Algorithm 1, the
# $\epsilon$-prediction loss $L_\text{simple}$, the linear schedule over $T = 1000$ steps. First the bare loop, written
# out by hand and checked against the library; then `ddpm_lib.training.Trainer`, which adds what a real run needs:
# mixed precision, an EMA of the weights, logging, sample grids and checkpoints that resume exactly.
#
# **Where it runs.** On a CUDA GPU this notebook trains the paper's recipe on the 64x64 U-Net. On a CPU it trains
# `TrainConfig.ddpm_demo()` (`python -m ddpm_lib.train --preset ddpm`): the paper's objective and schedule on the
# small 1.6M-parameter U-Net with attention at 16x16, on 32x32 toy cars, for a fixed number of steps, in the
# precision measured fastest on this machine (bfloat16 where the CPU has bf16 instructions, float32 where bf16 is
# emulated; section 2 prints the ratio measured here and the benchmark's). A slower machine trains the same model for
# longer; the expected time is printed before training starts. The shipped weights `ddpm_lib/weights/ddpm_toy_cars_32.pt`
# are this recipe after 1,600 steps (section 2 prints the command that trained them); notebooks 06 and 07 study them.
# For long runs use the command line: `python -m ddpm_lib.train --help` (and `torchrun` for several GPUs).
#
# **Deviations from the paper for a CPU**, in size and optimiser only (the loss, the schedule and $T$ are the
# paper's): a 1.6M-parameter U-Net instead of 35.7M, learning rate $10^{-3}$ with 100 warm-up steps instead of
# $2\times10^{-4}$ with 5000, batch 64 instead of 128, EMA decay 0.999 instead of 0.9999 (and in a run this short the
# EMA's warm-up keeps it lower still: section 2), dropout 0 instead of 0.1. Notebook 08 then changes the recipe
# itself, one measured change at a time.
#
# **Why no dropout.** Ho et al. (App. B) chose dropout 0.1 on CIFAR-10 by a sweep over 0.1 to 0.4: without it their
# 35.7M-parameter network, trained for 800,000 steps of 128 images (about 2,000 passes over the 50,000 images), gave
# samples with overfitting artefacts. This notebook's run shows each of its 8,144 toy cars a few times (section 2
# prints how many) and the shipped model's 1,600 steps of 64 images about 13 times, far from that regime, so the CPU
# recipe leaves dropout out; `TrainConfig.ddpm_demo(dropout=0.1)` puts it back.

# %%
import dataclasses
import json
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from ddpm_lib import GaussianDiffusion, build_model, make_betas
from ddpm_lib.checkpoints import DDPM_MODEL, load_checkpoint
from ddpm_lib.config import BOOKKEEPING_FIELDS, PRESETS, TrainConfig
from ddpm_lib.data import load_dataset
from ddpm_lib.devices import device_report, select_device
from ddpm_lib.plotting import plot_loss, show_images
from ddpm_lib.training import Trainer, ema_decay
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
B = 8 if FAST else 32  # fast mode (tests): a quarter of the batch, a tenth of the steps
for _ in range(20 if FAST else 200):
    x0 = torch.stack([dataset[i][0] for i in torch.randint(len(dataset), (B,))])  # line 2
    t = torch.randint(0, diffusion.num_timesteps, (B,))  # line 3
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
    probe = torch.stack([dataset[i][0] for i in range(16 if FAST else 64)])
    ts = list(range(0, 1000, 50))
    n = len(probe)
    per_t = [diffusion.training_loss(model, probe, t=torch.full((n,), t), noise=torch.randn_like(probe)).item() for t in ts]
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
# | EMA of the weights, with warm-up | the paper samples from EMA weights (decay 0.9999); what the warm-up makes of a short run's EMA: below |
# | atomic checkpoints with every RNG state | a killed run resumes **exactly** |
# | `torchrun` support | the same code trains on several GPUs or nodes with DDP |
#
# The configuration is a frozen dataclass whose defaults are the paper's; `TrainConfig.ddpm_demo()` keeps the paper's
# loss, schedule and $T$ and holds the CPU sizes listed at the top.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
paper, ddpm = TrainConfig(), TrainConfig.ddpm_demo()


def effective(cfg, field):  # None means "the preset's own", e.g. the paper's dropout 0.1
    value = getattr(cfg, field)
    return getattr(UNET_PRESETS[cfg.model], field) if field in ("dropout", "attention_resolutions") and value is None else value


for field in [
    "model",
    "attention_resolutions",
    "schedule",
    "num_timesteps",
    "prediction_type",
    "snr_gamma",
    "batch_size",
    "lr",
    "warmup_steps",
    "grad_clip",
    "ema_decay",
    "ema_warmup",
    "dropout",
]:
    print(f"{field:21s} paper: {effective(paper, field)!s:14s} ddpm_demo: {effective(ddpm, field)}")

# %% [markdown]
# The shipped weights `ddpm_lib/weights/ddpm_toy_cars_32.pt` (`ddpm_lib.checkpoints.DDPM_MODEL`) are 1,600 steps of
# exactly this recipe. Their model card (`python -m ddpm_lib.sample --checkpoint ddpm_lib/weights/ddpm_toy_cars_32.pt
# --info` prints all of it) holds the command that trained them; the cell prints it, and the fields of the stored
# configuration that differ from `TrainConfig.ddpm_demo()` other than the run's length and logs. Notebooks 06 and 07
# study those weights. Whoever runs the same command, or continues this notebook's run to 1,600 steps (section 4),
# trains that model: the same recipe, data and seed (another machine rounds differently, so its weights differ in
# detail). The last line is the time it takes on the 2-core CPU of `benchmarks/ladder.json`, at the seconds per step
# measured there for this network:

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
shipped = load_checkpoint(DDPM_MODEL)
shipped_config = TrainConfig.from_dict(shipped["config"])
differ = [
    f.name
    for f in dataclasses.fields(TrainConfig)
    if f.name not in BOOKKEEPING_FIELDS and getattr(shipped_config, f.name) != getattr(ddpm, f.name)
]
print(shipped["model_card"]["command"])
print(f"{DDPM_MODEL.name}: {shipped['step']:,} steps; fields of its recipe that differ from TrainConfig.ddpm_demo(): {differ or 'none'}")
cpu_timing = json.loads(Path("../benchmarks/ladder.json").read_text())["cpu_timing"]
cpu_step_s = cpu_timing["speeds"]["attention"]["s_per_step"]
print(f"{cpu_timing['machine']}: {cpu_step_s:.2f} s per step, {shipped['step']:,} steps in about {shipped['step'] * cpu_step_s / 60:.0f} min")

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
if FAST:  # the `tiny` U-Net (no attention) on a few images: the tests' run
    preset = "ddpm"
    config = TrainConfig.ddpm_demo(model="tiny", num_images=256, batch_size=8, max_steps=30, log_every=5, sample_every=15,
                                   sample_steps=10, num_sample_images=4, checkpoint_every=15)
elif device.type == "cuda":  # the paper's 64x64 configuration; a step budget that fits a 30-minute cell on one GPU
    preset = "paper"
    config = TrainConfig(model="ddpm-64", image_size=64, batch_size=64, warmup_steps=1000, max_steps=6000, max_minutes=25,
                         sample_every=1000, checkpoint_every=1000, ema_decay=0.999)
else:  # a step budget: the same model on every CPU, in more or less time
    preset = "ddpm"
    config = TrainConfig.ddpm_demo(max_steps=340, sample_every=170, checkpoint_every=170)
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
# explains the sampler). The first, at step 10, shows what a barely trained network draws. In the later ones, look
# for what comes first: the coarse layout and colours of a scene before shapes, and shapes before edges, the order in
# which the reverse process itself fixes an image (notebook 06 watches it happen). A few hundred steps of this recipe
# leave the cars rough; notebook 06 samples the shipped model, the same recipe after 1,600 steps.

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
# ### The EMA, and its warm-up
#
# The engine keeps an exponential moving average of the weights: after each optimiser step,
# $\text{ema} \leftarrow d\,\text{ema} + (1-d)\,w$. With a fixed decay $d$ it averages over roughly the last
# $1/(1-d)$ steps, 1,000 at this recipe's 0.999 and 10,000 at the paper's 0.9999; but it also keeps a share $d^k$ of
# the random initial weights after $k$ updates (37% of them after 1,000 updates at 0.999). So the engine warms the
# decay up (`ddpm_lib.training.ema_decay`): its first update copies the weights, and the $k$-th update after it uses
#
# $$d_k = \min\!\Big(d,\ \frac{1+k}{10+k}\Big).$$
#
# At $d = 0.999$ the second term reaches $d$ only at $k = 8{,}990$. Every update of this notebook's run, and of the
# shipped model's 1,600 steps, is still in the warm-up, where $1/(1 - d_k) = (10+k)/9$: the EMA averages over about
# the last ninth of the steps taken so far, not over the last 1,000. The cell prints the decay of each run's last
# update (after $n$ steps that is update $k = n - 1$), then draws the same noise through the EMA and the raw weights:

# %%
for label, steps, cfg in [("this run", trainer.step, config), (DDPM_MODEL.name, shipped["step"], shipped_config)]:
    d_last = ema_decay(cfg.ema_decay, cfg.ema_warmup, torch.tensor(steps - 1)).item()
    print(f"{label}: {steps:,} steps; the last EMA update's decay is {d_last:.4f} (the recipe's: {cfg.ema_decay}), "
          f"an average over roughly the last {1 / (1 - d_last):.0f} steps")
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
# Which of the two is better is a question for a metric, not for the eye. Notebook 07 scores both on two runs of 135
# steps (`benchmarks/eval_study.json`): this recipe, and the same with the cosine schedule. FID on 64 samples, lower
# is better, ± its bootstrap spread:

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
study = json.loads(Path("../benchmarks/eval_study.json").read_text())
for row in study["rows"]:
    if row["study"] == "training" and row["eta"] == 1.0:
        print(f"{row['schedule']:6s} schedule, {row['weights']:3s} weights, {row['train_steps']} steps: "
              f"FID {row['fid']:5.1f} ± {row['spread']['fid']:.1f}")

# %% [markdown]
# At that length the answer depends on the run (the four FIDs above): with the cosine schedule the EMA weights score
# far better, with this recipe's linear one the raw weights score slightly better. After 135 steps the last update's
# decay is $135/144 \approx 0.94$, an average over about the last 16 steps, and the raw weights depend on where the
# last steps happened to land. The case for the EMA (Ho et al. sample from an EMA with decay 0.9999) is made on long
# runs, which this notebook does not measure.

# %% [markdown]
# ## 3. Beyond the paper's recipe
#
# This notebook trains the paper's recipe as it stands. Notebook 08 improves it by measurement: starting from
# `--preset ddpm`, it makes one change at a time (the cosine schedule, $T = 500$, v-prediction, Min-SNR-5 loss
# weighting, no attention), trains every rung for the same CPU minutes with three seeds, and scores its EMA and raw
# weights with notebook 07's metrics (`benchmarks/ladder.py`, results in `benchmarks/ladder.json`), deriving the new
# losses on the way. Its last rung is `TrainConfig.cpu_demo()` (`--preset cpu`), the recipe of the shipped
# `pretrained_toy_cars_32.pt`.

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
# The same run continues from a shell with the command below (`--max-steps` is the run's new total: continued to
# 1,600 steps it has the length of the shipped model), and `python -m ddpm_lib.sample --checkpoint
# runs/notebook_05/checkpoint.pt` samples it. The cell builds the configuration that the command line makes of those
# arguments and checks that the checkpoint accepts it. Running this notebook again starts a fresh run, but never over
# a run continued past the notebook's budget: that one is kept and the notebook trains in `runs/notebook_05_fresh`
# instead.

# %%
from ddpm_lib.train import build_parser, config_from_args

base = PRESETS[preset]()  # the command line's defaults: the preset this cell's run started from
changed = [
    f.name
    for f in dataclasses.fields(TrainConfig)
    if f.name not in BOOKKEEPING_FIELDS and getattr(config, f.name) != getattr(base, f.name)
]
args = ["--preset", preset, "--out", str(RUN.relative_to("..")), "--resume", "--max-steps", str(shipped["step"])]
args += [a for name in changed for a in (f"--{name.replace('_', '-')}", str(getattr(config, name)))]
continued = TrainConfig.from_dict(ckpt["config"]).resumed_with(config_from_args(build_parser().parse_args(args)))
print("python -m ddpm_lib.train " + " ".join(args))
print(f"the checkpoint accepts it: the run continues with its own recipe to step {continued.max_steps:,}")

# %% [markdown]
# ## Summary
#
# - Algorithm 1 is a loop of four lines: draw $x_0$, $t$, $\epsilon$; noise with Eq. 4; regress $\epsilon$.
# - The engine adds speed (the measured precision, channels-last), stability (warm-up, clipping), the EMA the samples
#   come from, and checkpoints that resume exactly.
# - On a CPU it trains `TrainConfig.ddpm_demo()` (`--preset ddpm`): the paper's loss, linear schedule and $T = 1000$ on
#   a small U-Net. The shipped `ddpm_toy_cars_32.pt`, which notebooks 06 and 07 study, is 1,600 steps of it; the run
#   in `runs/notebook_05/` continues towards it from a shell (section 4).
# - The EMA's warm-up keeps its decay below 0.999 for the first 8,990 updates: in runs of a few hundred or a few
#   thousand steps the EMA averages over about the last ninth of the run, not over the last 1,000 steps.
# - Dropout (0.1 in the paper) is off in the CPU recipe, whose runs see each image a few times, not thousands.
# - Notebook 08 improves the recipe by measurement, one change at a time.

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer and a cell that checks it. The next cell imports what they use and builds
# small fixtures (a few seconds, no real training); the section runs on its own, without the cells above. Each answer
# is a function that computes by hand what a library function computes: the check runs it with that library function
# refused (`refusing`, from `ddpm_lib.grading`), then compares its values with the library's.

# %%
import math

import torch
import torch.optim.adam as torch_adam  # the modules of torch.optim's Adam, AdamW and AveragedModel
import torch.optim.adamw as torch_adamw
import torch.optim.swa_utils as swa_utils

import ddpm_lib.diagnose
import ddpm_lib.training
from ddpm_lib import GaussianDiffusion, build_model
from ddpm_lib.checkpoints import DDPM_MODEL, load_ema_model
from ddpm_lib.config import TrainConfig
from ddpm_lib.data import load_dataset
from ddpm_lib.grading import refusing
from ddpm_lib.training import Trainer


torch.manual_seed(0)
cars = load_dataset("toy_cars", image_size=32, num_images=64)
x0 = torch.stack([cars[i][0] for i in range(20)])  # 20 toy cars in [-1, 1], (20, 3, 32, 32)
t_probe = torch.arange(0, 1000, 50)  # (20,): two timesteps in each bucket of 100
noise = torch.randn_like(x0)  # (20, 3, 32, 32)
pretrained, diffusion, _ = load_ema_model(DDPM_MODEL)  # this notebook's recipe after 1,600 steps (eval mode)

# a tiny run of the engine: 5 steps of this notebook's recipe on batches of 8, in float32, keeping the raw weights
small_run = Trainer(
    TrainConfig.ddpm_demo(model="tiny", batch_size=8, precision="fp32", channels_last=False),
    dataset=cars,
    progress=False,
)
raw_after_step = []
for _ in range(5):
    small_run.train_step()
    raw_after_step.append({name: w.detach().clone() for name, w in small_run.model.state_dict().items()})
lr_first = small_run.lr_at(0)  # the learning rate of the first step: lr / warmup_steps

# a fresh tiny U-Net and the gradient of L_simple on one batch, before any optimiser step
fresh = build_model("tiny", image_size=32)
diffusion.training_loss(fresh, x0[:8], t=t_probe[:8], noise=noise[:8]).backward()
grads = [p.grad.detach().clone() for p in fresh.parameters()]

# %% [markdown]
# **Exercise 1.** $L_\text{simple}$ per noise level, by hand. Write `simple_loss_per_image(model, x0, t, noise)`:
# for a batch `x0` `(B, 3, H, W)` in $[-1, 1]$, timesteps `t` `(B,)` and noise `noise` of `x0`'s shape, build each
# $x_t$ by Eq. 4 from `diffusion.alphas_cumprod` (not with `q_sample` or `training_loss`: they are what you
# re-derive), run the $\epsilon$-network `model(x_t, t)` without gradients, and return a float32 tensor `(B,)`:
# for each image, the mean over its elements of $(\epsilon - \epsilon_\theta(x_t, t))^2$. Then `bucket_loss`, a
# tensor `(10,)`: for `pretrained` (the shipped model of this notebook's recipe) on `x0`, `t_probe` and `noise`,
# the mean of the per-image loss over each bucket of timesteps $[100b, 100b + 100)$. Because Algorithm 1 draws $t$
# uniformly, $L_\text{simple}$ is the average of the ten bucket losses. Which noise levels carry most of it?

# %% nbgrader={"grade": false, "grade_id": "ex1-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def simple_loss_per_image(model, x0, t, noise):
    ab = diffusion.alphas_cumprod[t].float().view(-1, 1, 1, 1)  # bar-alpha_t, (B, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise  # Eq. 4
    with torch.no_grad():
        eps_pred = model(x_t, t)
    return ((noise - eps_pred.float()) ** 2).mean(dim=(1, 2, 3))


bucket_loss = simple_loss_per_image(pretrained, x0, t_probe, noise).view(10, 2).mean(dim=1)  # t_probe is sorted
### END SOLUTION
print("loss per bucket of 100 steps:", [round(v, 4) for v in bucket_loss.tolist()])

# %% nbgrader={"grade": true, "grade_id": "ex1-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
with torch.no_grad():
    expected = torch.stack(
        [
            diffusion.training_loss(
                pretrained, x0[i : i + 1], t=t_probe[i : i + 1], noise=noise[i : i + 1]
            )
            for i in range(20)
        ]
    )
    whole_batch = diffusion.training_loss(pretrained, x0, t=t_probe, noise=noise)
order = torch.randperm(20, generator=torch.Generator().manual_seed(1))  # the answer must not assume sorted t
with refusing((GaussianDiffusion, "q_sample"), (GaussianDiffusion, "training_loss"),
              (GaussianDiffusion, "_training_loss"), answer=simple_loss_per_image):
    mine = simple_loss_per_image(pretrained, x0[order], t_probe[order], noise[order])
assert mine.shape == (20,), f"simple_loss_per_image should return shape (20,), got {tuple(mine.shape)}"
assert torch.allclose(mine.float(), expected[order], rtol=1e-4, atol=1e-6), (
    f"the per-image loss differs from the library's training_loss by up to {(mine.float() - expected[order]).abs().max().item():.2e}"
)
assert bucket_loss.shape == (10,), f"bucket_loss should have shape (10,), got {tuple(bucket_loss.shape)}"
assert torch.allclose(bucket_loss.float(), expected.view(10, 2).mean(1), rtol=1e-4, atol=1e-6), "bucket b averages the images with t in [100b, 100b + 100)"
assert torch.isclose(bucket_loss.float().mean(), whole_batch, rtol=1e-4), "the mean of the bucket losses should be L_simple of the whole batch"

# %% [markdown]
# **Exercise 2.** What the EMA holds. After each optimiser step the engine updates its EMA: the first update copies the
# weights, and each later one blends the new weights in with the warm-up decay of section 2 (the $k$-th blend after the
# copy uses $d_k$). After $n$ steps the EMA is therefore a weighted average $\sum_{s=1}^{n} c_s\, w_s$ of the weights
# $w_s$ after each step $s$. Write `ema_shares(n, decay)`: the list of the $n$ shares $c_1, \dots, c_n$ (floats) for
# an EMA of decay `decay` with the warm-up, worked out from the update rule (the check refuses the library's EMA:
# `AveragedModel`, `ddpm_lib.training.ema_decay` and the EMA helpers of `ddpm_lib.diagnose`). The check also mixes the
# 5 raw weights of the setup's engine run, `raw_after_step`, with your shares and compares the mixture with the
# engine's own EMA. After 1,600 steps at decay 0.999, what share do the first 800 steps keep?

# %% nbgrader={"grade": false, "grade_id": "ex2-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def ema_shares(n, decay):
    d = [min(decay, (1 + k) / (10 + k)) for k in range(n)]  # d[k]: the decay of the k-th blend (d[0]: the copy)
    shares, survive = [], 1.0  # survive: the product of the decays of the updates after step s
    for s in reversed(range(n)):  # step s + 1 (1-based) enters with weight 1 - d[s] (1 for the copy)
        shares.append(survive * (1.0 if s == 0 else 1 - d[s]))
        survive *= d[s]
    return shares[::-1]


### END SOLUTION
print(f"after 1,600 steps at decay 0.999 the first 800 steps keep {sum(ema_shares(1600, 0.999)[:800]):.2e} of the EMA")

# %% nbgrader={"grade": true, "grade_id": "ex2-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
EMA_LIBRARY = [
    (ddpm_lib.training, "ema_decay"),
    (ddpm_lib.training, "AveragedModel"),
    (ddpm_lib.diagnose, "ema_decay"),
    (ddpm_lib.diagnose, "ema_decays"),
    (ddpm_lib.diagnose, "ema_step_weights"),
    (ddpm_lib.diagnose, "check_ema_age"),
    (swa_utils, "AveragedModel"),
    (swa_utils, "get_ema_multi_avg_fn"),
    (Trainer, "_ema_update"),
]
cases = [(5, small_run.config.ema_decay), (1, 0.999), (40, 0.9), (1600, 0.999), (12000, 0.999)]
with refusing(*EMA_LIBRARY, answer=ema_shares):
    answers = {case: [float(c) for c in ema_shares(*case)] for case in cases}
for (n, decay), shares in answers.items():
    expected = ddpm_lib.diagnose.ema_step_weights(decay, True, n).tolist()
    assert len(shares) == n, f"ema_shares({n}, {decay}) should hold {n} shares, got {len(shares)}"
    worst = max(abs(a - b) for a, b in zip(shares, expected))
    assert worst < 1e-9, f"ema_shares({n}, {decay}) differs from the engine's shares by up to {worst:.2e}"
engine_ema = small_run.ema.module.state_dict()
mixed = {name: sum(c * w[name].double() for c, w in zip(answers[cases[0]], raw_after_step)) for name in engine_ema}
worst = max((mixed[name] - engine_ema[name].double()).abs().max().item() for name in engine_ema)
assert worst < 1e-5, f"the raw weights mixed with your shares differ from the engine's EMA by up to {worst:.2e}"

# %% [markdown]
# **Exercise 3.** Why warm up the learning rate? Write `adam_first_update(grads, lr)`: the change that Adam (betas 0.9
# and 0.999, eps $10^{-8}$) makes to each parameter at its very first step with learning rate `lr`, given the
# gradients `grads` (a list of tensors), as a list of tensors of the same shapes. Write the step out with its moment
# estimates and their bias correction (the check refuses `torch.optim`'s Adam). Then `largest_change`, a float: the
# largest absolute change over all parameters of `fresh` for its gradients `grads` at `lr_first`, the learning rate
# of the engine's first step (setup cell). Compare it with `lr_first`, and the change with the gradient's size: what
# would the first step do without the warm-up?

# %% nbgrader={"grade": false, "grade_id": "ex3-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def adam_first_update(grads, lr, betas=(0.9, 0.999), eps=1e-8):
    changes = []
    for g in grads:
        m_hat = (1 - betas[0]) * g / (1 - betas[0])  # = g: after one step the corrected first moment is the gradient
        v_hat = (1 - betas[1]) * g**2 / (1 - betas[1])  # = g^2
        changes.append(-lr * m_hat / (v_hat.sqrt() + eps))  # about -lr * sign(g), whatever |g| is
    return changes


largest_change = max(u.abs().max().item() for u in adam_first_update(grads, lr_first))
### END SOLUTION
print(f"lr at step 0: {lr_first:.1e}; largest change of a weight: {largest_change:.2e}")

# %% nbgrader={"grade": true, "grade_id": "ex3-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
def torch_adam_change(lr):
    params = [p.detach().clone().double().requires_grad_() for p in fresh.parameters()]
    for p, g in zip(params, grads):
        p.grad = g.double()
    before = [p.detach().clone() for p in params]
    torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8).step()
    return [p.detach() - b for p, b in zip(params, before)]


ADAM_LIBRARY = [
    (torch.optim, "Adam"),
    (torch.optim, "AdamW"),
    (torch_adam, "Adam"),
    (torch_adam, "adam"),
    (torch_adamw, "AdamW"),
    (torch_adamw, "adamw"),
]
for lr in (lr_first, 0.1):
    expected = torch_adam_change(lr)
    with refusing(*ADAM_LIBRARY, answer=adam_first_update):
        mine = adam_first_update([g.double() for g in grads], lr)
    assert len(mine) == len(expected), f"adam_first_update should return one tensor per parameter ({len(expected)}), got {len(mine)}"
    for u, e in zip(mine, expected):
        assert u.shape == e.shape, f"a change of shape {tuple(u.shape)} for a parameter of shape {tuple(e.shape)}"
        assert torch.allclose(u.double(), e, rtol=1e-5, atol=1e-12), f"adam_first_update(grads, {lr:g}) differs from Adam's first step"
expected = torch_adam_change(lr_first)
assert math.isclose(largest_change, max(e.abs().max().item() for e in expected), rel_tol=1e-5), "largest_change is the largest |change| at lr_first"

# %% [markdown]
# **Exercise 4.** How long does the EMA's warm-up last, and how old is a short run's EMA? Write `warmup_end(decay)`: the
# smallest number of updates $k$ whose warm-up decay $d_k$ (section 2) equals `decay` (an int; `decay` in $(0, 1)$).
# Then `mean_age(n, decay)`: the average age, in steps, of the weights in the EMA after an $n$-step run, a float
# (the weights after step $s$ are $n - s$ steps old; use your `ema_shares`). Compare `warmup_end(0.999)` with the
# 1,600 steps of the shipped model, and `mean_age(1600, 0.999)` with the 1,000 steps a decay of 0.999 suggests.

# %% nbgrader={"grade": false, "grade_id": "ex4-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def warmup_end(decay):
    # (1 + k) / (10 + k) >= d  <=>  k >= (10 d - 1) / (1 - d); rounded first, so that 8990.000000001 stays 8990
    return max(0, math.ceil(round((10 * decay - 1) / (1 - decay), 6)))


def mean_age(n, decay):
    return sum(c * (n - s) for s, c in enumerate(ema_shares(n, decay), start=1))


### END SOLUTION
print(f"warm-up ends after {warmup_end(0.999):,} updates at 0.999 and {warmup_end(0.9999):,} at 0.9999; "
      f"after 1,600 steps at 0.999 the EMA's weights are {mean_age(1600, 0.999):.0f} steps old on average")

# %% nbgrader={"grade": true, "grade_id": "ex4-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
with refusing(*EMA_LIBRARY, answer=warmup_end):  # mean_age lives in the same namespace: refused there too
    ends = {d: warmup_end(d) for d in (0.999, 0.9999, 0.99, 0.5, 0.1, 0.05)}
    ages = {case: float(mean_age(*case)) for case in [(1600, 0.999), (340, 0.999), (3000, 0.99), (1, 0.999)]}
for d, k in ends.items():
    reached = ddpm_lib.training.ema_decay(d, True, torch.arange(100_000)) >= d - 1e-12  # the engine's rule
    assert isinstance(k, int), f"warmup_end({d}) should be an int, got {type(k).__name__}"
    assert k == int(reached.float().argmax()), f"warmup_end({d}) = {k}, but the engine's decay first reaches {d} after {int(reached.float().argmax())} updates"
for (n, d), age in ages.items():
    expected = (ddpm_lib.diagnose.ema_step_weights(d, True, n) * torch.arange(n - 1, -1, -1, dtype=torch.float64)).sum().item()
    assert math.isclose(age, expected, rel_tol=1e-9, abs_tol=1e-9), f"mean_age({n}, {d}) = {age:.4f}, the engine's EMA: {expected:.4f}"
