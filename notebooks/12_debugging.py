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
# # 10 · Debugging diffusion: the failures you will meet, reproduced on purpose
#
# **Goal.** A diffusion model that fails rarely says why: it draws noise, grey blobs, burnt colours or copies, and its
# loss looks much like a working one. This notebook breaks a working model one thing at a time, shows what you would
# see, finds the one measurement that names each fault and tells it apart from the others, applies the fix and
# measures again. The measurements are the checks of `ddpm_lib.diagnose` (`python -m ddpm_lib.diagnose RUN`), so every
# section is also a test of that tool.
#
# **The models.** `DDPM_MODEL` (`ddpm_lib/weights/ddpm_toy_cars_32.pt`): the paper's DDPM ($\epsilon$-prediction,
# linear schedule, $T = 1000$) on the `small` U-Net, 1,600 steps of notebook 05's recipe; most sections break it.
# `PRETRAINED` (`ddpm_lib/weights/pretrained_toy_cars_32.pt`): notebook 08's recipe ($v$-prediction + Min-SNR-5,
# cosine, $T = 500$), 3,600 steps; the diagnosis at the end must find nothing wrong with it. Section 6 trains the
# `tiny` U-Net for a few tens of steps. The next cell prints each model's recipe from its file.
#
# **Learners' questions, and where they are answered.**
#
# | what you see | likely cause | the measurement that separates it | fix | § |
# |---|---|---|---|---|
# | colours shifted, washed out | data not in $[-1, 1]$ | `data_range`: min / max of the training tensor | `x / 127.5 - 1` | 1 |
# | "my samples are pure noise" | sampling with another schedule or $T$ than training | `sampling_schedule`: the plan against the config | sample with the checkpoint's own process | 2 |
# | noise or burnt blobs | a sign error in the sampler or the target | `loss_per_noise_level`: eps-MSE *above* predicting 0 | fix the sign | 3 |
# | "the colours are oversaturated" | no $x_0$ clipping in a few-step sampler | share of pixels outside $[-1, 1]$ before the final clamp | `clip_denoised=True` | 4 |
# | "everything comes out grey" | terminal SNR not ~0 | `terminal_signal`: $\sqrt{\bar\alpha_T}$ | $T \ge 1000$ (linear), cosine, or rescale | 5 |
# | "the loss is stuck around 0.8", "NaN" | learning rate too low / too high | the loss log; activations against fp16's range; `finite_weights` | lr 2e-4 .. 1e-3, warm-up, gradient clipping | 6 |
# | "EMA samples are noise early on" | EMA too young for the run | `ema_age`: its weight on the first 10% of steps | decay 0.999 with warm-up, or the raw weights | 7 |
# | samples vary run to run, worse loss | dropout left on at sampling | eps-MSE per band in train against eval mode | `model.eval()` | 8 |
# | "it copies my training images" | memorisation (tiny dataset) | `memorisation`: nearest-neighbour distances | more data, augmentation, shorter training | 9 |
#
# Notebook 07 answers "FID with 120 samples?" (its section 4 measures FID's bias and spread against the sample count):
# compare FIDs only at equal sample counts, with their spread.

# %%
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn

from ddpm_lib import diagnose as D
from ddpm_lib.build import model_args
from ddpm_lib.checkpoints import DDPM_MODEL, PRETRAINED, load_ema_model
from ddpm_lib.checks import env_flag
from ddpm_lib.config import TrainConfig
from ddpm_lib.data import from_uint8, load_dataset
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.model_card import recipe_summary
from ddpm_lib.plotting import show_grids
from ddpm_lib.sampling import generate
from ddpm_lib.schedules import make_betas
from ddpm_lib.training import Trainer
from ddpm_lib.unet import build_model

FAST = env_flag("DDPM_FAST")
device = torch.device("cpu")  # every case here is small; the CPU keeps the numbers the same on every machine
N = 4 if FAST else 16  # samples per grid
STEPS = 10 if FAST else 20  # DDIM steps
RUNS = Path("../runs/notebook_12")

model, diffusion, cfg = load_ema_model(DDPM_MODEL, device)
_, _, cfg_pretrained = load_ema_model(PRETRAINED, device)
print(f"DDPM_MODEL: {recipe_summary(cfg)}")
print(f"PRETRAINED: {recipe_summary(cfg_pretrained)}")

