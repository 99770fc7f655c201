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
# # 02 · The forward process: from a car to noise
#
# **Goal.** Take real training images, destroy them step by step with the forward process of notebook 01, and
# prove the shortcut that makes DDPM trainable: $x_t$ can be drawn from $x_0$ in **one** step (Eq. 4). Then derive
# the posterior $q(x_{t-1} \mid x_t, x_0)$, the target the reverse process will imitate.
#
# **You will:** load the dataset (and learn how to switch datasets), check Eq. 4 against iterating Eq. 2,
# watch cars dissolve with a slider over $t$, and check the posterior (Eqs. 6-7) against Bayes' rule.

# %%

import matplotlib.pyplot as plt
import torch

from ddpm_lib import GaussianDiffusion, make_betas
from ddpm_lib.data import DatasetUnavailableError, load_dataset
from ddpm_lib.plotting import forward_strip, show_images
from ddpm_lib.widgets import forward_explorer, forward_static

from ddpm_lib.checks import env_flag

FAST = env_flag("DDPM_FAST")
ASSETS = "../assets"
torch.manual_seed(0);

# %% [markdown]
# ## 1. The data
#
# The default dataset is **toy cars**: side-view cars drawn procedurally (six body types, random colours,
# sizes, positions, facing, sky and road), so everything runs offline and on a CPU. Image $i$ depends only on
# the seed and $i$, so everyone sees the same cars. Images are scaled to $[-1, 1]$, the range the model works in.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
dataset = load_dataset("toy_cars", image_size=32, num_images=512)
x, label = dataset[0]
print("items:", len(dataset), "| image:", tuple(x.shape), x.dtype, "| range:", round(x.min().item(), 3), round(x.max().item(), 3))
print("label", label, "=", dataset.classes[label], "| classes:", dataset.classes)

# %%
batch = torch.stack([dataset[i][0] for i in range(48)])
show_images(batch, nrow=12, title="toy cars, 32x32", scale=1.0);

# %% [markdown]
# **Other datasets.** The same call loads the datasets of the original DDPM tutorials, when they are on disk:
#
# ```python
# load_dataset("stanford_cars", image_size=64)                # Kaggle, via kagglehub (downloads once, then cached)
# load_dataset("stanford_cars", image_size=64, root="...")     # a copy you downloaded yourself
# load_dataset("cifar10", image_size=32, root="data/")         # torchvision; download=True by default
# load_dataset("folder", image_size=64, root="my_photos/")     # any folder of images
# ```
#
# Without the data and without internet, you get a clear error that says how to get it, within seconds:

# %% tags=["nbval-ignore-output"]
# NBVAL_IGNORE_OUTPUT
try:
    load_dataset("cifar10", image_size=32, root="/nonexistent/cifar", download=False)
except DatasetUnavailableError as err:
    print(err)

# %% [markdown]
# ## 2. One step of noise, and many
#
# Eq. 2 adds noise one step at a time: $x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon_t$ with
# fresh $\epsilon_t \sim \mathcal N(0, I)$. Unrolling two steps,
#
# $$x_t = \sqrt{\alpha_t \alpha_{t-1}}\,x_{t-2} + \sqrt{\alpha_t(1-\alpha_{t-1})}\,\epsilon_{t-1} + \sqrt{1-\alpha_t}\,\epsilon_t ,$$
#
# and the two noise terms are independent Gaussians, so their sum is one Gaussian with variance
# $\alpha_t(1-\alpha_{t-1}) + 1 - \alpha_t = 1 - \alpha_t\alpha_{t-1}$. By induction (Eq. 4):
#
# $$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon, \qquad \epsilon \sim \mathcal N(0, I).$$
#
# Let us check it numerically: iterate Eq. 2 on one car many times, and compare the per-pixel mean and standard
# deviation with Eq. 4's $\sqrt{\bar\alpha_t}\,x_0$ and $\sqrt{1-\bar\alpha_t}$.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
diffusion = GaussianDiffusion(make_betas("linear", 1000))
x0 = dataset[3][0]
g = torch.Generator().manual_seed(0)
draws, t = 400, 199
x = x0.expand(draws, -1, -1, -1).clone()  # fp32: 200 steps lose nothing the check below can see
for s in range(t + 1):  # Eq. 2, step by step, from x_0 to x_t
    beta = diffusion.betas[s]
    x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(x.shape, generator=g)
