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
# # 01 · Noise schedules
#
# **Goal.** A diffusion model destroys an image by adding a little Gaussian noise at each of $T$ steps, then
# learns to undo it. How much noise goes in at step $t$ is the *variance schedule* $\beta_1, \dots, \beta_T$.
# This notebook builds the schedules, derives every constant the later notebooks need, and shows a flaw
# that many tutorials carry: a linear schedule with a small $T$ never reaches pure noise.
#
# **You will:** compute $\beta_t$, $\alpha_t$, $\bar\alpha_t$ by hand and check them against `ddpm_lib`;
# compare four schedules; measure the signal left at the last step; explore with a slider.
#
# **Deviations from the paper.** Timesteps are indexed from 0 in code: index `t` is the paper's step $t+1$
# (see `NOTATION.md`). The maths is unchanged.

# %%
import os

import matplotlib.pyplot as plt
import torch

from ddpm_lib.plotting import plot_schedules
from ddpm_lib.schedules import alphas_cumprod_from_betas, make_betas, terminal_signal
from ddpm_lib.widgets import schedule_explorer

FAST = os.environ.get("DDPM_FAST") == "1"  # set by `make test`: the same lessons, less compute
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
# Schedules are computed in **float64**: $\bar\alpha_t$ is a product of a thousand numbers close to 1, and
# float32 rounding would visibly shift the last values.

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
# ## 3. Four schedules
#
# - **linear** (Ho et al. 2020): the paper's choice.
# - **cosine** (Nichol & Dhariwal 2021, Eq. 17): defines $\bar\alpha_t$ directly as
#   $f(t)/f(0)$ with $f(t) = \cos^2\!\left(\frac{t/T + s}{1+s}\cdot\frac{\pi}{2}\right)$, $s = 0.008$, so that
#   information is destroyed more evenly; $\beta_t$ is clipped at 0.999 near the end.
# - **quadratic**: linear in $\sqrt{\beta_t}$.
# - **sigmoid**: a sigmoid between the same endpoints.
#
# The log signal-to-noise ratio $\log\frac{\bar\alpha_t}{1-\bar\alpha_t}$ (right) is the clearest view: the linear
# schedule spends many steps where the image is already almost gone.

# %%
fig = plot_schedules(T)
if not FAST:
    fig.savefig(f"{ASSETS}/schedules.png", dpi=110, bbox_inches="tight")
plt.show()

# %% [markdown]
# Writing the cosine schedule by hand, then checking it against the library (its first 990 values, before
# the clip at 0.999 changes anything):

# %%
import math

s = 0.008
t_grid = torch.arange(T + 1, dtype=torch.float64) / T
f = torch.cos((t_grid + s) / (1 + s) * math.pi / 2) ** 2
cosine_alphas_cumprod = (f / f[0])[1:]
library = alphas_cumprod_from_betas(make_betas("cosine", T))
print("max |hand - library| over t < 990:", (cosine_alphas_cumprod[:990] - library[:990]).abs().max().item())

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
# or wrong in colour. The fix is to keep $T = 1000$, or scale $\beta$ up with $1000/T$, or use the cosine
# schedule, which reaches noise at any $T$.

# %% [markdown]
# ## 5. Explore
#
# The slider redraws the plots for any schedule and $T$, and prints the signal left at the last step. Below
# it, a static figure of a few positions, for readers of the stored notebook.

# %% tags=["nbval-ignore-output"]
# NBVAL_IGNORE_OUTPUT
schedule_explorer()

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
for name, T_ in [("linear", 300), ("linear", 1000), ("cosine", 300), ("cosine", 1000)]:
    ac = alphas_cumprod_from_betas(make_betas(name, T_))
    ax.plot(torch.linspace(0, 1, T_), ac.sqrt(), label=f"{name}, T={T_}")
ax.set_xlabel("t / T")
ax.set_ylabel(r"$\sqrt{\bar\alpha_t}$")
ax.set_title("signal kept: the linear schedule with T=300 stops at 0.22")
ax.grid(alpha=0.3)
ax.legend();

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
#   survives to step $t$ (Eq. 4).
# - The cosine schedule destroys information more evenly than the linear one (log-SNR plot).
# - The endpoints $10^{-4} \to 0.02$ only reach noise with $T \approx 1000$: check `terminal_signal` whenever you
#   change $T$.
#
# ## Exercises
#
# 1. Find the smallest $T$ for which the linear schedule leaves less than 1% of the signal. *Hint:* loop over $T$
#    and call `terminal_signal(make_betas("linear", T))`.
# 2. Scale the linear endpoints by $1000/T$ (as improved-diffusion does) and show that $T=300$ now reaches noise.
#    *Hint:* `make_betas("linear", 300, beta_start=..., beta_end=...)`.
# 3. At which $t$ does the log-SNR of each schedule cross 0 (equal signal and noise)?
#
# The cell below checks an answer to exercise 1.

# %%
smallest = next(T_ for T_ in range(100, 2001, 10) if terminal_signal(make_betas("linear", T_)) < 0.01)
print("smallest T (step 10) leaving < 1% signal with the linear schedule:", smallest)
assert terminal_signal(make_betas("linear", smallest)) < 0.01 <= terminal_signal(make_betas("linear", smallest - 10))