train = load_dataset("toy_cars", 32, "train", num_images=256)
test = load_dataset("toy_cars", 32, "test", num_images=128)
x_train, x_test = from_uint8(train.images), from_uint8(test.images)  # (256, 3, 32, 32), (128, ...) in [-1, 1]


def sample(net, process, n=N, steps=STEPS, **kw):
    """n DDIM samples (eta 1, fp32, seed 0) in [-1, 1]: the same starting noise for every case."""
    return generate(net, process, n, 32, sampler="ddim", num_steps=steps, eta=1.0, seed=0,
                    precision="fp32", **kw).images


def show(findings):
    """Each finding on one line (diagnose's own format)."""
    for f in findings:
        print(f)


t0 = time.perf_counter()
healthy = sample(model, diffusion)
print(f"{N} healthy samples, DDIM-{STEPS}: {time.perf_counter() - t0:.1f} s")
show(D.check_sample_colours(healthy, x_train))

# %% [markdown]
# The healthy samples and the data: every broken case below starts from the same noise, so its grid is directly
# comparable with this one. `check_sample_colours` compares colour statistics of samples with the data's; the cell
# above prints its finding for the healthy model. A handful of samples is a noisy measurement, so the check reports a
# difference it is unsure of as a *warning*; only a *problem* names a fault.

# %%
show_grids({"training data": x_train[:N], f"healthy DDPM_MODEL, DDIM-{STEPS}": healthy}, nrow=8);

# %% [markdown]
# ## 1. Data not in $[-1, 1]$: shifted, washed-out colours
#
# Ho et al. (2020, Sec. 3.3) scale images to $[-1, 1]$ so that the data and the noise $\epsilon \sim \mathcal N(0, I)$
# have the same scale and are centred alike. The commonest slip is `ToTensor()` alone, which gives $[0, 1]$: the data's
# mean moves to $+0.5$ while the noise stays at 0, so the network spends its capacity on an offset and samples come out
# washed out. Nothing in the loss says so. The measurement is plain: the range of the tensor that enters training.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
as_tensor = train.images.float() / 255  # what ToTensor() gives: [0, 1]
show(D.check_data_range(D.data_statistics(as_tensor), " (x / 255)"))
show(D.check_data_range(D.data_statistics(x_train), " (from_uint8: x / 127.5 - 1)"))

# %% [markdown]
# The first line is the problem, the second the fix (`ddpm_lib.data.from_uint8`), both with the numbers the check read.
# On a run folder, `diagnose` reads these statistics from the checkpoint when it records them (`data_stats`), else it
# measures the config's dataset when that is available offline.
#
# ## 2. Sampling with another schedule or $T$: "my samples are pure noise"
#
# The network learned $\epsilon_\theta(x_t, t)$ for the $\bar\alpha_t$ of *its* schedule. Sample it with another process
# and every step reads $t$ against the wrong noise level. Two common versions: a cosine schedule copied from another
# notebook (same $T$, other betas: the steps remove the wrong amount of noise and leave grain behind), and a smaller $T$
# "to sample faster" (linear, $T = 100$: every step thinks the image is far less noisy than the network was told).

# %%
broken = {}
for name, T in (("cosine", 1000), ("linear", 100)):  # not what DDPM_MODEL trained with (linear, T = 1000)
    wrong = GaussianDiffusion(make_betas(name, T))
    broken[f"sampled with {name}, T = {T}"] = sample(model, wrong)
    show(D.check_sampling_schedule(cfg, D.SamplingPlan.from_diffusion(wrong, STEPS)))
    show(D.check_sample_colours(broken[f"sampled with {name}, T = {T}"], x_train))
show(D.check_sampling_schedule(cfg, D.SamplingPlan.from_diffusion(diffusion, STEPS)))

# %%
show_grids({**broken, "fix: the checkpoint's own process": healthy}, nrow=8);

# %% [markdown]
# `check_sampling_schedule` names each difference (the problem lines above); the colour check only sees that the
# samples are off, and cannot say why. The fix is the process `load_ema_model` returns with the weights. To sample in fewer steps, use
# DDIM's `num_steps` (a subsequence of the same $T$), never a smaller $T$.
#
# ## 3. A sign error: noise or burnt blobs
#
# A sampler written by hand, or a target with the wrong sign (`x_t - noise` for `x_t + noise`), leaves a model whose
# $\epsilon$ points the wrong way. The samples look like case 2, but the cause is different, and the measurement that
# separates them is the loss per band of $t$: a network that learned nothing predicts 0 and scores $\mathbb E[\epsilon^2]
# = 1$; a network that predicts $-\epsilon$ scores $\mathbb E[(2\epsilon)^2] = 4$, *worse* than predicting nothing, in
# every band.