std_t = diffusion.sqrt_one_minus_alphas_cumprod[t]
z_mean = (x.mean(0) - diffusion.sqrt_alphas_cumprod[t] * x0) / (std_t / draws**0.5)  # errors in standard errors
rel_std = x.std(0) / std_t
print(f"t={t}: Eq. 4 says mean = {diffusion.sqrt_alphas_cumprod[t].item():.4f} * x0 and std = {std_t.item():.4f} for every pixel")
print(f"iterating Eq. 2 over {draws} draws: mean error {z_mean.abs().mean().item():.1f} standard errors on average (0.8 expected),"
      f" std / Eq. 4's std = {rel_std.mean().item():.2f}")

# %% [markdown]
# Now the library's `q_sample`, which is Eq. 4 in one line, written out by hand and checked:

# %%
noise = torch.randn_like(x0)
t_ = torch.tensor([299])
by_hand = diffusion.sqrt_alphas_cumprod[299].float() * x0 + diffusion.sqrt_one_minus_alphas_cumprod[299].float() * noise
library = diffusion.q_sample(x0[None], t_, noise[None])[0]
print("max |hand - library| =", (by_hand - library).abs().max().item())

# %% [markdown]
# ## 3. Cars dissolving
#
# Each row is one car, each column a timestep; the noise is the same along a row. Under the strip, Eq. 4's two
# coefficients at each column: how much of the car and how much noise make up $x_t$.

