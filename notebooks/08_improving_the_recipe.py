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
# # 08 · Improving the recipe, by measurement
#
# **Goal.** Notebooks 05-07 trained, sampled and measured the paper's DDPM at CPU size. This notebook changes that
# recipe one thing at a time into the recipe the package ships, and measures every change with notebook 07's metrics
# at equal CPU minutes: the prediction target ($\epsilon$, $x_0$ or $v$) and the loss weight each one implies,
# Min-SNR weighting, the schedule and $T$ (notebook 01's warning, resolved), the EMA and its warm-up, attention or
# not. It ends with the shipped model itself, beside the paper's.
#
# **You will:** derive what each target's loss weighs, in units of the image error, and check it numerically; measure
# where two trained networks err, in noise units and in image units; read an ablation ladder with its error bars and
# say what each rung shows and what it does not; sample the shipped model and the paper's model side by side.
#
# **The models.** Sections 2 and 8 load `ddpm_toy_cars_32.pt` (`DDPM_MODEL`: the paper's recipe, $\epsilon$-prediction,
# linear schedule, $T = 1000$, attention at 16x16, 1,600 steps) and `pretrained_toy_cars_32.pt` (`PRETRAINED`: the
# shipped recipe, $v$-prediction with Min-SNR-5, cosine schedule, $T = 500$, no attention, 3,600 steps); the first cell
# prints both from their model cards.
#
# **Where the numbers come from.** The ladder is 22 training runs of 15 CPU minutes each, about five and a half hours
# of a 2-core CPU: too long to repeat here, so sections 1 and 3-7 read `benchmarks/ladder.json`, written by
# `benchmarks/ladder.py` (section 1 prints where it ran). Everything else is computed live: the identities, the
# errors of the two shipped networks, and samples of each.
#
# **Deviations from the paper** are the subject: every change below departs from Ho et al.'s recipe on purpose, and
# each is measured. FIDs are in the toy-cars feature space of notebook 07: they compare with each other, never with
# published numbers.

# %%
import json
import math
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from ddpm_lib import GaussianDiffusion, make_betas
from ddpm_lib.checkpoints import DDPM_MODEL, PRETRAINED, load_checkpoint, load_ema_model
from ddpm_lib.config import TrainConfig
from ddpm_lib.data import from_uint8, load_dataset
from ddpm_lib.devices import select_device
from ddpm_lib.model_card import RECIPE_FIELDS, recipe_summary
from ddpm_lib.plotting import ladder_order, plot_ladder, show_images
from ddpm_lib.sampling import generate
from ddpm_lib.schedules import log_snr, terminal_signal
from ddpm_lib.training import ema_decay

from ddpm_lib.checks import env_flag

FAST = env_flag("DDPM_FAST")
ASSETS = "../assets"
device = select_device()
LADDER = json.loads(Path("../benchmarks/ladder.json").read_text())
RUNS = LADDER["runs"]
MODELS = {path: load_ema_model(path, device) for path in (DDPM_MODEL, PRETRAINED)}  # (model, diffusion, config)
CARDS = {path: load_checkpoint(path)["model_card"] for path in MODELS}
for path, card in CARDS.items():
    print(f"{path.name}: {card['title']}")

# %% [markdown]
# Each file's config is the preset its recipe names: `TrainConfig.ddpm_demo()` (`--preset ddpm`, the paper's recipe at
# CPU size) and `TrainConfig.cpu_demo()` (`--preset cpu`, the shipped one), field for field over the fields of a
# model card's recipe:

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
for path, preset in ((DDPM_MODEL, TrainConfig.ddpm_demo()), (PRETRAINED, TrainConfig.cpu_demo())):
    config = MODELS[path][2]
    same = all(getattr(config, f) == getattr(preset, f) for f in RECIPE_FIELDS)
    print(f"{path.name}: {recipe_summary(config)}; the preset's recipe: {same}")

# %% [markdown]
# ## 1. The question and the protocol
#
# **The question.** Which changes to the paper's recipe buy better cars per minute of a small CPU, and how much does
# each buy? The **ladder** starts from the paper's recipe on the CPU U-Net (rung `paper`, `TrainConfig.ddpm_demo()`)
# and adds one change per rung, keeping the ones before: `+cosine` (the cosine schedule), `+T500` ($T = 500$), `+v`
# ($v$-prediction), `+min-snr-5` (Min-SNR-5 weighting), `-attention` (no self-attention), which is
# `TrainConfig.cpu_demo()`, the shipped recipe. **Side arms** change one thing of one rung, to ask a question the
# ladder cannot: $\epsilon$- or $x_0$-prediction under the same Min-SNR-5 weighting, the EMA without its warm-up, and
# the linear schedule at $T = 500$.
#
# **Equal CPU minutes, not equal steps.** A change can make a step cheaper (no attention) or dearer, and a user with a
# CPU has minutes, not steps: at equal steps a slower recipe would get its extra cost for free. So the two network
# shapes' seconds per step were timed on a 2-core CPU (an AMD EPYC with AVX2 only: no bf16 instructions, so fp32),
# and every run trained for the steps its shape buys in 15 minutes there. Those steps were
# run on a GPU, which computes the same steps sooner: same batches, same optimiser, in bf16 there (the CPU would run
# fp32). The CPU minutes are the CPU's; the arithmetic was the GPU's.
#
# **The metrics** are notebook 07's: 1,000 DDIM-50 ($\eta = 1$) samples against 5,000 training images in the toy-cars
# feature space: FID (lower is better), precision (fidelity), recall (diversity) and `class_tv` (body-type coverage),
# beside the real-vs-real baseline (held-out images scored the same way). Each run was scored at half its budget and at
# the end, from its EMA weights and from its raw weights.
#
# **Seeds and error bars.** Each rung ran with 3 seeds (the seed fixes the initial weights, the batches, $t$, the
# noise, and the samples scored); the error bars are the standard deviation over those seeds. Three seeds give a rough
# spread: a gap of several of them is a finding, a gap of one is not. The side arms ran with one seed each; the rung
# they change gives the yardstick for their seed noise.

# %%
settings, timing = LADDER["settings"], LADDER["cpu_timing"]
budget = settings["budget_cpu_minutes"]
print(f"budget: {budget:g} minutes of {timing['machine']}; scored at {settings['points']} CPU minutes")
print(f"scoring: {settings['num_samples']:,} samples, {settings['sampler']}")
print(f"the steps ran on: {settings['train_machine']}")
for shape, speed in timing["speeds"].items():
    print(f"  {shape:12s}: {speed['s_per_step']:.3f} s per step on that CPU ({speed['precision']}, "
          f"{speed['threads']} threads, {speed['parameters']:,} parameters): "
          f"{round(budget * 60 / speed['s_per_step'])} steps in {budget:g} minutes")
rungs, arms = ladder_order(LADDER)


def change_of(name: str) -> tuple[str | None, dict]:
    """The recipe `name` changes (the rung before it, or an arm's rung) and its one change."""
    mine = RUNS[name]["overrides"]
    for base in (rungs[: rungs.index(name)][-1:] if name in rungs else rungs):
        theirs = RUNS[base]["overrides"]
        diff = {k: mine.get(k) for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)}
        if len(diff) == 1:
            return base, diff
    return None, {}