# %%
class Negated(nn.Module):
    """The network with its output's sign flipped: what a sign error in the sampler or the target does."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return -self.net(x, t)


negated = Negated(model)
x_loss = x_train[:4 if FAST else 16]  # images per band of t
rows = D.loss_per_band(negated, diffusion, x_loss, num_bands=5)
show(D.check_loss_bands(rows))
print("eps-MSE / predicting 0, per band (sign error):", [round(r["loss"] / r["trivial"], 2) for r in rows])
rows = D.loss_per_band(model, diffusion, x_loss, num_bands=5)
print("eps-MSE / predicting 0, per band (fixed):     ", [round(r["loss"] / r["trivial"], 2) for r in rows])
sign_broken = sample(negated, diffusion)

# %%
show_grids({"eps with the wrong sign": sign_broken, "fix: the right sign": healthy}, nrow=8);

# %% [markdown]
# The printed ratios of the sign error sit far above 1, where an untrained network would sit at 1 and a trained one well
# below: only a wrong sign (or a wrong target type, $v$ read as $\epsilon$) scores worse than predicting nothing.
#
# ## 4. No $x_0$ clipping: "the colours are oversaturated"
#
# Each DDPM or DDIM step first predicts $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta)/\sqrt{\bar\alpha_t}$.
# At large $t$ the division by a small $\sqrt{\bar\alpha_t}$ blows any error up far outside $[-1, 1]$, and with few
# steps there is no later step to pull it back: the image ends beyond the data's range and the final clamp burns it to
# saturated colours. Clipping $\hat x_0$ to $[-1, 1]$ at every step (`clip_denoised=True`, the default, as in Ho et al.'s
# code) prevents it. The measurement: the share of pixels outside $[-1, 1]$ *before* the final clamp. Here DDIM with
# $\eta = 0$ and few steps, where it matters most.

# %%
def unclamped(net, process, clip, n=N, steps=5):
    """The last step's x_0 of DDIM (eta 0), before generate's final clamp."""
    g = torch.Generator().manual_seed(0)
    *_, last = process.sample_progressive(net, (n, 3, 32, 32), "ddim", steps, 0.0, generator=g,
                                          clip_denoised=clip)
    return last.x_prev


for clip in (False, True):
    x0 = unclamped(model, diffusion, clip)
    outside = (x0.abs() > 1).float().mean().item()
    print(f"clip_denoised={clip!s:5}: {outside:.1%} of pixels outside [-1, 1], range [{x0.min():.2f}, {x0.max():.2f}]")
    show(D.check_sample_colours(x0.clamp(-1, 1), x_train))
    if clip:
        clipped = x0.clamp(-1, 1)
    else:
        burnt = x0.clamp(-1, 1)

# %%
show_grids({"DDIM-5, no x0 clipping": burnt, "fix: clip_denoised=True": clipped}, nrow=8);

# %% [markdown]
# The cell above prints, for each setting, the share of pixels outside $[-1, 1]$ (the measurement that names this
# fault) and the colour check's verdict on the clamped images: a handful of 5-step samples differs from the data even
# when clipped, but compare the printed shifts and std ratios, and the burnt grid. Few steps make it worst: each
# step's $\hat x_0$ enters the next $x_t$ with a large weight, and few later steps are left to pull it back.
#
# ## 5. Terminal SNR not ~0: "everything comes out grey"
#
# Sampling starts from $x_T \sim \mathcal N(0, I)$, but training saw $x_T = \sqrt{\bar\alpha_T}\,x_0 +
# \sqrt{1-\bar\alpha_T}\,\epsilon$. If $\sqrt{\bar\alpha_T}$ is not ~0, the network learned to read the image's mean
# brightness off $x_T$; at sampling there is none to read, so every sample gets the average brightness: grey, low
# contrast (Lin et al. 2023). The linear schedule's $\beta$ end points do not depend on $T$, so a linear schedule with a
# smaller $T$ keeps a signal. The check computes $\sqrt{\bar\alpha_T}$ from the betas alone:

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
for name, T in (("linear", 300), ("linear", 1000), ("cosine", 300)):
    show(D.check_terminal_signal(make_betas(name, T), name))

# %%

x_T = {}
for name, T in (("linear", 300), ("cosine", 300)):
    process = GaussianDiffusion(make_betas(name, T))
    noise = torch.randn(x_train.shape, generator=torch.Generator().manual_seed(0))
    x_T[name] = process.q_sample(x_train, torch.full((len(x_train),), T - 1), noise)
    r = torch.corrcoef(torch.stack([x_T[name].mean((1, 2, 3)), x_train.mean((1, 2, 3))]))[0, 1].item()
    print(f"{name}, T = {T}: correlation of x_T's mean brightness with the image's over {len(x_train)} images: {r:.2f}")

# %%
show_grids({"x_T, linear T = 300": x_T["linear"][:N], "x_T, cosine T = 300": x_T["cosine"][:N]}, nrow=8);

# %% [markdown]
# In the linear $T = 300$ grid the cars still show through the noise, and the printed correlation says how much of each
# image's brightness $x_T$ gives away; the cosine schedule's $x_T$ gives away none. The fix: $T \ge 1000$ for the linear
# schedule, or the cosine schedule, or rescaling the betas to zero terminal SNR (Lin et al. 2023, Algorithm 1). Both
# shipped models pass this check (the cell above prints linear $T = 1000$; `PRETRAINED` is cosine).
#
# ## 6. Learning rate too low or too high: a stuck loss, or NaN
#
# Predicting zero noise scores 1. A learning rate far too low leaves the loss near that for as long as you wait; one far
# too high, without warm-up and gradient clipping, throws the weights out of range and the loss explodes. Three short
# runs of the `tiny` U-Net, identical but for the learning rate (the high one also without warm-up and clipping):

# %%
STEPS_TRAIN, BATCH_TRAIN, SIZE_TRAIN = (15, 8, 16) if FAST else (40, 16, 32)  # fast mode (tests): 16 px
shutil.rmtree(RUNS, ignore_errors=True)
arms = {"too low (1e-7)": dict(lr=1e-7), "good (1e-3)": dict(lr=1e-3, warmup_steps=5),
        "too high (1.0, no clipping)": dict(lr=1.0, warmup_steps=0, grad_clip=1e12)}
logs, run_dirs = {}, {}
t0 = time.perf_counter()
for i, (arm, kw) in enumerate(arms.items()):
    config = TrainConfig.ddpm_demo(model="tiny", image_size=SIZE_TRAIN, num_images=256, batch_size=BATCH_TRAIN,
                                   max_steps=STEPS_TRAIN, log_every=1,
                                   sample_every=10**6, checkpoint_every=10**6, num_sample_images=4, sample_steps=5,
                                   precision="fp32", channels_last=False, **kw)
    run_dirs[arm] = RUNS / f"lr_{i}"
    Trainer(config, run_dirs[arm], device=device, progress=False).fit()
    logs[arm], _ = D.read_loss_log(run_dirs[arm] / "loss.csv")
print(f"{len(arms)} runs of {STEPS_TRAIN} steps: {time.perf_counter() - t0:.1f} s")
for arm, rows in logs.items():
    print(f"{arm:28s}", end=" ")
    show(D.check_loss_log(rows))

# %%
fig, ax = plt.subplots(figsize=(6, 3))
for arm, rows in logs.items():
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=arm)
ax.axhline(1.0, color="grey", ls=":", label="predicting 0")
ax.set(xlabel="step", ylabel="loss (eps-MSE)", yscale="log", title="the same run, three learning rates")
ax.legend(fontsize=8);

# %% [markdown]
# The printed log checks give each run's loss in its first and last tenth: the low learning rate's stays where it
# started, the good one falls, the high one jumps far above 1, the loss of predicting nothing (compare the printed
# values), and stays there. Where does NaN come from? From numbers that
# leave the range of the format. The diverged network's activations (measured below with hooks on its convolutions and
# linear layers) dwarf fp16's largest number, 65,504; in fp16 (mixed precision, a GPU's usual training format) they
# overflow to inf, and inf - inf or 0 x inf is NaN, which the next optimiser step writes into every weight.

# %%
def largest_activation(net, x, t):
    """The largest |output| of any convolution or linear layer of `net` at (x, t), in fp32."""
    seen, hooks = [], [m.register_forward_hook(lambda m, i, o: seen.append(o.abs().max().item()))
                       for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net(x, t)
    for h in hooks:
        h.remove()
    return max(seen)


x_in = torch.randn(4, 3, SIZE_TRAIN, SIZE_TRAIN, generator=torch.Generator().manual_seed(0))
t_in = torch.tensor([10, 100, 500, 900])
print(f"fp16 holds numbers up to {torch.finfo(torch.float16).max:,.0f}")
for arm in ("too high (1.0, no clipping)", "good (1e-3)"):
    ckpt = torch.load(run_dirs[arm] / "checkpoint.pt", weights_only=True)
    net = build_model(**model_args(TrainConfig.from_dict(ckpt["config"]))).eval()
    net.load_state_dict(ckpt["model"])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        finite = net(x_in, t_in).isfinite().all().item()
    print(f"{arm:28s} largest activation {largest_activation(net, x_in, t_in):.3g}; output finite in fp16: {finite}")
    show(D.check_finite_weights({"raw": ckpt["model"]}))

# %% [markdown]
# A loss that falls and then settles around 0.8 or 0.5 is a different thing: the average over $t$ of a working
# network's eps-MSE (small at large $t$, close to 1 at small $t$, where the noise is hardest to tell from the image). The
# per-band loss of section 3 separates "stuck" (every band near 1) from "working" (most bands well below).
#
# ## 7. An EMA too young: "EMA samples are noise early on"
#
# The EMA weight of the model after step $j$ of $n$ is $(1-d)\,d^{\,n-j}$ (and $d^{\,n-1}$ for the first), so with decay
# $d = 0.9999$ and no warm-up, after 1,600 steps most of the EMA is still the random initial network: its samples are
# noise while the raw weights already draw cars. `check_ema_age` sums the EMA's weight on the first 10% of steps:

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
show(D.check_ema_age(0.9999, False, 1600))
show(D.check_ema_age(cfg.ema_decay, cfg.ema_warmup, 1600))
share = D.ema_step_weights(0.9999, False, 1600)[:160].sum().item()

# %% [markdown]
# To see it, build the EMA of that run approximately: `share` (printed in the first line above) of the initial weights
# and the rest of the trained ones (the early steps' weights are close to the initial ones).

# %%
torch.manual_seed(cfg.seed)
init = build_model(**model_args(cfg)).state_dict()
trained = model.state_dict()
young = build_model(**model_args(cfg))
young.load_state_dict({k: share * init[k] + (1 - share) * v if v.is_floating_point() else v
                       for k, v in trained.items()})
young_samples = sample(young.eval(), diffusion)
show(D.check_sample_colours(young_samples, x_train))

# %%
show_grids({f"EMA 0.9999, no warm-up ({share:.0%} initial)": young_samples,
            "fix: 0.999 with warm-up": healthy}, nrow=8);

# %% [markdown]
# The fix: decay 0.999 with warm-up for short runs (`TrainConfig.ddpm_demo()` does this; the second line of the check
# above is its verdict at 1,600 steps), or sample the raw weights until the EMA has caught up (`--weights raw`).
#
# ## 8. Dropout left on at sampling
#
# Dropout (and BatchNorm) behave differently in training mode. A network called in training mode at sampling drops
# units at random: its predictions get worse and change from call to call. Our U-Net uses GroupNorm, and the shipped
# recipe trains without dropout, so here the same weights go into a network built with dropout 0.1 (the paper's CIFAR-10
# value), once in `eval()` mode and once in `train()` mode. The measurement: the eps-MSE per band, and whether two calls
# on the same input agree.

# %%
dropped = build_model(**{**model_args(cfg), "dropout": 0.1})
dropped.load_state_dict(trained)
x_t = diffusion.q_sample(x_loss, torch.full((len(x_loss),), 100), torch.randn_like(x_loss))
t_in = torch.full((len(x_loss),), 100)
for mode in ("train", "eval"):
    dropped.train(mode == "train")
    rows = D.loss_per_band(dropped, diffusion, x_loss, num_bands=5)
    with torch.no_grad():
        gap = (dropped(x_t, t_in) - dropped(x_t, t_in)).abs().max().item()
    print(f"{mode:5s} mode: eps-MSE per band {[round(r['loss'], 3) for r in rows]}, "
          f"two calls on one input differ by up to {gap:.3f}")

# %% [markdown]
# In train mode the loss rises in every band and two identical calls disagree; in eval mode the calls agree exactly. The
# library's samplers switch the network to eval mode for every step (`sample_progressive`), so this bites a hand-written
# loop, or a loss measured with the network left in train mode after training.
#
# ## 9. Memorisation: "it copies my training images"
#
# With few training images a network that fits its loss perfectly *must* copy: the best denoiser of a finite dataset is
# $\hat x_0(x_t) = \sum_i w_i(x_t)\,x^{(i)}$, a softmax over the training images $x^{(i)}$ with weights
# $w_i \propto \exp(-\lVert x_t - \sqrt{\bar\alpha_t}\,x^{(i)}\rVert^2 / 2(1-\bar\alpha_t))$, and sampling with it lands
# on a training image. Here it is, for 16 training images, as an $\epsilon$-network; the measurement is each sample's
# distance to its nearest training image against the held-out images' (Carlini et al. 2023).

# %%
class IdealDenoiser(nn.Module):
    """The exact eps-predictor of a finite dataset `images` (K, C, H, W) under `process`: it can only copy."""

    def __init__(self, images, process):
        super().__init__()
        self.images, self.ab = images, process.alphas_cumprod.float()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, x, t):
        ab = self.ab[t].view(-1, 1)
        d2 = torch.cdist(x.flatten(1) / ab.sqrt(), self.images.flatten(1)).square() * ab  # (B, K)
        w = torch.softmax(-d2 / (2 * (1 - ab)), dim=1)
        x0 = (w @ self.images.flatten(1)).view_as(x)
        return (x - ab.sqrt().view(-1, 1, 1, 1) * x0) / (1 - ab).sqrt().view(-1, 1, 1, 1)


few = x_train[:16]
copies = sample(IdealDenoiser(few, diffusion), diffusion)
show(D.check_memorisation(copies, few, x_test[:64]))
show(D.check_memorisation(healthy, x_train, x_test[:64]))

# %%
nearest = torch.cdist(copies.flatten(1), few.flatten(1)).argmin(1)
show_grids({"samples of the 16-image denoiser": copies, "their nearest training images": few[nearest],
            "DDPM_MODEL (many images)": healthy}, nrow=8);

# %% [markdown]
# The first check line calls the 16-image model a copier, with the distances that show it; the second, for
# `DDPM_MODEL`, trained on the whole toy-cars training set (8,144 images), does not (its samples are about as far from the 256 training
# images compared as held-out cars are). The fix is more data (or augmentation), or a smaller model or shorter training
# that cannot fit the dataset exactly.
#
# ## 10. The whole diagnosis: `python -m ddpm_lib.diagnose`
#
# The command runs every check above on a run folder or a weights file. First the run of section 6 whose learning rate
# was too high; then the shipped `PRETRAINED` weights, where it must find no problem. (Small sample counts keep it
# quick; the defaults measure more.)

# %%
quick = ["--num-samples", "8", "--steps", "10", "--data-images", "128", "--loss-images", "4"]
status = {"lr too high": D.main([str(run_dirs["too high (1.0, no clipping)"]), *quick, "--skip", "quality_measured"])}

# %% [markdown]
# With `--strict` a warning fails the diagnosis too, as a problem does:

# %%
status["PRETRAINED, --strict"] = D.main([str(PRETRAINED), "--num-samples", "16" if FAST else "32", "--steps",
                                         "10" if FAST else "20", "--data-images", "256", "--loss-images", "8",
                                         "--strict"])

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
for name, code in status.items():
    print(f"exit status, {name}: {code}")

# %% [markdown]
# The broken run: the problems it prints (its network predicts the noise far worse than predicting zero), exit
# status 1. The shipped weights: `no problem found (0 warning(s))`, exit status 0, with the time the diagnosis took.
#
# ## Summary
#
# - Most failures look alike (noise, grey, wrong colours); each has one measurement that names it: the data's range,
#   the sampling plan against the training config, the loss per band of $t$ (above 1: a sign error; near 1 everywhere:
#   nothing learned), the share of $\hat x_0$ outside $[-1, 1]$, $\sqrt{\bar\alpha_T}$, the loss log and finite weights,
#   the EMA's weight on its first steps, train against eval mode, nearest-neighbour distances.
# - Measure before you fix, and measure again after: every section above prints the same number broken and fixed.
# - `python -m ddpm_lib.diagnose RUN_OR_CHECKPOINT` runs all of these checks; it exits 1 when it finds a problem.
#
# ## Exercises
#
# Each exercise has a cell for your answer and a cell that checks it. The next cell builds what they use, without the
# cells above: 64 training and 64 held-out toy cars in $[-1, 1]$, and four "runs" `cases`, each a dict with the
# `betas` `(T,)` its schedule used and 32 of its `samples` `(32, 3, 32, 32)`: in each, at most one thing is wrong.
# The checks compare your answers with `ddpm_lib.diagnose` and run them with its checks switched off (`refusing` from
# `ddpm_lib.grading`), so an answer that calls them fails.

# %%
import torch

from ddpm_lib import diagnose, schedules, training
from ddpm_lib.data import from_uint8, load_dataset
from ddpm_lib.diagnose import check_memorisation, check_sample_colours, check_terminal_signal  # noqa: F811
from ddpm_lib.grading import names_used, refusing
from ddpm_lib.schedules import make_betas  # noqa: F811

train_x = from_uint8(load_dataset("toy_cars", 32, "train", num_images=64).images)  # (64, 3, 32, 32)
held_x = from_uint8(load_dataset("toy_cars", 32, "test", num_images=64).images)  # (64, 3, 32, 32)
g = torch.Generator().manual_seed(1)
cases = {
    "a": {"betas": make_betas("linear", 1000), "samples": held_x[:32].flip(-1)},
    "b": {"betas": make_betas("cosine", 500), "samples": (train_x[:32] + 0.01 * torch.randn(32, 3, 32, 32, generator=g)).clamp(-1, 1)},
    "c": {"betas": make_betas("linear", 200), "samples": held_x[:32]},
    "d": {"betas": make_betas("cosine", 500), "samples": 0.1 * held_x[:32] - 0.2},
}
print({k: (len(c["betas"]), tuple(c["samples"].shape)) for k, c in cases.items()})
CHECKS = ["check_terminal_signal", "terminal_signal", "alphas_cumprod_from_betas", "check_sample_colours",
          "colour_statistics", "check_memorisation", "nearest_distances", "diagnose", "check_ema_age",
          "ema_step_weights", "ema_decays", "ema_decay"]


def library(*names):
    """Each of `names` where an answer would find it: diagnose, schedules, training and this notebook."""
    places = []
    for name in names:
        places += [(mod, name) for mod in (diagnose, schedules, training) if name in vars(mod)]
        places += [(globals(), name)] if name in globals() else []
    return places

# %% [markdown]
# **Exercise 1.** Write `which_fault(betas, samples, train, held_out)` that returns `"terminal_signal"` when the schedule
# leaves $\sqrt{\bar\alpha_T} > 0.05$, else `"grey"` when the median over samples of each sample's standard deviation
# over its pixels is below 0.25 times the same median of `train`, else `"memorisation"` when at least half of the samples
# are nearer a training image (RMS pixel distance, also to the mirrored training images) than 0.5 times the median
# nearest distance of the `held_out` images to `train`, else `"none"`. Use tensor arithmetic, not `ddpm_lib.diagnose`.
# Then print its verdict on each of `cases`.

# %% nbgrader={"grade": false, "grade_id": "ex1-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def which_fault(betas, samples, train, held_out):
    if torch.prod(1 - betas.double()).sqrt().item() > 0.05:
        return "terminal_signal"
    if samples.flatten(1).std(1).median() < 0.25 * train.flatten(1).std(1).median():
        return "grey"
    refs = torch.cat([train, train.flip(-1)]).flatten(1)

    def nearest(x):
        return torch.cdist(x.flatten(1), refs).amin(1) / refs.shape[1] ** 0.5

    copies = (nearest(samples) < 0.5 * nearest(held_out).median()).float().mean()
    return "memorisation" if copies >= 0.5 else "none"


### END SOLUTION
for key, case in cases.items():
    print(key, which_fault(case["betas"], case["samples"], train_x, held_x))

# %% nbgrader={"grade": true, "grade_id": "ex1-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
used = names_used(which_fault) & set(CHECKS)
assert not used, f"which_fault uses {sorted(used)}: compute the measurements yourself"


def verdict(betas, samples):
    """diagnose's checks, in the order of the exercise."""
    if check_terminal_signal(betas)[0].severity == "problem":
        return "terminal_signal"
    if check_sample_colours(samples, train_x)[0].severity == "problem":
        return "grey"
    return "memorisation" if check_memorisation(samples, train_x, held_x)[0].severity == "problem" else "none"


