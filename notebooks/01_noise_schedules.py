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
# # 01 · Noise schedules
#
# **Goal.** A diffusion model destroys an image by adding a little Gaussian noise at each of $T$ steps, then
# learns to undo it. How much noise goes in at step $t$ is the *variance schedule* $\beta_1, \dots, \beta_T$.
# This notebook builds the schedules, derives every constant the later notebooks need, and shows a flaw
# that many tutorials carry: a linear schedule with a small $T$ never reaches pure noise.
#
# **You will:** compute $\beta_t$, $\alpha_t$, $\bar\alpha_t$ by hand and check them against `ddpm_lib`;
# compare five schedules; measure the signal left at the last step; explore with a slider.
#
# **Deviations from the paper.** Timesteps are indexed from 0 in code: index `t` is the paper's step $t+1$
# (see `NOTATION.md`). The maths is unchanged.

# %%
import json
import math
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from ddpm_lib.plotting import plot_schedules
from ddpm_lib.schedules import SCHEDULES, alphas_cumprod_from_betas, make_betas, terminal_signal
from ddpm_lib.widgets import schedule_explorer, schedule_static

from ddpm_lib.checks import env_flag

FAST = env_flag("DDPM_FAST")  # set by `make test`: the same lessons, less compute
ASSETS = "../assets"
torch.set_printoptions(precision=6)

# %% [markdown]
# ## 1. The forward process in one line
#
# Ho et al. (2020) define the forward process as a Markov chain that scales the image down a little and adds
# noise (Eq. 2):
#
# $$q(x_t \mid x_{t-1}) = \mathcal{N}\!\left(x_t;\ \sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I\right).$$
#
# The scaling by $\sqrt{1-\beta_t}$ keeps the variance at 1 when $x_{t-1}$ has variance 1: that is what lets
# $x_T$ end up as a standard Gaussian, which is where sampling will start.
#
# The paper uses $T = 1000$ and a **linear** schedule from $\beta_1 = 10^{-4}$ to $\beta_T = 0.02$.
# Let us write it by hand.

# %%
T = 1000
betas_by_hand = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
betas = make_betas("linear", T)
print("max |hand - library| =", (betas_by_hand - betas).abs().max().item())

# %% [markdown]
# The library computes schedules in **float64**. Does it matter? $\bar\alpha_t$ (next section) is a product of up
# to a thousand numbers close to 1, so let us measure what float32 would lose: the whole computation in float32
# against float64, as relative errors. The first line is $\bar\alpha_t$ itself; the second is $1-\bar\alpha_t$, the
# noise variance, a difference of two numbers close to 1 at the first steps.

# %%
alphas_cumprod_32 = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float32), dim=0)
alphas_cumprod_64 = alphas_cumprod_from_betas(betas)
rel_signal = ((alphas_cumprod_32.double() - alphas_cumprod_64) / alphas_cumprod_64).abs()
rel_noise = (((1 - alphas_cumprod_32).double() - (1 - alphas_cumprod_64)) / (1 - alphas_cumprod_64)).abs()
print(f"bar-alpha_t     in float32: largest relative error {rel_signal.max().item():.1e} (t={rel_signal.argmax().item()}), "
      f"at the last step {rel_signal[-1].item():.1e}")
print(f"1 - bar-alpha_t in float32: largest relative error {rel_noise.max().item():.1e} (t={rel_noise.argmax().item()}), "
      f"at the last step {rel_noise[-1].item():.1e}")

# %% [markdown]
# Float32 would **not** visibly shift the last values: the product of a thousand factors is off by at most 3.6 parts in
# $10^7$ (1.5 in $10^7$ at the last step), far below anything a plot or a sample could show. Where float32 does lose
# digits is $1-\bar\alpha_t$ at the first steps (1.7 parts in $10^4$ at $t = 0$, by cancellation), which feeds the noise
# scale $\sqrt{1-\bar\alpha_t}$ and the log-SNR below. A thousand float64 numbers cost nothing, so the library keeps them and casts to the
# image's dtype only when it uses them.