# %%
timesteps = [0, 50, 100, 200, 300, 400, 600, 800, 999]
fig = forward_strip(diffusion, batch[:6], timesteps, noise=torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
if not FAST:
    fig.savefig(f"{ASSETS}/forward_strip.png", dpi=120, bbox_inches="tight")
plt.show()

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("t                   " + "".join(f"{t:7d}" for t in timesteps))
print("signal sqrt(ab_t)   " + "".join(f"{diffusion.sqrt_alphas_cumprod[t].item():7.3f}" for t in timesteps))
print("noise sqrt(1-ab_t)  " + "".join(f"{diffusion.sqrt_one_minus_alphas_cumprod[t].item():7.3f}" for t in timesteps))

# %% [markdown]
# With the linear schedule the car is still there at $t = 200$, faintly (0.81 of its amplitude under noise of
# standard deviation 0.59), and the eye loses it around $t = 300$ to $400$, where noise takes over. The signal is not
# gone, though: 0.16 of it is left at $t = 600$ and 0.04 at $t = 800$, which a network can still use. Only at the last
# step is it negligible (0.006).

# %% [markdown]
# ## 4. Explore: the slider over $t$
#
# Drag $t$ (it moves in steps of 10: 0, 10, ..., 990, 999), or press **Play** to run it from 0 to 999: the view shows
# $x_0$, the noise $\epsilon$, $x_t$, and the histogram of $x_t$'s pixels against $\mathcal N(0, 1)$. The histogram starts
# as the image's own colours and ends as the standard normal that sampling starts from. Widgets do not render on
# GitHub, so below the slider the same view (same car, same noise) is drawn at four positions, one row each.

# %% tags=["nbval-ignore-output"]
# NBVAL_IGNORE_OUTPUT
forward_explorer(diffusion, batch[5], seed=0, num_frames=21 if FAST else 100)  # fast mode (tests): steps of 50

# %%
forward_static(diffusion, batch[5], [0, 100, 400, 999], seed=0)
plt.show()

# %% [markdown]
# ## 5. The posterior $q(x_{t-1} \mid x_t, x_0)$
#
# Going backwards is hard in general, but **given $x_0$** it is a Gaussian (Eqs. 6-7):
#
# $$q(x_{t-1} \mid x_t, x_0) = \mathcal N\!\left(x_{t-1};\ \tilde\mu_t(x_t, x_0),\ \tilde\beta_t I\right),$$
# $$\tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0 + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t,
# \qquad \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t .$$
#
# It comes from Bayes' rule, $q(x_{t-1} \mid x_t, x_0) \propto q(x_t \mid x_{t-1})\, q(x_{t-1} \mid x_0)$: a product
# of two Gaussians in $x_{t-1}$. The network will learn to imitate this posterior without knowing $x_0$.
# First, the coefficients by hand against the library:

# %%
ab, ab_prev = diffusion.alphas_cumprod, diffusion.alphas_cumprod_prev
coef1 = ab_prev.sqrt() * diffusion.betas / (1 - ab)
coef2 = diffusion.alphas.sqrt() * (1 - ab_prev) / (1 - ab)
tilde_beta = (1 - ab_prev) / (1 - ab) * diffusion.betas
for name, mine in [("posterior_mean_coef1", coef1), ("posterior_mean_coef2", coef2), ("posterior_variance", tilde_beta)]:
    print(f"{name:22s} max |hand - library| = {(mine - getattr(diffusion, name)).abs().max().item():.2e}")

# %% [markdown]
# Then Bayes' rule itself, numerically, for one pixel: multiply the two Gaussian densities on a fine grid of
# $x_{t-1}$ values, normalise, and measure the mean and variance of the result.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
grid = torch.linspace(-5, 5, 200_001, dtype=torch.float64)
for t, x0_value, xt_value in [(10, 0.6, 0.2), (500, -0.4, 1.1)]:
    log_prior = -((grid - ab_prev[t].sqrt() * x0_value) ** 2) / (2 * (1 - ab_prev[t]))  # q(x_{t-1} | x_0), Eq. 4
    log_lik = -((xt_value - diffusion.alphas[t].sqrt() * grid) ** 2) / (2 * diffusion.betas[t])  # q(x_t | x_{t-1}), Eq. 2
    w = torch.softmax(log_prior + log_lik, 0)
    bayes_mean, bayes_var = (w * grid).sum(), (w * grid**2).sum() - (w * grid).sum() ** 2
    mean, var = diffusion.q_posterior(torch.tensor([[x0_value]]).double(), torch.tensor([[xt_value]]).double(), t)
    print(f"t={t:3d}: Bayes mean {bayes_mean:.5f} var {bayes_var:.6f} | Eq. 7 mean {mean.item():.5f} var {var.item():.6f}")

# %% [markdown]
# The posterior variance $\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t$ is below $\beta_t$ (knowing
# $x_0$ removes uncertainty), but not by "a little" everywhere. The ratio $\tilde\beta_t/\beta_t$ is 0 at index 0
# ($x_0$ is known exactly), 0.45 at index 1, 0.86 at index 10, and reaches 0.98 only at index 100 (printed under the
# figure, and marked on the right panel). These are the two choices of $\sigma_t^2$ for sampling that the paper
# compares (notebook 06).

# %%
ratio = diffusion.posterior_variance / diffusion.betas
marks = [1, 10, 100]
fig, axes = plt.subplots(1, 2, figsize=(12, 3.2))
steps = range(1, diffusion.num_timesteps)  # from t = 1: tilde-beta_0 = 0 has no place on a log axis
axes[0].plot(steps, diffusion.betas[1:], label=r"$\beta_t$")
axes[0].plot(steps, diffusion.posterior_variance[1:], "--", label=r"$\tilde\beta_t$ (posterior variance)")
axes[0].set_yscale("log")
axes[0].set_title(r"$\beta_t$ and $\tilde\beta_t$ (log-log)")
axes[0].legend()
axes[1].plot(steps, ratio[1:])
axes[1].plot(marks, ratio[marks], "o", color="C3")
for t in marks:
    axes[1].annotate(f"{ratio[t].item():.2f} at t={t}", (t, ratio[t].item()), textcoords="offset points", xytext=(8, -12))
axes[1].set_ylim(0.3, 1.03)
axes[1].set_title(r"$\tilde\beta_t / \beta_t$")
for ax in axes:
    ax.set_xscale("log")
    ax.set_xlabel("t (log axis, from t = 1)")
    ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()
print(f"ratio at t = 0: {ratio[0]:.2f}, t = 1: {ratio[1]:.2f}, t = 10: {ratio[10]:.2f}, t = 100: {ratio[100]:.2f}")

# %% [markdown]
# ## Summary
#
# - Eq. 4 gives $x_t$ from $x_0$ in one step: iterating Eq. 2 for 200 steps, over 400 draws, matched its mean (0.8
#   standard errors off on average, as chance alone gives) and its standard deviation (ratio 1.00). Training can pick
#   any $t$ at random without simulating the chain.
# - At $t = T-1$, $x_t = 0.006\,x_0 + 1.000\,\epsilon$: its pixels follow $\mathcal N(0, 1)$ whatever the image was.
# - Given $x_0$, the step backwards is a Gaussian with mean $\tilde\mu_t$ and variance $\tilde\beta_t$ (Eqs. 6-7), as
#   Bayes' rule computed on a grid confirms; $\tilde\beta_t$ is 0.45 $\beta_t$ at index 1 and 0.98 $\beta_t$ at index 100.

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer and a cell that checks it. The next cell imports what they use and
# builds the fixtures; the section runs on its own, without the cells above.

# %%
import torch

from ddpm_lib import GaussianDiffusion, make_betas
from ddpm_lib.data import load_dataset

betas = make_betas("linear", 1000)  # float64, (1000,)
diffusion = GaussianDiffusion(betas)
betas_cos = make_betas("cosine", 1000)
diffusion_cos = GaussianDiffusion(betas_cos)
cars_data = load_dataset("toy_cars", image_size=32, num_images=8)
cars = torch.stack([cars_data[i][0] for i in range(8)]).double()  # (8, 3, 32, 32) float64 in [-1, 1]
eps = torch.randn(cars.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # fixed noise, (8, 3, 32, 32)
xt_250 = diffusion_cos.q_sample(cars, 250, eps)  # the cars at index 250 of the cosine schedule, Eq. 4

# %% [markdown]
# **Exercise 1. One shot or step by step.** Write two functions that return $x_t$ for a float64 batch `x0` of shape
# `(B, C, H, W)` and an integer index `t`, computing everything from `betas` (a float64 tensor of shape `(T,)`):
#
# - `forward_one_shot(x0, t, betas, noise)`: Eq. 4, $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ with
#   $\epsilon$ = `noise`, by hand (not `q_sample`);
# - `forward_sequential(x0, t, betas, generator)`: Eq. 2 applied at the indices $0, 1, \dots, t$ in turn,
#   $x \leftarrow \sqrt{1-\beta_s}\,x + \sqrt{\beta_s}\,z_s$, drawing each $z_s$ as
#   `torch.randn(x0.shape, generator=generator, dtype=torch.float64)`.
#
# The check compares the first with `q_sample`, and the moments of the second, over 400 copies of a patch of one car, with
# Eq. 4's mean $\sqrt{\bar\alpha_t}\,x_0$ and standard deviation $\sqrt{1-\bar\alpha_t}$.

# %% nbgrader={"grade": false, "grade_id": "ex1-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def forward_one_shot(x0, t, betas, noise):
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    return alphas_cumprod[t].sqrt() * x0 + (1 - alphas_cumprod[t]).sqrt() * noise


def forward_sequential(x0, t, betas, generator):
    x = x0.clone()
    for s in range(t + 1):
        z = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        x = (1 - betas[s]).sqrt() * x + betas[s].sqrt() * z
    return x


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex1-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
for t_ in [0, 99, 999]:
    one_shot = forward_one_shot(cars, t_, betas, eps)
    assert one_shot.shape == cars.shape, f"forward_one_shot should return shape {tuple(cars.shape)}, got {tuple(one_shot.shape)}"
    assert torch.allclose(one_shot, diffusion.q_sample(cars, t_, eps), rtol=0, atol=1e-12), f"forward_one_shot differs from Eq. 4 at t={t_}"
# two steps, exactly: x_1 = sqrt(alpha_1) (sqrt(alpha_0) x_0 + sqrt(beta_0) z_0) + sqrt(beta_1) z_1
g_check = torch.Generator().manual_seed(3)
z0, z1 = (torch.randn(cars.shape, generator=g_check, dtype=torch.float64) for _ in range(2))
two_steps = (1 - betas[1]).sqrt() * ((1 - betas[0]).sqrt() * cars + betas[0].sqrt() * z0) + betas[1].sqrt() * z1
assert torch.allclose(forward_sequential(cars, 1, betas, torch.Generator().manual_seed(3)), two_steps, rtol=0, atol=1e-12), (
    "forward_sequential(x0, 1, ...) should apply Eq. 2 at indices 0 and 1, drawing z_0 then z_1 from the generator"
)
patch = cars[3, :, 8:24, 8:24]  # the middle 16x16 of one car
copies = patch.expand(400, -1, -1, -1)
chain = forward_sequential(copies, 99, betas, torch.Generator().manual_seed(4))
assert chain.shape == copies.shape, f"forward_sequential should return shape {tuple(copies.shape)}, got {tuple(chain.shape)}"
sd_99 = diffusion.sqrt_one_minus_alphas_cumprod[99]
z_scores = (chain.mean(0) - diffusion.sqrt_alphas_cumprod[99] * patch) / (sd_99 / 400**0.5)
assert 0.6 < z_scores.abs().mean() < 1.0, f"the chain's mean is {z_scores.abs().mean():.2f} standard errors from Eq. 4's on average, not about 0.8"
assert abs((chain.std(0) / sd_99).mean() - 1) < 0.01, "the chain's standard deviation differs from Eq. 4's sqrt(1 - bar-alpha_t)"

# %% [markdown]
# **Exercise 2. The posterior mean by hand.** For the cosine schedule `betas_cos`, compute the two coefficients of
# $\tilde\mu_t(x_t, x_0) = c_1\,x_0 + c_2\,x_t$ in Eq. 7 from `betas_cos` alone, as float64 tensors of shape `(1000,)`:
# `mean_coef_x0` $= \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}$ and `mean_coef_xt` $= \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}$,
# with $\bar\alpha_{t-1} = 1$ at index 0. Then use them for `posterior_mean_250`: the mean of $q(x_{t-1} \mid x_t, x_0)$ at
# index $t = 250$ for $x_0$ = `cars` and $x_t$ = `xt_250` (from the setup cell), shape `(8, 3, 32, 32)`.

# %% nbgrader={"grade": false, "grade_id": "ex2-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
ac_cos = torch.cumprod(1 - betas_cos, dim=0)
ac_cos_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac_cos[:-1]])
mean_coef_x0 = ac_cos_prev.sqrt() * betas_cos / (1 - ac_cos)
mean_coef_xt = (1 - betas_cos).sqrt() * (1 - ac_cos_prev) / (1 - ac_cos)
posterior_mean_250 = mean_coef_x0[250] * cars + mean_coef_xt[250] * xt_250
### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex2-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
for mine, name in [(mean_coef_x0, "posterior_mean_coef1"), (mean_coef_xt, "posterior_mean_coef2")]:
    assert mine.shape == (1000,) and mine.dtype == torch.float64, f"the coefficients should be float64 of shape (1000,), got {mine.dtype} {tuple(mine.shape)}"
    assert torch.allclose(mine, getattr(diffusion_cos, name), rtol=1e-10, atol=1e-15), f"your coefficient differs from GaussianDiffusion.{name}"
