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
# # 02 · The forward process: from a car to noise
#
# **Goal.** Take real training images, destroy them step by step with the forward process of notebook 01, and
# prove the shortcut that makes DDPM trainable: $x_t$ can be drawn from $x_0$ in **one** step (Eq. 4). Then derive
# the posterior $q(x_{t-1} \mid x_t, x_0)$, the target the reverse process will imitate.
#
# **You will:** load the dataset (and learn how to switch datasets), check Eq. 4 against iterating Eq. 2,
# watch cars dissolve with a slider over $t$, and check the posterior (Eqs. 6-7) against Bayes' rule.

# %%
import os

import matplotlib.pyplot as plt
import torch

from ddpm_lib import GaussianDiffusion, make_betas
from ddpm_lib.data import DatasetUnavailableError, load_dataset
from ddpm_lib.plotting import forward_strip, show_images
from ddpm_lib.widgets import forward_explorer, forward_view

FAST = os.environ.get("DDPM_FAST") == "1"
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
draws, t = 1000, 199
x = x0.double().expand(draws, -1, -1, -1).clone()
for s in range(t + 1):  # Eq. 2, step by step, from x_0 to x_t
    beta = diffusion.betas[s]
    x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
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
# Each row is one car, each column a timestep; the noise is the same along a row. With the linear schedule the
# car is still recognisable at $t = 200$ and gone by $t \approx 600$.

# %%
timesteps = [0, 50, 100, 200, 300, 400, 600, 800, 999]
fig = forward_strip(diffusion, batch[:6], timesteps, noise=torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
if not FAST:
    fig.savefig(f"{ASSETS}/forward_strip.png", dpi=120, bbox_inches="tight")
plt.show()

# %% [markdown]
# ## 4. Explore: the slider over $t$
#
# Drag $t$: the figure shows $x_0$, the noise $\epsilon$, $x_t$, and the histogram of $x_t$'s pixels against
# $\mathcal N(0, 1)$. The histogram starts as the image's own colours and ends as the standard normal that
# sampling starts from. Below the slider, the same view at four positions.

# %% tags=["nbval-ignore-output"]
# NBVAL_IGNORE_OUTPUT
forward_explorer(diffusion, batch[5])

# %%
fixed_noise = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
for t in [0, 100, 400, 999]:
    forward_view(diffusion, batch[5], t, fixed_noise)
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
# $x_0$ removes uncertainty), but not by "a little" everywhere: it is 0 at the first step, about half of $\beta_t$ at
# index 1, and approaches $\beta_t$ only after a few dozen steps. The ratio on the right shows it. These are the two
# choices of $\sigma_t^2$ for sampling that the paper compares (notebook 06).

# %%
ratio = diffusion.posterior_variance / diffusion.betas
fig, axes = plt.subplots(1, 2, figsize=(12, 3))
axes[0].plot(diffusion.betas, label=r"$\beta_t$")
axes[0].plot(diffusion.posterior_variance, "--", label=r"$\tilde\beta_t$ (posterior variance)")
axes[0].set_yscale("log")
axes[0].legend()
axes[1].plot(range(1, diffusion.num_timesteps), ratio[1:])
axes[1].set_xscale("log")
axes[1].set_title(r"$\tilde\beta_t / \beta_t$ (log t axis)")
for ax in axes:
    ax.set_xlabel("t")
    ax.grid(alpha=0.3)
print(f"ratio at t = 1: {ratio[1]:.2f}, t = 10: {ratio[10]:.2f}, t = 100: {ratio[100]:.3f}");

# %% [markdown]
# ## Summary
#
# - Eq. 4 gives $x_t$ from $x_0$ in one step: training can pick any $t$ at random without simulating the chain.
# - At $t = T-1$, $x_t$'s pixels follow $\mathcal N(0, 1)$ whatever the image was.
# - Given $x_0$, the step backwards is a Gaussian with mean $\tilde\mu_t$ and variance $\tilde\beta_t$ (Eqs. 6-7).
#
# ## Exercises
#
# 1. At which $t$ does the noise's standard deviation $\sqrt{1-\bar\alpha_t}$ first exceed the signal's
#    coefficient $\sqrt{\bar\alpha_t}$ for the linear schedule? For the cosine one? *Hint:* `torch.argmax` on a
#    boolean tensor.
# 2. Show that $\tilde\mu_t(x_t, x_0)$ with $x_0$ replaced by Eq. 4 solved for $x_0$ gives
#    $\frac{1}{\sqrt{\alpha_t}}\left(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\epsilon\right)$ (Eq. 11).
#    *Hint:* check numerically with `diffusion.predict_x0_from_noise`.
# 3. Load the toy cars at 64x64 and redo the strip. Is the car gone at the same $t$?
#
# A check of exercise 1:

# %%
linear_cross = int(torch.argmax((diffusion.sqrt_one_minus_alphas_cumprod > diffusion.sqrt_alphas_cumprod).int()))
cosine = GaussianDiffusion(make_betas("cosine", 1000))
cosine_cross = int(torch.argmax((cosine.sqrt_one_minus_alphas_cumprod > cosine.sqrt_alphas_cumprod).int()))
print("noise overtakes signal at t =", linear_cross, "(linear) and t =", cosine_cross, "(cosine)")
assert diffusion.alphas_cumprod[linear_cross] < 0.5 <= diffusion.alphas_cumprod[linear_cross - 1]