extra = {"e": {"betas": make_betas("linear", 300), "samples": train_x[32:64]},
         "f": {"betas": make_betas("linear", 1000), "samples": train_x[10:42].flip(-1)}}
expected = {k: verdict(c["betas"], c["samples"]) for k, c in {**cases, **extra}.items()}
assert sorted(set(expected.values())) == ["grey", "memorisation", "none", "terminal_signal"], expected
with refusing(*library(*CHECKS), answer=which_fault):
    got = {k: which_fault(c["betas"], c["samples"], train_x, held_x) for k, c in {**cases, **extra}.items()}
assert got == expected, f"which_fault says {got}, diagnose's checks {expected}"

# %% [markdown]
# **Exercise 2.** An EMA with decay $d$ and no warm-up, after $n$ optimiser steps, puts the weight $d^{\,n-1}$ on the
# first step's model and $(1-d)\,d^{\,n-j}$ on step $j > 1$'s. Write `ema_early_share(d, n, k)`, the EMA's total weight
# on the first `k` steps, in closed form (no loop, no `ddpm_lib`), and print it for $d = 0.9999$, $n = 1600$, $k = 160$.

# %% nbgrader={"grade": false, "grade_id": "ex2-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def ema_early_share(d, n, k):
    return d ** (n - k)  # d^(n-1) + (1 - d)(d^(n-2) + ... + d^(n-k)) telescopes to d^(n-k)