# %% [markdown]
# ## 2. From $\beta_t$ to $\bar\alpha_t$
#
# With $\alpha_t = 1 - \beta_t$ and $\bar\alpha_t = \prod_{s=1}^{t} \alpha_s$, the chain collapses to a closed
# form (Eq. 4) that we will prove and use in notebook 02:
#
# $$q(x_t \mid x_0) = \mathcal{N}\!\left(x_t;\ \sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\right).$$
#
# So $\sqrt{\bar\alpha_t}$ is how much of the image survives to step $t$, and $\sqrt{1-\bar\alpha_t}$ is how much
# noise is there.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
alphas = 1.0 - betas
alphas_cumprod = torch.cumprod(alphas, dim=0)
assert torch.allclose(alphas_cumprod, alphas_cumprod_from_betas(betas))
for t in [0, 99, 499, 999]:
    print(f"t={t:4d}  beta={betas[t]:.6f}  alpha_bar={alphas_cumprod[t]:.6f}  "
          f"sqrt(alpha_bar)={alphas_cumprod[t].sqrt():.6f}  sqrt(1-alpha_bar)={(1 - alphas_cumprod[t]).sqrt():.6f}")

# %% [markdown]
# ## 3. Five schedules
#
# - **linear** (Ho et al. 2020): the paper's choice.
# - **cosine** (Nichol & Dhariwal 2021, Eq. 17): defines $\bar\alpha_t$ directly as
#   $f(t)/f(0)$ with $f(t) = \cos^2\!\left(\frac{t/T + s}{1+s}\cdot\frac{\pi}{2}\right)$, $s = 0.008$, so that
#   information is destroyed more evenly; $\beta_t = 1 - \bar\alpha_t/\bar\alpha_{t-1}$ is clipped at 0.999.
# - **quadratic**: linear in $\sqrt{\beta_t}$.
# - **sigmoid**: a sigmoid between the same endpoints.
# - **rectified_flow** (Liu et al. 2023; Lipman et al. 2023): the straight path $(1-s)\,x_0 + s\,\epsilon$ of flow
#   matching written as a DDPM schedule, $\bar\alpha = (1-s)^2/((1-s)^2 + s^2)$ with $s = (t+1)/(T+1)$; notebook 11
#   derives it and trains a model on it.
#
# The $\beta_t$ panel has a **log axis**: the cosine schedule's last $\beta$ is the clip value 0.999, fifty times the
# others' largest value, and on a linear axis it would flatten every other curve. The log signal-to-noise ratio
# $\log\frac{\bar\alpha_t}{1-\bar\alpha_t}$ (right) is the clearest view: the linear schedule spends many steps where
# the image is already almost gone.