library_mean, _ = diffusion_cos.q_posterior(cars, xt_250, 250)
assert torch.allclose(posterior_mean_250, library_mean, rtol=0, atol=1e-10), "posterior_mean_250 differs from q_posterior's mean at t=250"

# %% [markdown]
# **Exercise 3. How much does knowing $x_0$ help?** For the linear schedule `betas`, compute `beta_tilde` (float64, shape
# `(1000,)`), the posterior variance $\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t$ of Eq. 7, and
# `first_above_99`: the first index $t$ (an int) at which $\tilde\beta_t / \beta_t \ge 0.99$. From there on, the two
# choices of $\sigma_t^2$ differ by less than 1%.

# %% nbgrader={"grade": false, "grade_id": "ex3-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
ac_lin = torch.cumprod(1 - betas, dim=0)
ac_lin_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac_lin[:-1]])
beta_tilde = (1 - ac_lin_prev) / (1 - ac_lin) * betas
first_above_99 = int(torch.argmax((beta_tilde / betas >= 0.99).int()))
### END SOLUTION
print("beta-tilde reaches 0.99 beta at t =", first_above_99)

# %% nbgrader={"grade": true, "grade_id": "ex3-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
assert beta_tilde.shape == (1000,) and beta_tilde.dtype == torch.float64, f"beta_tilde should be float64 of shape (1000,), got {beta_tilde.dtype} {tuple(beta_tilde.shape)}"
assert torch.allclose(beta_tilde, diffusion.posterior_variance, rtol=1e-10, atol=1e-18), "beta_tilde differs from GaussianDiffusion.posterior_variance"
lib_ratio = diffusion.posterior_variance / betas
assert int(first_above_99) == first_above_99, "first_above_99 should be an integer index"
assert lib_ratio[first_above_99] >= 0.99 and lib_ratio[first_above_99 - 1] < 0.99, f"t={first_above_99} is not the first index where the ratio reaches 0.99"