### END SOLUTION
print(f"EMA 0.9999 after 1,600 steps: {ema_early_share(0.9999, 1600, 160):.1%} of its weight on the first 160 steps")

# %% nbgrader={"grade": true, "grade_id": "ex2-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
used = names_used(ema_early_share) & set(CHECKS)
assert not used, f"ema_early_share uses {sorted(used)}: write the closed form"
for d_, n_, k_ in [(0.9999, 1600, 160), (0.999, 1600, 160), (0.99, 50, 5), (0.9, 10, 1)]:
    expected = diagnose.ema_step_weights(d_, False, n_)[:k_].sum().item()
    with refusing(*library(*CHECKS), answer=ema_early_share):
        got = float(ema_early_share(d_, n_, k_))
    assert abs(got - expected) < 1e-9, f"ema_early_share({d_}, {n_}, {k_}) = {got}, the trainer's rule gives {expected}"

# %% [markdown]
# **Exercise 3.** The linear schedule's $\beta_t$ rise from $10^{-4}$ to $0.02$ whatever $T$. Write
# `smallest_linear_T(limit)`, the smallest $T \ge 2$ for which this schedule leaves $\sqrt{\bar\alpha_T} \le$ `limit`
# (an int), with `torch.linspace` (not `make_betas` or `ddpm_lib`), and print it for 0.05, the limit of `diagnose`'s
# terminal-signal problem.

# %% nbgrader={"grade": false, "grade_id": "ex3-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def smallest_linear_T(limit):
    T = 2
    while torch.prod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64)).sqrt() > limit:
        T += 1
    return T


### END SOLUTION
print(f"the linear schedule needs T >= {smallest_linear_T(0.05)} for sqrt(bar-alpha_T) <= 0.05")

# %% nbgrader={"grade": true, "grade_id": "ex3-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
used = names_used(smallest_linear_T) & {*CHECKS, "make_betas"}
assert not used, f"smallest_linear_T uses {sorted(used)}: build the betas with torch.linspace"
for limit in (0.05, 0.01, 0.2):
    with refusing(*library(*CHECKS, "make_betas"), answer=smallest_linear_T):
        T_ = smallest_linear_T(limit)
    assert isinstance(T_, int), f"smallest_linear_T should return an int, got {type(T_).__name__}"
    signal = [schedules.terminal_signal(make_betas("linear", T)) for T in (T_ - 1, T_)]
    assert signal[1] <= limit < signal[0], f"smallest_linear_T({limit}) = {T_}: the library's terminal signal at T - 1, T is {signal}"