# %%
fig = plot_schedules(T)
if not FAST:
    fig.savefig(f"{ASSETS}/schedules.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# How many of the 1000 steps does each schedule spend with less than 10% of the image's amplitude left
# ($\sqrt{\bar\alpha_t} < 0.1$)? Those steps teach the network little about images.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
for name in SCHEDULES:
    ac = alphas_cumprod_from_betas(make_betas(name, T))
    print(f"{name:14s}: {(ac.sqrt() < 0.1).sum().item():3d} of {T} steps keep less than 10% of the signal")

# %% [markdown]
# Writing the cosine schedule's $\bar\alpha_t$ by hand, then checking it against the library. The clip at 0.999
# changes only the last $\beta$ (the unclipped value there is 1, since $f(T) = \cos^2(\pi/2) = 0$), so the two agree
# at every step but the last:

# %%
s = 0.008
t_grid = torch.arange(T + 1, dtype=torch.float64) / T
f = torch.cos((t_grid + s) / (1 + s) * math.pi / 2) ** 2
cosine_alphas_cumprod = (f / f[0])[1:]
unclipped_betas = 1 - (f / f[0])[1:] / (f / f[0])[:-1]
library = alphas_cumprod_from_betas(make_betas("cosine", T))
print("betas changed by the clip:", int((unclipped_betas > 0.999).sum()), "(the last one)")
print("max |hand - library| over t < 999:", (cosine_alphas_cumprod[:-1] - library[:-1]).abs().max().item())

# %% [markdown]
# ## 4. Does $x_T$ really become noise?
#
# Sampling (Algorithm 2) starts from $x_T \sim \mathcal N(0, I)$. That is only right if the forward process really
# ends there: $\sqrt{\bar\alpha_T}$ must be close to 0. Many tutorials keep the paper's endpoints
# $10^{-4} \to 0.02$ but shorten $T$ to 300 to save time. Look what is left:

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
for name in ["linear", "cosine"]:
    for T_ in [300, 500, 1000]:
        print(f"{name:7s} T={T_:4d}: signal left sqrt(alpha_bar_T) = {terminal_signal(make_betas(name, T_)):.4f}")

# %% [markdown]
# With the linear schedule and $T=300$, **22% of the image's amplitude** is still there at the "last" step. A model
# trained that way has never seen pure noise, yet sampling starts from pure noise: samples come out washed-out
# or wrong in colour. The fix is to keep $T = 1000$, or scale $\beta$ up with $1000/T$ (exercise 2), or use the
# cosine schedule, which reaches noise at any $T$.
#
# **What the mismatch costs is a measurement, not a given.** Notebook 08 trains the paper's recipe for the same CPU
# minutes with the linear schedule at $T = 1000$ and at $T = 500$, where 8% of the amplitude is left
# (`benchmarks/ladder.json`, FID against the training set: lower is better). The cell below prints what it found.
# The shorter linear schedule did not lose: uniform $t$ over $T = 1000$ linear steps spends a third of its
# updates where less than a tenth of the image's amplitude is left, and cutting that tail helped more, at that
# budget and seed, than the mismatch hurt. The mismatch is still real, and the cosine schedule removes it at no
# cost; notebook 08, section 4, takes the two effects apart.

# %%
ladder = json.loads(Path("../benchmarks/ladder.json").read_text())
for name in ("paper", "linear-T500"):
    fids = [seed["curve"][-1]["fid"] for seed in ladder["runs"][name]["seeds"]]
    config = ladder["runs"][name]["overrides"]
    print(f"linear schedule, T = {config.get('num_timesteps', 1000)}: FID {statistics.fmean(fids):.1f} "
          f"({len(fids)} seed{'s' if len(fids) > 1 else ''}) after {ladder['settings']['budget_cpu_minutes']:g} CPU minutes")

# %% [markdown]
# Plotted against the fraction of the process $(t+1)/T$: the linear schedule's curve depends on $T$, the cosine
# schedule's does not. The cosine schedule defines $\bar\alpha$ as a function of $t/T$, so its curves for $T = 300$
# (dots) and $T = 1000$ (thick line) coincide by construction; the cell after the figure checks it.

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
styles = {
    ("linear", 300): dict(color="C0", lw=1.5),
    ("linear", 1000): dict(color="C0", lw=1.5, ls="--"),
    ("cosine", 1000): dict(color="C1", lw=5, alpha=0.35),
    ("cosine", 300): dict(color="C1", ls="none", marker="o", ms=3, markevery=6),
}
for (name, T_), style in styles.items():
    ac = alphas_cumprod_from_betas(make_betas(name, T_))
    ax.plot(torch.arange(1, T_ + 1) / T_, ac.sqrt(), label=f"{name}, T={T_}", **style)
ax.set_xlabel("(t + 1) / T")
ax.set_ylabel(r"$\sqrt{\bar\alpha_t}$")
ax.set_title("signal kept: the linear schedule with T=300 stops at 0.22")
ax.grid(alpha=0.3)
ax.legend();

# %%
ac_300 = alphas_cumprod_from_betas(make_betas("cosine", 300))
ac_1000 = alphas_cumprod_from_betas(make_betas("cosine", 1000))
k = torch.arange(1, 100)  # (t+1)/T = k/100: index 3k-1 for T=300 and index 10k-1 for T=1000 (the clipped last step left out)
print(f"cosine, same (t+1)/T: max |bar-alpha(T=300) - bar-alpha(T=1000)| = {(ac_300[3 * k - 1] - ac_1000[10 * k - 1]).abs().max().item():.1e}")

# %% [markdown]
# ## 5. Explore
#
# The dropdown picks the schedule and the slider sets $T$ (50 to 2000); the plots redraw with that schedule
# highlighted and the signal left at the last step in the title. The **Play** button walks $T$ up in steps of 50, one
# a second. Widgets do not render on GitHub, so below the slider the same view is drawn at three positions, one row
# each, with the $\beta_t$ panels on the log axis of Section 3: the linear schedule with $T = 300$ (0.22 of the signal
# left), with $T = 1000$, and the cosine schedule with $T = 300$.

# %% tags=["nbval-ignore-output"]
# NBVAL_IGNORE_OUTPUT
schedule_explorer()

# %%
fig = schedule_static([("linear", 300), ("linear", 1000), ("cosine", 300)])
plt.show()

# %% [markdown]
# ## 6. The constants the next notebooks use
#
# `GaussianDiffusion` precomputes everything from $\beta_t$ once, in float64, and casts to the image's dtype on
# use. Notebook 02 derives the posterior coefficients; here we just list them.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
from ddpm_lib import GaussianDiffusion

diffusion = GaussianDiffusion(make_betas("linear", 1000))
for name in ["betas", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "posterior_variance"]:
    v = getattr(diffusion, name)
    print(f"{name:30s} {tuple(v.shape)} {v.dtype}  first {v[0].item():.6g}  last {v[-1].item():.6g}")

# %% [markdown]
# ## Summary
#
# - The schedule $\beta_t$ fixes the whole forward process; $\bar\alpha_t = \prod (1-\beta_s)$ says how much signal
#   survives to step $t$ (Eq. 4). The library computes it in float64; float32 would be off by at most $3.6\times10^{-7}$
#   (relative) in $\bar\alpha_t$ and $1.7\times10^{-4}$ in $1-\bar\alpha_t$ at $t = 0$.
# - The cosine schedule destroys information more evenly than the linear one: 65 of its 1000 steps keep less than
#   10% of the signal, against 327 for the linear schedule.
# - The endpoints $10^{-4} \to 0.02$ only reach noise with $T \approx 1000$ (0.0064 of the signal left; 0.22 with
#   $T = 300$): check `terminal_signal` whenever you change $T$.

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer and a cell that checks it. The next cell imports what they use; the
# section runs on its own, without the cells above.

# %%
import math

import torch

from ddpm_lib.schedules import SCHEDULES, alphas_cumprod_from_betas, log_snr, make_betas, terminal_signal

# %% [markdown]
# **Exercise 1. The cosine schedule by hand.** Write `cosine_betas(T)` that returns the cosine schedule of Nichol &
# Dhariwal (2021) as a float64 tensor of shape `(T,)`, with `torch` and `math` only (not `make_betas`):
# $\bar\alpha(t) = f(t)/f(0)$ with $f(t) = \cos^2\!\left(\frac{t/T + s}{1+s}\cdot\frac{\pi}{2}\right)$, $s = 0.008$, for
# $t = 0, \dots, T$ (Eq. 17), then $\beta_t = 1 - \bar\alpha(t)/\bar\alpha(t-1)$ for $t = 1, \dots, T$ (Eq. 18), clipped
# at 0.999.

# %% nbgrader={"grade": false, "grade_id": "ex1-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def cosine_betas(T, s=0.008, max_beta=0.999):
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=max_beta)


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex1-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
for T_ in [10, 300, 1000]:
    mine = cosine_betas(T_)
    assert mine.shape == (T_,) and mine.dtype == torch.float64, f"cosine_betas({T_}) should be float64 of shape ({T_},), got {mine.dtype} {tuple(mine.shape)}"
    expected = make_betas("cosine", T_)
    assert abs(mine[-1].item() - 0.999) < 1e-12, f"the last beta of cosine_betas({T_}) should be clipped to 0.999"
    assert torch.allclose(mine, expected, rtol=1e-10, atol=0), f"cosine_betas({T_}) differs from make_betas('cosine', {T_}): check s and the t/T grid"