# %% [markdown]
# **Exercise 4. Back to $x_0$, and Eq. 11.** Write `x0_from_noise(x_t, t, noise, betas)`: Eq. 4 solved for $x_0$,
# $x_0 = \left(x_t - \sqrt{1-\bar\alpha_t}\,\epsilon\right)/\sqrt{\bar\alpha_t}$, and `eq11_mean(x_t, t, noise, betas)`:
# $\frac{1}{\sqrt{\alpha_t}}\left(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\epsilon\right)$, the mean the network's
# reverse step uses (Eq. 11). Both take float64 `x_t` and `noise` of shape `(B, C, H, W)` and an integer index `t`. The
# check verifies that the first recovers the cars exactly, and that the posterior mean $\tilde\mu_t$ at the recovered
# $x_0$ *is* Eq. 11: substituting Eq. 4 into Eq. 7 gives it.

# %% nbgrader={"grade": false, "grade_id": "ex4-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def x0_from_noise(x_t, t, noise, betas):
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    return (x_t - (1 - alphas_cumprod[t]).sqrt() * noise) / alphas_cumprod[t].sqrt()


def eq11_mean(x_t, t, noise, betas):
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    return (x_t - betas[t] / (1 - alphas_cumprod[t]).sqrt() * noise) / (1 - betas[t]).sqrt()


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex4-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
for diff, sched in [(diffusion, betas), (diffusion_cos, betas_cos)]:
    for t_ in [1, 250, 900]:
        x_t_ = diff.q_sample(cars, t_, eps)
        recovered = x0_from_noise(x_t_, t_, eps, sched)
        assert torch.allclose(recovered, cars, rtol=0, atol=1e-8), f"x0_from_noise does not recover x_0 at t={t_}"
        assert torch.allclose(recovered, diff.predict_x0_from_noise(x_t_, t_, eps), rtol=0, atol=1e-10), f"x0_from_noise differs from predict_x0_from_noise at t={t_}"
        posterior_at_recovered, _ = diff.q_posterior(recovered, x_t_, t_)
        assert torch.allclose(eq11_mean(x_t_, t_, eps, sched), posterior_at_recovered, rtol=0, atol=1e-8), f"eq11_mean differs from the posterior mean at t={t_}"