for name in rungs + arms:
    seeds = RUNS[name]["seeds"]
    base, diff = change_of(name)
    what = f"{base} with {diff}" if base else "the paper's recipe (TrainConfig.ddpm_demo())"
    print(f"{'rung' if name in rungs else 'arm ':4s} {name:14s} {len(seeds)} seed{'s' * (len(seeds) > 1)}, "
          f"{seeds[0]['curve'][-1]['step']} steps ({seeds[0]['precision']} on {seeds[0]['device']}): {what}")


# %% [markdown]
# Two helpers read a recipe's final scores (at 15 CPU minutes) over its seeds:

# %%
def finals(name: str, key: str = "fid", weights: str = "ema") -> list[float]:
    """The final `key` of every seed of a recipe, from its EMA weights or its raw weights."""
    points = [seed["curve"][-1] for seed in RUNS[name]["seeds"]]
    return [(p if weights == "ema" else p["raw"])[key] for p in points]


def score(name: str, key: str = "fid", weights: str = "ema", digits: int = 2) -> str:
    """'mean ± std (n seeds)', or the value of a single seed."""
    values = finals(name, key, weights)
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def mean(name: str, key: str = "fid", weights: str = "ema") -> float:
    return statistics.fmean(finals(name, key, weights))


def std(name: str, key: str = "fid") -> float:
    values = finals(name, key)
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def compare(a: str, b: str) -> str:
    """The change of mean final FID from recipe a to recipe b, in units of their seeds' spread (a single seed
    has none: the other recipe's spread stands for it)."""
    diff = mean(b) - mean(a)
    spread = math.hypot(*(s for s in (std(a), std(b)) if not math.isnan(s)))
    return f"{a} -> {b}: FID {diff:+.2f}, {diff / spread:+.1f} x the seed spread"


def shape_of(name: str) -> str:
    """The network shape whose timing sets a recipe's steps."""
    return "no-attention" if RUNS[name]["overrides"].get("attention_resolutions") == [] else "attention"


print("paper recipe after", budget, "CPU minutes: FID", score("paper"), "| shipped recipe:", score("-attention"))

# %% [markdown]
# ## 2. Three targets, one objective
#
# The paper's network predicts the noise. Two other targets are common: the clean image $x_0$ itself (diffusers
# calls it `"sample"`, and so does the library), and the **velocity** of Salimans & Ho (2022, App. D),
#
# $$v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0 .$$
#
# Any one estimate converts into the others through Eq. 4, $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$:
# given $x_t$ and an estimate $\hat x_0$, the noise it implies is $\hat\epsilon = (x_t - \sqrt{\bar\alpha_t}\,\hat x_0)/\sqrt{1-\bar\alpha_t}$,
# and $\hat v = \sqrt{\bar\alpha_t}\,\hat\epsilon - \sqrt{1-\bar\alpha_t}\,\hat x_0$. So the three losses measure one
# error in three units. Subtract the two expressions for $\epsilon$:
#
# $$\epsilon - \hat\epsilon = -\frac{\sqrt{\bar\alpha_t}}{\sqrt{1-\bar\alpha_t}}\,(x_0 - \hat x_0)
# \quad\Longrightarrow\quad \|\epsilon - \hat\epsilon\|^2 = \mathrm{SNR}_t\,\|x_0 - \hat x_0\|^2,
# \qquad \mathrm{SNR}_t = \frac{\bar\alpha_t}{1-\bar\alpha_t}.$$
#
# For $v$, put that into the difference of the two $v$'s:
#
# $$v - \hat v = \sqrt{\bar\alpha_t}\,(\epsilon - \hat\epsilon) - \sqrt{1-\bar\alpha_t}\,(x_0 - \hat x_0)
# = -\Big(\frac{\bar\alpha_t}{\sqrt{1-\bar\alpha_t}} + \sqrt{1-\bar\alpha_t}\Big)(x_0 - \hat x_0)
# = -\frac{x_0 - \hat x_0}{\sqrt{1-\bar\alpha_t}},$$
#
# $$\|v - \hat v\|^2 = \frac{\|x_0 - \hat x_0\|^2}{1-\bar\alpha_t} = (\mathrm{SNR}_t + 1)\,\|x_0 - \hat x_0\|^2,$$
#
# since $1/(1-\bar\alpha_t) = \bar\alpha_t/(1-\bar\alpha_t) + 1$. The $x_0$ target weighs the $x_0$ error by 1. Checked
# with the library's conversions (`q_sample`, `predict_noise_from_x0`, `velocity`), in float64, for one arbitrary
# $\hat x_0$ at several $t$ of the paper's schedule:

# %%
paper = GaussianDiffusion(make_betas("linear", 1000))  # the paper's schedule; constants in float64
g = torch.Generator().manual_seed(0)
x0 = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=g, dtype=torch.float64)  # any estimate of x_0
t = torch.tensor([0, 10, 100, 500, 900, 999])
x_t = paper.q_sample(x0, t, noise)  # Eq. 4
eps_hat = paper.predict_noise_from_x0(x_t, t, x0_hat)  # the same estimate as a noise prediction ...
v, v_hat = paper.velocity(x0, t, noise), paper.velocity(x0_hat, t, eps_hat)  # ... and as a v prediction
sq = lambda a, b: (a - b).pow(2).flatten(1).sum(1)  # (B,): each image's squared error
snr = paper.snr(t)
ratio_eps, ratio_v = sq(noise, eps_hat) / sq(x0, x0_hat), sq(v, v_hat) / sq(x0, x0_hat)
for i, t_i in enumerate(t.tolist()):
    print(f"t={t_i:3d}: SNR {snr[i].item():9.3e} | eps error / x0 error {ratio_eps[i].item():9.3e} | "
          f"v error / x0 error {ratio_v[i].item():9.3e}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("||eps - eps_hat||^2 == SNR ||x0 - x0_hat||^2:", torch.allclose(ratio_eps, snr, rtol=1e-9))
print("||v - v_hat||^2 == (SNR + 1) ||x0 - x0_hat||^2:", torch.allclose(ratio_v, snr + 1, rtol=1e-9))
# the samplers need eps: GaussianDiffusion.eps_from_output recovers the same eps from a v or an x_0 output
for kind, output in (("v_prediction", v_hat), ("sample", x0_hat)):
    eps_back = GaussianDiffusion(paper.betas, prediction_type=kind).eps_from_output(x_t, t, output)
    print(f"eps_from_output of the {kind} output gives eps_hat:", torch.allclose(eps_back, eps_hat, rtol=1e-9))

# %% [markdown]
# So $L_\text{simple}$, the paper's $\|\epsilon - \hat\epsilon\|^2$ at uniform $t$, is an $x_0$ loss weighted by
# $\mathrm{SNR}_t$. The weights of the three targets over the paper's schedule (the $\epsilon$ and $v$ curves meet where
# $\mathrm{SNR}_t \gg 1$, so they are drawn in different styles):

# %%
t_all = torch.arange(paper.num_timesteps)
snr_all = paper.snr(t_all)
fig, ax = plt.subplots(figsize=(7.5, 3.6))
ax.plot(t_all, snr_all, color="C0", lw=4, alpha=0.5, label=r"$\epsilon$ target ($L_\mathrm{simple}$): SNR$_t$")
ax.plot(t_all, snr_all + 1, color="C1", ls="--", marker="o", ms=3, markevery=40, label=r"$v$ target: SNR$_t$ + 1")
ax.plot(t_all, torch.ones_like(snr_all), color="C2", ls=":", lw=2, label=r"$x_0$ target: 1")
ax.set_yscale("log")
ax.set_xlabel("t (linear schedule, T = 1000)")
ax.set_ylabel(r"weight on $\|x_0 - \hat x_0\|^2$")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plt.show()
cosine = GaussianDiffusion(make_betas("cosine", 500))
for label, d in (("linear, T = 1000", paper), ("cosine, T = 500", cosine)):
    s = d.snr(torch.arange(d.num_timesteps))
    print(f"{label}: SNR from {s[0].item():,.0f} at t = 0 down to {s[-1].item():.1e} at t = {d.num_timesteps - 1}")

# %% [markdown]
# The cell above prints how far the weight of $L_\text{simple}$ falls: a range of about $10^{8}$ over the paper's
# schedule, and more over the cosine schedule, whose last step has $\bar\alpha$ of almost exactly 0. At small $t$ an
# error in the image costs thousands of times its size; at large $t$ almost nothing.
#
# **Small $t$ is easy in image units and hard in noise units.** Near $t = 0$ the image is almost all there, so
# predicting $x_0$ is easy, while the faint noise is buried in the image's own detail, so predicting $\epsilon$ is hard;
# near $t = T$ the reverse. Measured on the two shipped networks: 32 training images noised at ten timesteps evenly
# spaced in log-SNR, each network's squared error in both units (means over pixels; $\hat x_0$ not clipped), against
# the log-SNR, the axis two schedules share. The dotted line is the error of always answering the data's mean image.

# %%
train = load_dataset("toy_cars", image_size=32, num_images=1024 if FAST else 2048)
real = from_uint8(train.images)  # (N, 3, 32, 32) in [-1, 1]
x0_probe = real[: 8 if FAST else 32]  # the fast mode (tests) probes 8 images
mean_image_error = real.var(0).mean().item()  # E|x0 - mean image|^2 per pixel


def error_profile(model, diffusion, points: int = 10) -> list[dict]:
    """The network's squared error on x0_probe, in noise units and image units, at `points` timesteps evenly
    spaced in log-SNR (mean over pixels; hat-x_0 not clipped)."""
    ls = torch.log(diffusion.snr(torch.arange(diffusion.num_timesteps)))
    ts = sorted({int((ls - v).abs().argmin()) for v in torch.linspace(ls.min(), ls.max(), points)})
    g = torch.Generator().manual_seed(1)
    rows = []
    for t in ts:
        noise = torch.randn(x0_probe.shape, generator=g)
        x_t = diffusion.q_sample(x0_probe, t, noise)
        with torch.no_grad():
            output = model(x_t.to(device), torch.full((len(x_t),), t, device=device)).float().cpu()
        eps = diffusion.eps_from_output(x_t, t, output)  # the network's output as a noise estimate
        x0_hat = diffusion.predict_x0_from_noise(x_t, t, eps)
        rows.append(
            {
                "t": t,
                "log_snr": ls[t].item(),
                "eps": (eps - noise).pow(2).mean().item(),
                "x0": (x0_hat - x0_probe).pow(2).mean().item(),
            }
        )
    return rows


profiles = {path.name: error_profile(model, diffusion) for path, (model, diffusion, _) in MODELS.items()}
for name, rows in profiles.items():
    print(name)
    for r in rows:
        print(f"  t={r['t']:3d}  log-SNR {r['log_snr']:+6.1f}: error in noise units {r['eps']:.4f}, "
              f"in image units {r['x0']:.2e}")
print(f"error of the data's mean image: {mean_image_error:.3f}")

# %%
fig, ax = plt.subplots(figsize=(7.5, 3.8))
for (name, rows), colour in zip(profiles.items(), ("C0", "C1")):
    ls = [r["log_snr"] for r in rows]
    ax.plot(ls, [r["eps"] for r in rows], "o-", color=colour, label=f"{name}: noise units")
    ax.plot(ls, [r["x0"] for r in rows], "s--", color=colour, mfc="none", label=f"{name}: image units")
ax.axhline(mean_image_error, color="k", ls=":", lw=1, label="the data's mean image, image units")
ax.set_yscale("log")
ax.set_xlabel(r"log-SNR (left: noisy, large t; right: clean, small t)")
ax.set_ylabel("mean squared error per pixel")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# Read the two ends of the table above. At the cleanest step each network's error in image units is its smallest and
# its error in noise units its largest; at the noisiest step the noise error is near 0 and the image error is that of
# a guess. The paper's network, which outputs $\epsilon$, has an image error there far above
# the data's mean image: its small noise error is divided by $\sqrt{\mathrm{SNR}_t}$ on the way to $\hat x_0$ (the
# blow-up notebook 06 met when Algorithm 2 ran without clipping). The shipped network, which outputs $v$, stays within
# a small factor of the mean-image error. Section 3 comes back to this: it is a property of the output, not of the
# objective.

# %% [markdown]
# ## 3. Min-SNR-$\gamma$: one weight for every target
#
# Hang et al. (2023) start from the $x_0$ error and choose its weight directly: $\min(\mathrm{SNR}_t, \gamma)$, with
# $\gamma = 5$. No step counts more than $\gamma$ times its image error, and the noisy steps keep the weight
# $\mathrm{SNR}_t$ that $L_\text{simple}$ gives them. By section 2, each target gets it by one factor on its own loss:
#
# $$\min(\mathrm{SNR}_t, \gamma)\,\|x_0 - \hat x_0\|^2 = \frac{\min(\mathrm{SNR}_t,\gamma)}{\mathrm{SNR}_t}\|\epsilon - \hat\epsilon\|^2
# = \frac{\min(\mathrm{SNR}_t,\gamma)}{\mathrm{SNR}_t + 1}\|v - \hat v\|^2 = \min(\mathrm{SNR}_t,\gamma)\,\|x_0 - \hat x_0\|^2 .$$
#
# `GaussianDiffusion.training_loss(..., snr_gamma=5)` applies that factor to each image's loss, whatever the target.
# Checked with one estimate $\hat x_0$ handed to the loss as each target's output, on the cosine schedule with
# $T = 500$ (where Min-SNR enters the ladder):

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
targets = {
    kind: GaussianDiffusion(make_betas("cosine", 500), prediction_type=kind)
    for kind in ("epsilon", "v_prediction", "sample")
}
d = targets["epsilon"]
t_check = torch.tensor([0, 5, 100, 250, 450, 499])
x0_check = x0[: len(t_check)]
x_t_check = d.q_sample(x0_check, t_check, noise[: len(t_check)])
x0_est = x0_check + 0.1 * torch.randn(x0_check.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
eps_est = d.predict_noise_from_x0(x_t_check, t_check, x0_est)
outputs = {"epsilon": eps_est, "v_prediction": d.velocity(x0_est, t_check, eps_est), "sample": x0_est}
snr_check = d.snr(t_check)
by_hand = (snr_check.clamp(max=5.0) * (x0_est - x0_check).pow(2).flatten(1).mean(1)).mean().item()
for kind, out in outputs.items():
    constant = lambda x, t, out=out: out  # noqa: E731  (a "network" that returns this target's output)
    lib = targets[kind].training_loss(constant, x0_check, t=t_check, noise=noise[: len(t_check)],
                                      snr_gamma=5.0).item()
    print(f"{kind:12s} target, Min-SNR-5: loss == mean of min(SNR, 5) |x0 - x0_hat|^2 (float32):",
          abs(lib - by_hand) < 1e-5 * by_hand)

# %% [markdown]
# ### 3.1 The rungs: $\epsilon$, then $v$, then Min-SNR-5
#
# Three rungs of the ladder differ only in the loss (all on the cosine schedule with $T = 500$, with attention):
# `+T500` trains $\epsilon$ with $L_\text{simple}$, `+v` trains $v$ with its plain loss, `+min-snr-5` trains $v$ with
# Min-SNR-5. In $x_0$ units their weights are $\mathrm{SNR}_t$, $\mathrm{SNR}_t + 1$ and $\min(\mathrm{SNR}_t, 5)$. So
# `+v` differs from `+T500` only where $\mathrm{SNR}_t$ is not large against 1, the noisy steps, where it adds 1; and
# `+min-snr-5` differs from `+v` everywhere: it takes that 1 back where $\mathrm{SNR}_t < 5$ (there it equals the
# $\epsilon$ weight exactly) and caps the clean steps at 5. Their scores:

# %%
for name in ("+T500", "+v", "+min-snr-5"):
    print(f"{name:11s} FID {score(name)}  precision {score(name, 'precision', digits=3)}  "
          f"recall {score(name, 'recall', digits=3)}")
for a, b in (("+T500", "+v"), ("+v", "+min-snr-5"), ("+T500", "+min-snr-5")):
    print(compare(a, b))

# %% [markdown]
# $v$ alone is clearly worse than $\epsilon$ at this budget, by many times the seeds' spread (printed), and its recall
# is the lowest of the three; Min-SNR-5 brings $v$ back, to about one spread better than $\epsilon$: not a clear gain
# over $\epsilon$ with three seeds.
#
# **Where each weight puts the loss.** A weight alone does not say where the training effort goes: a step's loss is
# its weight times the error the network makes there, and at the noisy steps that error is large and mostly beyond
# any network (the image is barely in $x_t$). For a rough picture, take the image error of the shipped network
# (section 2) as a function of log-SNR, put it on the cosine schedule's steps, and multiply by each rung's weight:
# the share of each rung's loss that falls on the noisy steps (log-SNR < -2), the middle, and the clean steps
# (log-SNR > 2), with $t$ uniform as in training. This is an estimate with one network's errors, not a measurement
# of the ladder's runs.

# %%
rows = sorted(profiles[PRETRAINED.name], key=lambda r: r["log_snr"])  # np.interp wants increasing log-SNR
ls_probe, err_probe = np.array([r["log_snr"] for r in rows]), np.array([r["x0"] for r in rows])
ls_cos = torch.log(cosine.snr(torch.arange(cosine.num_timesteps))).numpy()  # the training steps' log-SNR
err_cos = np.exp(np.interp(ls_cos, ls_probe, np.log(err_probe)))  # image error at each step (interpolated)
snr_cos = np.exp(ls_cos)
weights = {"+T500 (eps): SNR": snr_cos, "+v: SNR + 1": snr_cos + 1, "+min-snr-5: min(SNR, 5)": np.minimum(snr_cos, 5)}
bands = {"noisy (log-SNR < -2)": ls_cos < -2, "middle": np.abs(ls_cos) <= 2, "clean (log-SNR > 2)": ls_cos > 2}
print(f"{'':27s}" + "".join(f"{b:>22s}" for b in bands))
print(f"{'share of the steps':27s}" + "".join(f"{m.mean():22.0%}" for m in bands.values()))
for label, w in weights.items():
    loss = w * err_cos  # each step's expected loss
    print(f"{label:27s}" + "".join(f"{loss[m].sum() / loss.sum():22.0%}" for m in bands.values()))
fig, axes = plt.subplots(1, 2, figsize=(13, 3.6))
for (label, w), style in zip(weights.items(), [dict(lw=4, alpha=0.5), dict(ls="--"), dict(ls=":", lw=2)]):
    axes[0].plot(ls_cos, w, label=label, **style)
    axes[1].plot(ls_cos, w * err_cos / (w * err_cos).sum(), label=label, **style)
axes[0].set_yscale("log")
axes[0].set_ylabel(r"weight on $\|x_0 - \hat x_0\|^2$")
axes[1].set_ylabel("share of the loss, per step")
for ax in axes:
    ax.set_xlabel("log-SNR of the step (cosine, T = 500)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# With errors like the shipped network's, the table above says: $L_\text{simple}$ spends most of its loss on the clean
# steps (the image there costs $\mathrm{SNR}_t$, thousands, per unit of error); plain $v$ adds a large share on the
# noisy steps, where the error is mostly what no network can remove; Min-SNR-5 moves most of its loss to the middle,
# where the picture is decided. That is consistent with the scores (the noisy share up, FID up; the middle share up,
# FID down) but it does not prove a cause: the ladder measured FID, not where the gradient went, and `+min-snr-5`
# changed both ends at once. An arm that caps only the clean steps of $v$, or adds only the 1 to $\epsilon$, would
# separate them.
#
# ### 3.2 Under Min-SNR the target is a parameterisation
#
# Under Min-SNR-5 the three targets minimise the same function of $\hat x_0$ (checked above). What still differs is the
# **parameterisation**: what the network must output, and how the sampler turns that output into the $\hat x_0$ and
# $\hat\epsilon$ it uses. An output error $\delta$ reaches them as follows (read off Eq. 4 and the definition of $v$):
#
# | network outputs | error in $\hat x_0$ | error in $\hat\epsilon$ |
# | --- | --- | --- |
# | $\epsilon$ | $\delta\,\sqrt{1-\bar\alpha_t}/\sqrt{\bar\alpha_t} = \delta/\sqrt{\mathrm{SNR}_t}$ | $\delta$ |
# | $v$ | $\delta\,\sqrt{1-\bar\alpha_t}$ | $\delta\,\sqrt{\bar\alpha_t}$ |
# | $x_0$ | $\delta$ | $\delta\,\sqrt{\bar\alpha_t}/\sqrt{1-\bar\alpha_t} = \delta\,\sqrt{\mathrm{SNR}_t}$ |
#
# $\epsilon$ amplifies its errors into $\hat x_0$ at the noisy steps (`predict_x0_from_noise` divides by
# $\sqrt{\bar\alpha_t}$), $x_0$ amplifies them into $\hat\epsilon$ at the clean steps (`eps_from_output` for `"sample"`
# divides by $\sqrt{1-\bar\alpha_t}$), and $v$ amplifies nowhere. The factors, measured by perturbing an output and
# converting it with the library (cosine, $T = 500$):

# %%
delta = 1e-3 * torch.ones_like(x_t_check)
print(f"{'t':>4s} {'SNR':>9s} | {'output':>12s}: {'gain into x0_hat':>16s} {'gain into eps_hat':>17s}")
for i, t_i in enumerate(t_check.tolist()):
    x_i, t_1 = x_t_check[i : i + 1], t_check[i : i + 1]
    for kind, out in outputs.items():
        lib = targets[kind]
        base, moved = (lib.eps_from_output(x_i, t_1, o) for o in (out[i : i + 1], out[i : i + 1] + delta[:1]))
        gain_eps = ((moved - base).abs().mean() / 1e-3).item()
        x0_base, x0_moved = (lib.predict_x0_from_noise(x_i, t_1, e) for e in (base, moved))
        gain_x0 = ((x0_moved - x0_base).abs().mean() / 1e-3).item()
        print(f"{t_i:4d} {snr_check[i].item():9.2e} | {kind:>12s}: {gain_x0:16.3g} {gain_eps:17.3g}")

# %% [markdown]
# The side arms put this to the test: the shipped recipe (`-attention`, $v$ with Min-SNR-5) against the same recipe
# with $\epsilon$ or with $x_0$ as the target:

# %%
for name in ("-attention", "eps+min-snr-5", "x0+min-snr-5"):
    target = RUNS[name]["overrides"]["prediction_type"]
    print(f"{name:14s} ({target:12s}) FID {score(name)}  precision {score(name, 'precision', digits=3)}  "
          f"recall {score(name, 'recall', digits=3)}")
for name in ("eps+min-snr-5", "x0+min-snr-5"):
    print(compare("-attention", name), "(the v rung's spread; the arm has one seed)")

# %% [markdown]
# The $x_0$ arm scored the best FID of the whole ladder, the $\epsilon$ arm the worst of the three, each by a few of
# the $v$ rung's seed spreads (printed). The output that amplifies into $\hat x_0$ at the noisy steps did worst; that
# fits the table above, and notebook 06's finding that the paper model's colours go wrong exactly there. But each arm
# is **one seed**: the $v$ rung's three seeds spread by the std printed, and one seed of an arm can sit one or two
# such spreads from its own mean. The ranking of $x_0$ above $v$ is a lead, not a result. What would settle it: the
# two arms with the rungs' three seeds,
# `python benchmarks/ladder.py train --device cuda --recipes eps+min-snr-5 x0+min-snr-5 --arm-seeds 3 --points 7.5 15 --add --out benchmarks/ladder.json`.

# %% [markdown]
# ## 4. Schedule and $T$: notebook 01's warning, measured
#
# Notebook 01 warned that the linear schedule with a short $T$ never reaches noise, yet sampling starts from pure
# noise. The terminal signal $\sqrt{\bar\alpha_T}$ (`terminal_signal`) of the schedules in the ladder, and the share of
# training updates (uniform $t$) spent where less than a tenth of the image's amplitude is left:

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
schedules = {
    ("linear", 1000): "paper",
    ("linear", 500): "linear-T500",
    ("cosine", 1000): "+cosine",
    ("cosine", 500): "+T500",
}
for (kind, T_), name in schedules.items():
    betas = make_betas(kind, T_)
    ac = torch.cumprod(1 - betas, 0)
    print(f"{kind:6s} T={T_:4d} (rung or arm {name:11s}): signal left sqrt(alpha_bar_T) = "
          f"{terminal_signal(betas):.5f}, log-SNR at T {log_snr(betas)[-1].item():+6.1f}; "
          f"updates with sqrt(alpha_bar_t) < 0.1: {(ac.sqrt() < 0.1).double().mean().item():.1%}")

# %% [markdown]
# **What $T$ changes.** Training draws $t$ uniformly from $\{0, \dots, T-1\}$, so a schedule and $T$ together fix
# where the updates go in log-SNR. The cosine schedule defines $\bar\alpha$ as a function of $t/T$ (notebook 01), so
# $T = 500$ and $T = 1000$ spread their updates over log-SNR in the same way, only on a coarser grid. The linear
# schedule keeps its endpoints $\beta = 10^{-4} \to 0.02$ whatever $T$: halving $T$ halves the noise it adds in all,
# and cuts off the tail of nearly pure noise where the linear schedule with $T = 1000$ spends a third of its updates
# (printed above). The distribution of log-SNR over training updates:

# %%
fig, ax = plt.subplots(figsize=(8, 3.6))
bins = np.linspace(-20, 10, 61)
styles = {
    ("linear", 1000): dict(color="C0", lw=2),
    ("linear", 500): dict(color="C0", ls="--", lw=2),
    ("cosine", 1000): dict(color="C1", lw=5, alpha=0.4),
    ("cosine", 500): dict(color="C1", ls=":", lw=2),
}
for (kind, T_), style in styles.items():
    ax.hist(
        log_snr(make_betas(kind, T_)).numpy(),
        bins=bins,
        density=True,
        histtype="step",
        label=f"{kind}, T = {T_} ({schedules[(kind, T_)]})",
        **style,
    )
ax.axvline(math.log(0.01 / 0.99), color="k", lw=1, ls=":")  # sqrt(alpha_bar) = 0.1
ax.set_xlabel(r"log-SNR of the step (dotted: $\sqrt{\bar\alpha_t} = 0.1$)")
ax.set_ylabel("share of training updates (density)")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.show()
for name in ("paper", "+cosine", "+T500", "linear-T500"):
    print(f"{name:12s} FID {score(name)}  precision {score(name, 'precision', digits=3)}  "
          f"recall {score(name, 'recall', digits=3)}")
for a, b in (("paper", "+cosine"), ("+cosine", "+T500"), ("paper", "linear-T500"), ("+cosine", "linear-T500")):
    print(compare(a, b))

# %% [markdown]
# **What the ladder shows.** The cosine schedule beats the linear one by about twice the seeds' spread (`paper` to
# `+cosine`, printed). Then $T = 500$ on the cosine schedule changes nothing the seeds can tell apart (`+cosine` to
# `+T500`): as the histogram predicts, it trains on the same noise levels. On the linear schedule $T = 500$ is a
# different story: the `linear-T500` arm scores like the cosine rungs, well below the paper's rung.
#
# **Notebook 01's warning, resolved.** The mismatch is real: with the linear schedule and $T = 500$ the model never
# trains on less than the signal printed above (8% of the amplitude, a log-SNR near -5), and sampling starts from a
# log-SNR of minus infinity. At this budget it cost less than what cutting the tail gained, as measured: the arm
# beats the paper rung by more than twice that rung's seed spread (printed). That is one seed, at 15 CPU minutes; a longer run,
# in which the noisy tail is learned anyway, could rank them differently. The two effects can be taken apart with
# one more arm: the linear schedule at $T = 500$ rescaled to zero terminal SNR (notebook 01, exercise 4), which keeps
# the tail cut and removes the mismatch. The cosine schedule has neither problem at any $T$, which is why the
# shipped recipe uses it. And a change's gain depends on the rungs before it: $T = 500$ helped the linear schedule
# and did nothing for the cosine one.

# %% [markdown]
# ## 5. The EMA and its warm-up
#
# The samples come from an exponential moving average of the weights. The trainer's rule
# (`ddpm_lib.training.ema_decay`): the first update copies the weights, and update $k \ge 1$ moves the average towards
# the weights with decay $d_k = \min(d, (1+k)/(10+k))$, $d = 0.999$ in both presets. A decay $d_k$ averages over
# roughly the last $1/(1-d_k)$ steps. After the ladder's 601 or 708 steps:

# %%
for steps in sorted({seed["curve"][-1]["step"] for run in RUNS.values() for seed in run["seeds"]}):
    k = torch.arange(1, steps)  # the updates after the copy
    d_last = ema_decay(0.999, True, k[-1:]).item()
    kept_warm = torch.prod(ema_decay(0.999, True, k)).item()
    kept_flat = torch.prod(ema_decay(0.999, False, k)).item()
    print(f"{steps} steps: last decay {d_last:.5f} with warm-up (a window of ~{1 / (1 - d_last):.0f} steps); "
          f"weight left on the first copy: {kept_warm:.1e} with warm-up, {kept_flat:.3f} without (0.999^{steps - 1})")

# %% [markdown]
# With the warm-up, the EMA of a 700-step run averages about its last 80 steps (printed), far shorter than the 1,000
# that 0.999 suggests; the start of training is forgotten. Without it, the first copy, the random initial weights
# after one optimiser step at a hundredth of the learning rate, still holds about half of the average (printed). The
# arm `no-ema-warmup` (the shipped recipe with the warm-up off) measures what that costs, beside the EMA and raw
# weights of every rung, all scored from the same runs:

# %%
print(f"{'recipe':14s} {'EMA weights':>18s} {'raw weights':>18s}   raw, per seed")
for name in rungs + arms:
    print(f"{name:14s} {score(name):>18s} {score(name, weights='raw'):>18s}   "
          + ", ".join(f"{v:.1f}" for v in finals(name, weights="raw")))

# %% [markdown]
# Without the warm-up the EMA weights are useless (the FID printed for `no-ema-warmup`, with precision and recall 0 in
# section 7), while the raw weights of the same run score close to the raw weights of its rung, `-attention`: the
# training went as well, but half of the average is still the initial noise. With the warm-up the EMA weights beat
# the raw ones on average in every rung, and the raw scores jump between seeds (per seed above): a raw score depends
# on where the last steps landed, and the average removes exactly that.

# %% [markdown]
# ## 6. Attention or not
#
# The U-Net's self-attention at 16x16 costs time on a CPU. At equal CPU minutes, dropping it buys more steps:

# %%
steps_of = {name: [p["step"] for p in RUNS[name]["seeds"][0]["curve"]] for name in ("+min-snr-5", "-attention")}
for name, steps in steps_of.items():
    speed = timing["speeds"][shape_of(name)]
    fids = [[s["curve"][i]["fid"] for s in RUNS[name]["seeds"]] for i in range(len(steps))]
    print(f"{name:11s} {speed['parameters']:,} parameters, {speed['s_per_step']:.3f} s per step: steps {steps} "
          f"at {settings['points']} CPU minutes; FID "
          + ", ".join(f"{statistics.fmean(f):.1f} ± {statistics.stdev(f):.1f}" for f in fids))
print(f"no attention: {steps_of['-attention'][-1] / steps_of['+min-snr-5'][-1] - 1:.0%} more steps;",
      compare("+min-snr-5", "-attention"))

# %% [markdown]
# At both points the recipe without attention is better, at the end by four times the seeds' spread (printed). At
# equal minutes the gain
# mixes two things, the extra steps and the network without its attention layer; the ladder does not separate them,
# and it need not: the question was quality per CPU minute. (A GPU's step costs little more with attention, so there
# the answer could differ.)

# %% [markdown]
# ## 7. The whole ladder
#
# Left: each recipe's final FID, the mean and standard deviation over seeds of the EMA weights (grey dots: single
# seeds; red rings: raw weights); the side arms on the right, each named with the rung it changes. Middle: precision
# and recall against the real-vs-real values. Right: FID at half the budget and at the end, for the rungs.

# %%
fig = plot_ladder(LADDER)
plt.show()

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print(f"{'recipe':14s} {'steps':>5s} {'FID (EMA)':>16s} {'change':>7s} {'FID (raw)':>16s} {'precision':>9s} "
      f"{'recall':>7s} {'class_tv':>8s}")
for name in rungs + arms:
    base, _ = change_of(name)
    step = RUNS[name]["seeds"][0]["curve"][-1]["step"]
    change = f"{mean(name) - mean(base):+7.2f}" if base else ""
    print(f"{name:14s} {step:5d} {score(name):>16s} {change:>7s} {score(name, weights='raw'):>16s} "
          f"{mean(name, 'precision'):9.3f} {mean(name, 'recall'):7.3f} {mean(name, 'class_tv'):8.3f}")
baseline = RUNS["paper"]["seeds"][0]["curve"][-1]["baseline"]
print(f"{'real vs real':14s} {'':5s} {baseline['fid']:16.2f} {'':7s} {'':16s} {baseline['precision']:9.3f} "
      f"{baseline['recall']:7.3f} {baseline['class_tv']:8.3f}")

# %% [markdown]
# **Read it with its conditions.**
#
# - The minutes are a CPU's (the 2-core AVX2 EPYC, fp32, section 1), the arithmetic a GPU's (bf16): the steps are the
#   same, their rounding is not, so a run on the CPU itself would not repeat these numbers exactly.
# - Rungs have 3 seeds, the arms 1. Differences of one seed spread are noise; the `change` column (each rung against
#   the one before, each arm against its rung) is meaningful only where it is several spreads.
# - The budget is 15 CPU minutes, about 600-700 steps: what wins early need not win late. The shipped model trains
#   five times longer (section 8).
# - The ladder is **cumulative**: a rung's gain is measured on top of the rungs before it, in this order. $T = 500$
#   gained nothing after the cosine schedule but a lot on the linear one (section 4); $v$ lost alone and recovered with
#   Min-SNR. Another order would credit the changes differently.
#
# From the paper's recipe to the shipped one, at equal CPU minutes, FID falls from the `paper` row to the
# `-attention` row, and precision and recall both rise (the table); in units of the seeds' spread:

# %%
print(compare("paper", "-attention"))

# %% [markdown]
# ## 8. The shipped model
#
# The last rung trained longer is the model the package ships: `pretrained_toy_cars_32.pt` (`PRETRAINED`, what
# `python -m ddpm_lib.sample` draws from). Beside it, the paper's recipe trained longer: `ddpm_toy_cars_32.pt`
# (`DDPM_MODEL`, the model notebooks 06 and 07 study). The two differ in recipe and in length:

# %%
for path, (_, _, config) in MODELS.items():
    steps = CARDS[path]["training"]["steps"]
    speed = timing["speeds"]["no-attention" if config.attention_resolutions == () else "attention"]
    print(f"{path.name}: {recipe_summary(config)}; {steps:,} steps of batch {config.batch_size} "
          f"(= {steps * speed['s_per_step'] / 60:.0f} minutes of the ladder's CPU)")

# %% [markdown]
# Notebook 06 found that the paper model's samples spread their brightness too wide (too many pale and too many dark
# images) and blamed the error that $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon)/\sqrt{\bar\alpha_t}$ amplifies
# at high noise, the first row of the table in section 3.2. The same sampler (DDIM-50, $\eta = 1$, clipping) for both
# models, from the same seed: 64 samples of the shipped model (the picture at the top of the README) and, to keep the
# notebook quick, 32 of the paper's:

# %%
n_samples = {PRETRAINED: 8, DDPM_MODEL: 8} if FAST else {PRETRAINED: 64, DDPM_MODEL: 32}
steps = 10 if FAST else 50  # fast mode (tests): fewer images and steps
samples = {}
for path, n in n_samples.items():
    model, diffusion, _ = MODELS[path]
    samples[path.name] = out = generate(model, diffusion, n, 32, num_steps=steps, eta=1.0, seed=5)
    fig = show_images(
        out.images,
        nrow=8,
        scale=1.2,
        title=f"{path.name}: DDIM {steps} steps, eta = 1, {n} samples ({out.seconds:.0f} s)",
    )
    if path == PRETRAINED and not FAST:
        fig.savefig(f"{ASSETS}/samples.png", dpi=110, bbox_inches="tight")  # the README's picture
    plt.show()

# %% [markdown]
# The colours, measured as in notebook 06: each channel's mean, the spread (standard deviation over images) of each
# image's mean colour, and the share of images brighter than 95% of the data or darker than 5% of it (5% each for
# the data itself):

# %%
brightness_of = lambda x: (x.mean((1, 2, 3)) + 1) / 2  # (N,): each image's brightness in [0, 1]
p5, p95 = torch.quantile(brightness_of(real), torch.tensor([0.05, 0.95])).tolist()


def colour_stats(x: torch.Tensor) -> dict:
    """Colour statistics of images (N, 3, H, W) in [-1, 1]."""
    per_image = x.mean((2, 3))  # (N, 3): each image's mean colour
    b = brightness_of(x)
    return {
        "n": len(x),
        "mean": x.mean((0, 2, 3)),
        "se": per_image.std(0) / len(x) ** 0.5,
        "spread": per_image.std(0),
        "brighter": (b > p95).float().mean().item(),
        "darker": (b < p5).float().mean().item(),
    }


colour = {"data": colour_stats(real), **{name: colour_stats(out.images) for name, out in samples.items()}}
signed = lambda v: " ".join(f"{x:+.2f}" for x in v.tolist())
plain = lambda v: " ".join(f"{x:.2f}" for x in v.tolist())
print(f"{'':26s}{'n':>5s}  {'mean R, G, B':^17s}  {'s.e.':>4s}  {'image-mean spread':^17s}  {'> data p95':>10s}"
      f"  {'< data p5':>9s}")
for name, c in colour.items():
    print(f"{name:26s}{c['n']:5d}  {signed(c['mean']):^17s}  {c['se'].max().item():4.2f}  {plain(c['spread']):^17s}"
          f"  {c['brighter']:10.0%}  {c['darker']:9.0%}")

# %% [markdown]
# And the scores stored in each model's card (1,000 DDIM-50 samples against 5,000 training images, the protocol of
# the ladder; the card names its source):

# %%
for path, card in CARDS.items():
    first = card["metrics"][0]
    scores = [m for m in card["metrics"] if (m["protocol"], m["source"]) == (first["protocol"], first["source"])]
    print(f"{path.name}, from {first['source']}:")
    print(
        "   "
        + ", ".join(
            f"{m['name']} {m['value']:.3g}"
            + (f" ± {m['std']:.2g}" if m.get("std") else "")
            + f" (real vs real {m['baseline']:.3g})"
            for m in scores
        )
    )

# %% [markdown]
# Compare the rows of the colour table: the shipped model's image-mean spread is close to the data's, the paper
# model's is wider, and the shipped model puts fewer samples beyond the data's brightness percentiles; its card's FID
# is a fraction of the paper model's (the scores above). The ladder says how much of that is the recipe: at equal CPU
# minutes the shipped recipe's FID is about half the paper recipe's (section 7); the rest is training longer (the
# step counts above). Which change cured the colours was not measured separately; section 3.2 gives the candidate,
# the $\epsilon$ output's amplification into $\hat x_0$ at high noise, which neither $v$ nor $x_0$ has.

# %% [markdown]
# ## Summary
#
# (The measured statements are those printed above from `benchmarks/ladder.json` and from the live cells.)
#
# - The three targets measure one error in three units: $\|\epsilon-\hat\epsilon\|^2 = \mathrm{SNR}_t\|x_0-\hat x_0\|^2$,
#   $\|v-\hat v\|^2 = (\mathrm{SNR}_t+1)\|x_0-\hat x_0\|^2$, the $x_0$ loss itself (checked to float64 precision). The
#   paper's $L_\text{simple}$ weighs the image error by $\mathrm{SNR}_t$: thousands at small $t$, almost nothing at
#   large $t$. Small $t$ is easy in image units and hard in noise units (measured on both shipped networks).
# - Min-SNR-$\gamma$ weighs the image error by $\min(\mathrm{SNR}_t, \gamma)$ whatever the target. In the ladder $v$
#   alone was worse than $\epsilon$; $v$ with Min-SNR-5 recovered. Under Min-SNR the target is only a
#   parameterisation; $x_0$ (best) and $\epsilon$ (worst) beside $v$ are single seeds, a lead to check.
# - The cosine schedule beat the linear one; $T = 500$ changed nothing on the cosine schedule (same noise levels) and
#   helped the linear one (notebook 01's mismatch is real, but at this budget cutting the noisy tail gained more).
# - The EMA's warm-up is what makes a short run's EMA useful; without it half of the average is still the initial
#   noise. Without attention, more steps in the same minutes, and a better FID.
# - At equal CPU minutes the shipped recipe roughly halves the paper recipe's FID; trained longer, it is the shipped
#   model, whose colours spread as the data's do.
#
# ## Exercises
#
# Each exercise has a cell for your answer and a cell that checks it. The next cell imports what they use and builds
# two processes: `paper` (linear, $T = 1000$, $\epsilon$) and `shipped` (cosine, $T = 500$, $v$), and a small batch.
# The section runs on its own, without the cells above.

# %%
import math

import torch
from torch.optim.swa_utils import AveragedModel

import ddpm_lib.training
from ddpm_lib import GaussianDiffusion, make_betas
from ddpm_lib.grading import names_used, refusing
from ddpm_lib.training import ema_decay


paper = GaussianDiffusion(make_betas("linear", 1000))  # eps-prediction; constants in float64
shipped = GaussianDiffusion(make_betas("cosine", 500), prediction_type="v_prediction")
g = torch.Generator().manual_seed(0)
x0 = torch.rand(8, 3, 8, 8, generator=g) * 2 - 1  # float32 images in [-1, 1]
noise = torch.randn(x0.shape, generator=g)
t = torch.tensor([0, 5, 50, 150, 250, 350, 450, 499])  # one timestep index per image

# %% [markdown]
# **Exercise 1. The weight each target puts on the image error.** Write `x0_error_weight(snr, target)`: for a float64
# tensor `snr` of $\mathrm{SNR}_t$ values and a target `"epsilon"`, `"v_prediction"` or `"sample"`, the factor by
# which that target's squared error multiplies the $x_0$ error when every estimate comes from one $\hat x_0$, as a
# tensor of `snr`'s shape; raise `ValueError` naming the valid targets for any other. Write the factors from the
# derivation, without the library's conversions. *Hint:* section 2; the `"sample"` target's factor is the same at
# every $t$.

# %% nbgrader={"grade": false, "grade_id": "ex1-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def x0_error_weight(snr, target):
    if target == "epsilon":
        return snr
    if target == "v_prediction":
        return snr + 1
    if target == "sample":
        return torch.ones_like(snr)
    raise ValueError(f"unknown target {target!r}; valid: 'epsilon', 'v_prediction', 'sample'")


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex1-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
library = {"training_loss", "velocity", "predict_noise_from_x0", "predict_x0_from_noise", "eps_from_output", "snr"}
assert not names_used(x0_error_weight) & library, (
    f"x0_error_weight uses the library ({sorted(names_used(x0_error_weight) & library)}): write the factors by hand")
g_ = torch.Generator().manual_seed(1)
x0_ = torch.rand(5, 3, 4, 4, generator=g_, dtype=torch.float64) * 2 - 1
noise_ = torch.randn(x0_.shape, generator=g_, dtype=torch.float64)
x0_hat_ = x0_ + 0.2 * torch.randn(x0_.shape, generator=g_, dtype=torch.float64)  # one estimate of x_0
t_ = torch.tensor([0, 30, 300, 700, 999])
x_t_ = paper.q_sample(x0_, t_, noise_)
eps_hat_ = paper.predict_noise_from_x0(x_t_, t_, x0_hat_)
pairs = {
    "epsilon": (noise_, eps_hat_),
    "sample": (x0_, x0_hat_),
    "v_prediction": (paper.velocity(x0_, t_, noise_), paper.velocity(x0_hat_, t_, eps_hat_)),
}
x0_error_ = (x0_ - x0_hat_).pow(2).flatten(1).sum(1)
snr_ = paper.snr(t_)
for target_, (exact, estimate) in pairs.items():
    measured = (exact - estimate).pow(2).flatten(1).sum(1) / x0_error_
    with refusing(*[(GaussianDiffusion, name) for name in sorted(library)], answer=x0_error_weight):
        got = torch.as_tensor(x0_error_weight(snr_, target_), dtype=torch.float64)
    assert got.shape == measured.shape, f"x0_error_weight(snr, {target_!r}) should have snr's shape {tuple(measured.shape)}"
    assert torch.allclose(got, measured, rtol=1e-8), f"x0_error_weight(snr, {target_!r}) = {got.tolist()}, measured {measured.tolist()}"
try:
    x0_error_weight(paper.snr(t_), "x0")
    raise AssertionError("x0_error_weight(snr, 'x0') should raise ValueError: the library calls that target 'sample'")
except ValueError:
    pass

# %% [markdown]
# **Exercise 2. Min-SNR for $v$, by hand.** Write `min_snr_v_loss(x0, noise, t, v_pred, gamma)`: the Min-SNR-$\gamma$
# loss that `shipped` (a $v$-prediction process) gives a network whose output at $x_t$ is `v_pred`, for images `x0`
# `(B, C, H, W)`, their `noise`, their timestep indices `t` `(B,)`; a float. Use `shipped.alphas_cumprod`, not
# `training_loss`. *Hint:* per image, the mean over its pixels of $(v - \hat v)^2$ times
# $\min(\mathrm{SNR}_t, \gamma)/(\mathrm{SNR}_t + 1)$; then the mean over the images.

# %% nbgrader={"grade": false, "grade_id": "ex2-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def min_snr_v_loss(x0, noise, t, v_pred, gamma):
    ab = shipped.alphas_cumprod[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1), float64
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    snr = (ab / (1 - ab)).flatten()
    per_image = (v - v_pred).pow(2).flatten(1).mean(1)
    return (snr.clamp(max=gamma) / (snr + 1) * per_image).mean().item()


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex2-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
assert "training_loss" not in names_used(min_snr_v_loss), "min_snr_v_loss must compute the loss by hand, not call training_loss"
wrong = {
    "zeros": torch.zeros_like(x0),
    "x0": x0.clone(),
    "v plus noise": shipped.velocity(x0, t, noise)
    + 0.3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2)),
}
with refusing((GaussianDiffusion, "training_loss"), (GaussianDiffusion, "_training_loss"), answer=min_snr_v_loss):  # while the answer runs
    answers = {(name, gamma): float(min_snr_v_loss(x0, noise, t, out, gamma)) for name, out in wrong.items() for gamma in (1.0, 5.0)}
for (name, gamma), got in answers.items():
    expected = shipped.training_loss(lambda x, t_, out=wrong[name]: out, x0, t=t, noise=noise, snr_gamma=gamma).item()
    assert abs(got - expected) <= 1e-5 * expected, f"prediction {name!r}, gamma {gamma}: min_snr_v_loss = {got:.6g}, the library's loss {expected:.6g}"

# %% [markdown]
# **Exercise 3. What the EMA remembers of the start.** Write `initial_share(k, decay, warmup)`: after `k` $\ge 1$
# updates of the trainer's EMA, the weight the average still gives to the weights it copied at its first update, as a
# float. The rule: update 0 copies the weights; update $j \ge 1$ multiplies what the average holds by $d_j$ (and adds
# $1 - d_j$ times the current weights), with $d_j = \min(\text{decay}, (1+j)/(10+j))$ with the warm-up and
# $d_j = \text{decay}$ without it. Do not use `ema_decay` or `AveragedModel`. *Hint:* section 5; which updates
# multiply the first copy?

# %% nbgrader={"grade": false, "grade_id": "ex3-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def initial_share(k, decay, warmup):
    share = 1.0
    for j in range(1, k):
        share *= min(decay, (1 + j) / (10 + j)) if warmup else decay
    return share


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex3-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
forbidden = {"ema_decay", "AveragedModel", "update_parameters", "_ema_update"}
assert not names_used(initial_share) & forbidden, f"initial_share uses {sorted(names_used(initial_share) & forbidden)}: multiply the decays by hand"


def simulated_share(k, decay, warmup):
    """The trainer's EMA of one float64 weight that is 1 at the first update and 0 afterwards."""
    net = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)

    def lerp(ema_params, params, num_averaged):
        d = ema_decay(decay, warmup, torch.tensor(int(num_averaged))).item()
        torch._foreach_lerp_(ema_params, params, 1 - d)

    ema = AveragedModel(net, multi_avg_fn=lerp)
    with torch.no_grad():
        net.weight.fill_(1.0)
        ema.update_parameters(net)  # update 0: a copy
        net.weight.zero_()
        for _ in range(k - 1):
            ema.update_parameters(net)
    return ema.module.weight.item()


EMA_LIBRARY = [
    (ddpm_lib.training, "ema_decay"),
    (AveragedModel, "__init__"),
    (AveragedModel, "update_parameters"),
    (ddpm_lib.training.Trainer, "_ema_update"),
]
for k_, decay_, warmup_ in [
    (1, 0.999, True),
    (2, 0.999, True),
    (12, 0.9, True),
    (12, 0.9, False),
    (200, 0.99, True),
    (601, 0.999, False),
    (708, 0.999, False),
    (708, 0.999, True),
]:
    with refusing(*EMA_LIBRARY, answer=initial_share):
        got = float(initial_share(k_, decay_, warmup_))
    expected = simulated_share(k_, decay_, warmup_)
    assert math.isclose(got, expected, rel_tol=1e-9), f"initial_share({k_}, {decay_}, {warmup_}) = {got:.6g}, the EMA keeps {expected:.6g}"