# %% [markdown]
# **Exercise 2. How long must a linear schedule be?** Keep the paper's endpoints ($\beta$ from $10^{-4}$ to $0.02$,
# whatever $T$). Find `smallest_T`, the smallest integer $T \ge 2$ for which the signal left at the last step,
# $\sqrt{\bar\alpha_T}$, is below 0.01. Then scale both endpoints by $1000/T$, as improved-diffusion does, and store in
# `scaled_signal_300` (a float) the signal left with $T = 300$. *Hint:* `terminal_signal`, and `make_betas` takes
# `beta_start` and `beta_end`.

# %% nbgrader={"grade": false, "grade_id": "ex2-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
smallest_T = next(T_ for T_ in range(2, 5001) if terminal_signal(make_betas("linear", T_)) < 0.01)
scale = 1000 / 300
scaled_signal_300 = terminal_signal(make_betas("linear", 300, beta_start=1e-4 * scale, beta_end=0.02 * scale))
### END SOLUTION
print(f"smallest T: {smallest_T}; T=300 with scaled endpoints leaves {scaled_signal_300:.4f} of the signal")

# %% nbgrader={"grade": true, "grade_id": "ex2-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
left_at = lambda T_: terminal_signal(make_betas("linear", T_))
assert int(smallest_T) == smallest_T and smallest_T >= 2, "smallest_T should be an integer >= 2"
assert left_at(smallest_T) < 0.01, f"with T={smallest_T} the linear schedule still leaves {left_at(smallest_T):.4f} of the signal"
assert left_at(smallest_T - 1) >= 0.01, f"T={smallest_T - 1} already leaves less than 0.01: look for a smaller T"
reference = terminal_signal(make_betas("linear", 300, beta_start=1e-4 * 1000 / 300, beta_end=0.02 * 1000 / 300))
assert abs(float(scaled_signal_300) - reference) < 1e-9, "scaled_signal_300 should be terminal_signal of the linear schedule with T=300 and both endpoints times 1000/300"

# %% [markdown]
# **Exercise 3. Signal-to-noise ratio.** $\mathrm{SNR}_t = \bar\alpha_t / (1-\bar\alpha_t)$ (Kingma et al. 2021) is the
# variance of the signal term of Eq. 4 over that of the noise term. For the cosine schedule with $T = 1000$, compute
# `snr` (float64, shape `(1000,)`) from its betas by hand (no `log_snr`), and `log_snr_cosine = log(snr)`. Then fill
# the dict `t_cross` that maps each name in `SCHEDULES` to the first index $t$ at which its log-SNR (with $T = 1000$) is
# below 0: the step where noise overtakes signal.

# %% nbgrader={"grade": false, "grade_id": "ex3-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
ac = torch.cumprod(1 - make_betas("cosine", 1000), dim=0)
snr = ac / (1 - ac)
log_snr_cosine = snr.log()
t_cross = {}
for name in SCHEDULES:
    ac_name = torch.cumprod(1 - make_betas(name, 1000), dim=0)
    t_cross[name] = int(torch.argmax((ac_name < 1 - ac_name).int()))
### END SOLUTION
print("noise overtakes signal at", t_cross)

# %% nbgrader={"grade": true, "grade_id": "ex3-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
cos_betas = make_betas("cosine", 1000)
cos_ac = alphas_cumprod_from_betas(cos_betas)
assert snr.shape == (1000,) and snr.dtype == torch.float64, f"snr should be float64 of shape (1000,), got {snr.dtype} {tuple(snr.shape)}"
assert torch.allclose(snr, cos_ac / (1 - cos_ac), rtol=1e-9, atol=0), "snr should be bar-alpha_t / (1 - bar-alpha_t) for the cosine schedule"
assert torch.allclose(log_snr_cosine, log_snr(cos_betas), rtol=1e-9, atol=1e-9), "log_snr_cosine differs from ddpm_lib.schedules.log_snr"
assert set(t_cross) == set(SCHEDULES), f"t_cross needs one entry per schedule: {SCHEDULES}"
for name in SCHEDULES:
    ls = log_snr(make_betas(name, 1000))
    t_c = t_cross[name]
    assert ls[t_c] < 0 and (t_c == 0 or ls[t_c - 1] >= 0), f"t_cross[{name!r}] = {t_c} is not the first index with log-SNR below 0"

# %% [markdown]
# **Exercise 4 (harder). Zero terminal SNR.** Lin et al. (2024, "Common diffusion noise schedules and sample steps are
# flawed", Algorithm 1) remove the signal left at the last step by rescaling $\sqrt{\bar\alpha_t}$: shift it so its
# last value is 0 and scale it so its first value is unchanged,
#
# $$\sqrt{\bar\alpha_t}' = \left(\sqrt{\bar\alpha_t} - \sqrt{\bar\alpha_T}\right)\frac{\sqrt{\bar\alpha_1}}{\sqrt{\bar\alpha_1} - \sqrt{\bar\alpha_T}},$$
#
# then recover $\beta'_t = 1 - \bar\alpha'_t / \bar\alpha'_{t-1}$ (with $\bar\alpha'_0 = 1$). Write `zero_terminal_snr(betas)`
# that returns the rescaled betas (float64, the shape of `betas`). What is the last $\beta'$, and why does
# `GaussianDiffusion` refuse these betas? (Answer in a comment.)

# %% nbgrader={"grade": false, "grade_id": "ex4-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def zero_terminal_snr(betas):
    sqrt_ac = torch.cumprod(1 - betas.double(), dim=0).sqrt()
    first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
    sqrt_ac = (sqrt_ac - last) * first / (first - last)
    ac = sqrt_ac**2
    alphas = torch.cat([ac[:1], ac[1:] / ac[:-1]])
    return 1 - alphas


# The last beta' is 1: x_T = noise exactly, x_{T-1} is forgotten. GaussianDiffusion asks for betas in (0, 1),
# because the eps-prediction x0_pred = (x_t - sqrt(1 - bar-alpha_t) eps) / sqrt(bar-alpha_t) divides by 0 at that step
# (Lin et al. switch to v-prediction for this reason).
### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex4-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
for name, T_ in [("linear", 300), ("linear", 1000), ("sigmoid", 500)]:
    old = make_betas(name, T_)
    new = zero_terminal_snr(old)
    assert new.shape == old.shape and new.dtype == torch.float64, f"zero_terminal_snr should return float64 of shape {tuple(old.shape)}"
    s_old = alphas_cumprod_from_betas(old).sqrt()
    s_new = torch.cumprod(1 - new, dim=0).sqrt()
    assert abs(new[-1].item() - 1) < 1e-12, f"{name}, T={T_}: the last rescaled beta should be 1 (no signal left)"
    assert abs(s_new[0].item() - s_old[0].item()) < 1e-12, f"{name}, T={T_}: the first sqrt(bar-alpha) should be unchanged"
    expected = (s_old - s_old[-1]) * s_old[0] / (s_old[0] - s_old[-1])
    assert torch.allclose(s_new, expected, rtol=0, atol=1e-12), f"{name}, T={T_}: sqrt(bar-alpha') is not the shifted and scaled sqrt(bar-alpha)"
