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
# # 03 · The objective: a bound on $-\log p_\theta(x_0)$
#
# **Goal.** Say exactly what a diffusion model is trained to do. DDPM is a latent-variable model, and its honest
# objective is the variational bound on the negative log-likelihood (Ho et al. 2020, Eq. 5). We split the bound into
# its terms, derive each one in closed form, and arrive at the weighted noise-prediction loss of Eq. 12, of which
# the loss the paper trains with, $L_\text{simple}$ (Eq. 14), keeps everything but the weights. Then we measure the bound
# of a real model in **bits per dimension**, and meet the same loss from a second angle: denoising score matching.
#
# **You will:** derive the posterior by completing the square, write the KL divergence of two Gaussians and the
# discretised decoder by hand and check both against `ddpm_lib.bound`, plot the weights that $L_\text{simple}$
# drops, measure the bits/dim of a trained toy-cars model, and see that the optimal noise predictor is the score.
#
# **Deviations from the paper.** Timesteps are indices from 0 (NOTATION.md): the term the paper calls $L_{t-1}$
# sits at index $t-1$, and $L_0$ at index 0. The sum over $T = 1000$ steps is estimated from a log-spaced subset of
# them (the notebook would otherwise run for minutes). The model is the small CPU model trained on toy cars, not the
# paper's CIFAR-10 model, so its bits/dim are not comparable with the paper's.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from ddpm_lib import GaussianDiffusion, make_betas
from ddpm_lib.checkpoints import DDPM_MODEL, load_ema_model
from ddpm_lib.model_card import recipe_summary
from ddpm_lib.data import from_uint8, load_dataset
from ddpm_lib.bound import bits_per_dim, discretized_gaussian_log_likelihood, eps_weights, log_spaced_timesteps, normal_kl, prior_bpd, vlb_terms
from ddpm_lib.plotting import show_images

from ddpm_lib.checks import env_flag

FAST = env_flag("DDPM_FAST")
LN2 = math.log(2.0)
torch.manual_seed(0);

# %% [markdown]
# Held-out cars (the `test` split, never seen in training) in $[-1, 1]$, and the diffusion of notebooks 01-02:
# the linear schedule with $T = 1000$.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
cars = load_dataset("toy_cars", image_size=32, split="test", num_images=64)
x0 = from_uint8(cars.images)  # (64, 3, 32, 32), the same as cars.images.float() / 127.5 - 1
diffusion = GaussianDiffusion(make_betas("linear", 1000))
D = x0[0].numel()
print("held-out images:", tuple(x0.shape), "| D = C*H*W =", D, "| range:", round(x0.min().item(), 4), round(x0.max().item(), 4))

# %%
show_images(x0[:16], nrow=16, title="held-out toy cars", scale=1.0);

# %% [markdown]
# ## 1. The variational bound (Eq. 5)
#
# The model is $p_\theta(x_{0:T}) = p(x_T)\prod_{t=1}^T p_\theta(x_{t-1} \mid x_t)$ with $p(x_T) = \mathcal N(0, I)$: the
# likelihood $p_\theta(x_0)$ integrates over every path $x_{1:T}$, which we cannot do. Importance sampling the paths
# from the forward process $q(x_{1:T} \mid x_0)$ and Jensen's inequality give a bound (Eq. 3):
#
# $$-\log p_\theta(x_0) \le \mathbb E_q\!\left[-\log \frac{p_\theta(x_{0:T})}{q(x_{1:T} \mid x_0)}\right] = L .$$
#
# Each forward factor can be written backwards with Bayes' rule, $q(x_t \mid x_{t-1}) = q(x_{t-1} \mid x_t, x_0)\,
# q(x_t \mid x_0) / q(x_{t-1} \mid x_0)$; the ratios $q(x_t \mid x_0)/q(x_{t-1} \mid x_0)$ telescope, and what is
# left is a sum of KL divergences between Gaussians (Eq. 5):
#
# $$L = \mathbb E_q\Big[\underbrace{D_\text{KL}\big(q(x_T \mid x_0)\,\|\,p(x_T)\big)}_{L_T}
# + \sum_{t>1} \underbrace{D_\text{KL}\big(q(x_{t-1} \mid x_t, x_0)\,\|\,p_\theta(x_{t-1} \mid x_t)\big)}_{L_{t-1}}
# \;\underbrace{-\log p_\theta(x_0 \mid x_1)}_{L_0}\Big].$$
#
# | term | what it measures | in `ddpm_lib.bound` |
# | --- | --- | --- |
# | $L_T$ | how far $x_T$ is from pure noise; no parameters | `prior_bpd` |
# | $L_{t-1}$, $t = 2..T$ | one reverse step against the true posterior | `vlb_terms` at index $t-1 = 1..T-1$ |
# | $L_0$ | the decoder: the probability of the exact pixels | `vlb_terms` at index 0 |
#
# All terms are reported in **bits per dimension**: nats divided by $D \ln 2$, with $D = 3 \cdot 32 \cdot 32$.
#
# $L_T$ first. By Eq. 4, $q(x_T \mid x_0) = \mathcal N(\sqrt{\bar\alpha_T}\,x_0, (1-\bar\alpha_T) I)$, and the KL to
# $\mathcal N(0, 1)$ per dimension is $\tfrac12\big(\bar\alpha_T x_0^2 + (1-\bar\alpha_T) - 1 - \log(1-\bar\alpha_T)\big)$:

# %%
ab_T = diffusion.alphas_cumprod[-1].item()
prior_by_hand = 0.5 * (ab_T * x0.double() ** 2 + (1 - ab_T) - 1 - math.log(1 - ab_T))  # nats per dimension, (64, 3, 32, 32)
prior_by_hand = prior_by_hand.flatten(1).mean(1) / LN2  # bits/dim per image, (64,)
print(f"bar-alpha_T = {ab_T:.2e}; L_T of the first car: {prior_by_hand[0].item():.2e} bits/dim")
print("max relative |hand - library| =", ((prior_by_hand - prior_bpd(diffusion, x0)) / prior_by_hand).abs().max().item())

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("L_T by hand matches prior_bpd:", torch.allclose(prior_by_hand, prior_bpd(diffusion, x0).double(), rtol=1e-5, atol=0))
print("L_T is below 1e-4 bits/dim for every car:", bool((prior_by_hand < 1e-4).all()))

# %% [markdown]
# With the paper's schedule $L_T$ is negligible. With fewer steps and the same $\beta$ endpoints it is not (notebook 01
# showed that such a schedule never reaches noise): exercise 2 finds the smallest $T$ that keeps it negligible.

# %% [markdown]
# ## 2. The posterior by completing the square (Eqs. 6-7)
#
# Every $L_{t-1}$ compares $p_\theta(x_{t-1} \mid x_t)$ with the posterior $q(x_{t-1} \mid x_t, x_0) \propto
# q(x_t \mid x_{t-1})\, q(x_{t-1} \mid x_0)$. Both factors are Gaussian in $x_{t-1}$, so the log of their product is a
# quadratic in $x_{t-1}$ (per dimension; the constant $C$ does not involve $x_{t-1}$):
#
# $$-2\log q(x_{t-1} \mid x_t, x_0) = \frac{(x_t - \sqrt{\alpha_t}\,x_{t-1})^2}{\beta_t} + \frac{(x_{t-1} - \sqrt{\bar\alpha_{t-1}}\,x_0)^2}{1-\bar\alpha_{t-1}} + C
# = \underbrace{\Big(\frac{\alpha_t}{\beta_t} + \frac{1}{1-\bar\alpha_{t-1}}\Big)}_{1/\tilde\beta_t} x_{t-1}^2
# - 2\underbrace{\Big(\frac{\sqrt{\alpha_t}}{\beta_t}\,x_t + \frac{\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_{t-1}}\,x_0\Big)}_{b} x_{t-1} + C' .$$
#
# Completing the square, $a x^2 - 2 b x = a (x - b/a)^2 - b^2/a$: a Gaussian with variance $\tilde\beta_t = 1/a$ and
# mean $\tilde\mu_t = b/a$. Since $\alpha_t(1-\bar\alpha_{t-1}) + \beta_t = 1 - \bar\alpha_t$, this simplifies to Eq. 7:
#
# $$\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t, \qquad
# \tilde\mu_t(x_t, x_0) = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0 + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t .$$
#
# The precision $a$ and the linear coefficient $b$, straight from the quadratic, against `diffusion.q_posterior`:

# %%
t = torch.tensor([1, 10, 100, 500, 999] * 4)  # (20,) one index per image
x0_batch = x0[:20].double()
x_t = diffusion.q_sample(x0_batch, t, torch.randn_like(x0_batch))
alpha, beta = diffusion.alphas[t].view(-1, 1, 1, 1), diffusion.betas[t].view(-1, 1, 1, 1)
ab_prev = diffusion.alphas_cumprod_prev[t].view(-1, 1, 1, 1)
a = alpha / beta + 1 / (1 - ab_prev)  # the precision 1 / tilde-beta_t
b = alpha.sqrt() / beta * x_t + ab_prev.sqrt() / (1 - ab_prev) * x0_batch
mean, variance = diffusion.q_posterior(x0_batch, x_t, t)
print("max |b/a - library mean| =", (b / a - mean).abs().max().item())
print("max |1/a - library variance| / variance =", ((1 / a - variance) / variance).abs().max().item())

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("completing the square gives q_posterior:", torch.allclose(b / a, mean, atol=1e-9) and torch.allclose(1 / a, variance, rtol=1e-9))

# %% [markdown]
# At index 0 (the paper's $t = 1$) there is nothing to complete: $\bar\alpha_{-1} = 1$, the posterior is the point $x_0$
# and $\tilde\beta = 0$. That is why the last term, $L_0$, is of another kind (Section 4).
#
# ## 3. KL of two Gaussians, Eq. 8 and Eq. 12
#
# For one dimension,
#
# $$D_\text{KL}\big(\mathcal N(\mu_1, \sigma_1^2)\,\|\,\mathcal N(\mu_2, \sigma_2^2)\big) = \log\frac{\sigma_2}{\sigma_1} + \frac{\sigma_1^2 + (\mu_1-\mu_2)^2}{2\sigma_2^2} - \frac12 ,$$
#
# and for diagonal Gaussians the KL is the sum over dimensions. By hand, against the library's `normal_kl` (which
# takes log-variances) and against `torch.distributions`:

# %%
g = torch.Generator().manual_seed(0)
mu1, mu2 = torch.randn(1000, generator=g, dtype=torch.float64), torch.randn(1000, generator=g, dtype=torch.float64)
sigma1, sigma2 = torch.rand(1000, generator=g, dtype=torch.float64) + 0.05, torch.rand(1000, generator=g, dtype=torch.float64) + 0.05
kl_by_hand = torch.log(sigma2 / sigma1) + (sigma1**2 + (mu1 - mu2) ** 2) / (2 * sigma2**2) - 0.5
kl_library = normal_kl(mu1, 2 * sigma1.log(), mu2, 2 * sigma2.log())
kl_torch = torch.distributions.kl_divergence(torch.distributions.Normal(mu1, sigma1), torch.distributions.Normal(mu2, sigma2))
print("max |hand - normal_kl| =", (kl_by_hand - kl_library).abs().max().item(), "| max |hand - torch| =", (kl_by_hand - kl_torch).abs().max().item())

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("KL by hand = normal_kl = torch.distributions:", torch.allclose(kl_by_hand, kl_library) and torch.allclose(kl_by_hand, kl_torch))
print("KL >= 0 everywhere:", bool((kl_library >= 0).all()))

# %% [markdown]
# **Eq. 8.** The paper fixes the reverse variance, $p_\theta(x_{t-1} \mid x_t) = \mathcal N(\mu_\theta(x_t, t), \sigma_t^2 I)$
# with $\sigma_t^2 = \tilde\beta_t$ (`"fixed_small"`, the default here) or $\beta_t$ (`"fixed_large"`). Then only the
# mean term of the KL depends on $\theta$:
#
# $$L_{t-1} = \mathbb E_q\Big[\frac{1}{2\sigma_t^2}\,\|\tilde\mu_t(x_t, x_0) - \mu_\theta(x_t, t)\|^2\Big] + C_t,
# \qquad C_t = \frac D2\Big(\frac{\tilde\beta_t}{\sigma_t^2} - 1 - \log\frac{\tilde\beta_t}{\sigma_t^2}\Big)\ \ (= 0 \text{ for } \sigma_t^2 = \tilde\beta_t).$$
#
# **Eq. 12.** Write $x_0$ through Eq. 4, $x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon)/\sqrt{\bar\alpha_t}$: then
# $\tilde\mu_t = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\epsilon\big)$, and the model's mean takes the
# same form with $\epsilon_\theta(x_t, t)$ in place of $\epsilon$ (Eq. 11). The difference of the two means is
# $\frac{\beta_t}{\sqrt{\alpha_t}\sqrt{1-\bar\alpha_t}}(\epsilon_\theta - \epsilon)$, so
#
# $$L_{t-1} - C_t = \mathbb E_{x_0, \epsilon}\Big[\underbrace{\frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1-\bar\alpha_t)}}_{w_t}\,
# \big\|\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\ t)\big\|^2\Big].$$
#
# `eps_weights(diffusion)` holds $w_t$. The check: for a "model" that returns an arbitrary fixed $\epsilon_\theta$, the
# library's term (`vlb_terms`, in bits/dim) equals $(w_t \cdot \text{mean}\,(\epsilon - \epsilon_\theta)^2 + C_t / D)/\ln 2$.

# %%
B = 8
t = torch.tensor([1, 5, 20, 100, 300, 500, 800, 999])  # (8,) indices >= 1, where the term is a KL
noise = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(1))
eps_pred = torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(2))
library_bits = vlb_terms(diffusion, lambda x_t, t: eps_pred, x0[:B], t, noise)["output"]  # (8,)
w = eps_weights(diffusion)[t].float()
by_hand_bits = w * (noise - eps_pred).pow(2).flatten(1).mean(1) / LN2  # C_t = 0 for fixed_small
print("bits/dim, library:", [round(v, 4) for v in library_bits.tolist()])
print("max relative |hand - library| =", ((by_hand_bits - library_bits) / library_bits).abs().max().item())

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("Eq. 12 gives the library's KL terms:", torch.allclose(by_hand_bits, library_bits, rtol=1e-4))

# %% [markdown]
# **What $L_\text{simple}$ drops.** The paper trains with $L_\text{simple} = \mathbb E_{t, x_0, \epsilon}\|\epsilon - \epsilon_\theta\|^2$
# (Eq. 14): Eq. 12 with every $w_t$ replaced by 1 (and $t$ drawn uniformly). Relative to the bound, it down-weights the
# small $t$, where the noise is faint: an error in $\epsilon$ there is a tiny error in the image (it reaches $\hat x_0$
# scaled by $\sqrt{1-\bar\alpha_t}/\sqrt{\bar\alpha_t}$), so the bound weighs it heavily, while $L_\text{simple}$ spends the
# model's capacity on the large-$t$ denoising that shapes the image. (Measured in $\epsilon$ units, small $t$ is where
# the error is largest, as notebook 08 shows: easy in image units, hard in noise units.) The weights span two orders
# of magnitude:

# %%
large = GaussianDiffusion(make_betas("linear", 1000), "fixed_large")
steps = np.arange(1, 1001)  # the paper's t = index + 1
fig, ax = plt.subplots(figsize=(7.5, 3.5))
ax.loglog(steps, eps_weights(diffusion), label=r"$w_t$ with $\sigma_t^2 = \tilde\beta_t$ (fixed_small)")
ax.loglog(steps, eps_weights(large), "--", label=r"$w_t$ with $\sigma_t^2 = \beta_t$ (fixed_large)")
ax.axhline(1.0, color="k", lw=1, label=r"$L_\mathrm{simple}$: $w_t = 1$")
ax.set_xlabel("paper's step t (index + 1)")
ax.set_ylabel("weight of $\\|\\epsilon - \\epsilon_\\theta\\|^2$ per dimension")
ax.set_title("Eq. 12's weights: the bound cares most about the first steps")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8);

# %% [markdown]
# Which is better depends on what you measure. In Ho et al. 2020, the $\epsilon$-prediction model trained on the true
# bound (fixed isotropic $\Sigma$) reaches $\le 3.70$ bits/dim on CIFAR-10 but FID 13.51, while the same model trained
# with $L_\text{simple}$ gives the far better FID 3.17 with a worse likelihood, $\le 3.75$ bits/dim (Tables 1 and 2). The
# re-weighting helps samples, not likelihood: the bits sit in the small-$t$ terms it down-weights (Section 5).
#
# ## 4. The decoder $L_0$ (Eq. 13)
#
# Images are not continuous: each pixel takes one of 256 values, $2/255$ apart in $[-1, 1]$. A density would assign
# them probability 0, so the last step is a **discretised** Gaussian: the probability of the bin around each pixel,
#
# $$p_\theta(x_0 \mid x_1) = \prod_{i=1}^{D} \int_{\delta_-(x_0^i)}^{\delta_+(x_0^i)} \mathcal N\big(x;\ \mu_\theta^i(x_1, 1), \sigma_1^2\big)\,dx,
# \qquad \delta_+(x) = \begin{cases}\infty & x = 1\\ x + \frac{1}{255} & x < 1\end{cases},\quad
# \delta_-(x) = \begin{cases}-\infty & x = -1\\ x - \frac{1}{255} & x > -1\end{cases}.$$
#
# The two edge bins are open-ended, so the 256 probabilities sum to 1. By hand with the normal CDF, against
# `discretized_gaussian_log_likelihood`:

# %%
values = torch.linspace(-1, 1, 256, dtype=torch.float64)  # every pixel value
normal = torch.distributions.Normal(torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.25, dtype=torch.float64))
upper = torch.where(values > 0.999, torch.tensor(math.inf, dtype=torch.float64), values + 1 / 255)
lower = torch.where(values < -0.999, torch.tensor(-math.inf, dtype=torch.float64), values - 1 / 255)
p_by_hand = normal.cdf(upper) - normal.cdf(lower)  # (256,)
p_library = discretized_gaussian_log_likelihood(values, normal.mean, normal.stddev.log()).exp()
print("max |hand - library| =", (p_by_hand - p_library).abs().max().item())

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("the 256 probabilities sum to 1:", abs(p_library.sum().item() - 1) < 1e-9, "| hand = library:", torch.allclose(p_by_hand, p_library))

# %% [markdown]
# Left: a wide Gaussian; the edge bin at $x = 1$ collects the whole tail beyond $1 - \frac{1}{255}$. Right: the decoder
# as it is used, with $\sigma_1 = \sqrt{\tilde\beta}$ of index 1 (the clipped value, because $\tilde\beta = 0$ at index 0),
# about 0.0074: about one bin width ($2/255 \approx 0.0078$).

# %%
sigma_decoder = diffusion.posterior_variance[1].sqrt().item()
fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
x_fine = torch.linspace(-1.05, 1.05, 2000, dtype=torch.float64)
axes[0].bar(values, p_library, width=2 / 255, color="tab:blue", alpha=0.6, label="bin probabilities")
axes[0].plot(x_fine, normal.log_prob(x_fine).exp() * 2 / 255, "k", lw=1, label="density x bin width")
bulk = p_library[1:-1].max().item()
axes[0].set_ylim(0, 2.5 * bulk)  # the last bar runs off the top
axes[0].annotate(f"last bin, x = 1: {p_library[-1].item():.2f}\n(the whole tail beyond 1 - 1/255)", xy=(1.0, 2.45 * bulk), xytext=(-0.1, 1.9 * bulk),
                 arrowprops={"arrowstyle": "->"}, fontsize=8)
axes[0].set_title(r"$\mu = 0.8,\ \sigma = 0.25$: 256 bins, open-ended edges")
axes[0].set_xlabel("pixel value")
axes[0].legend(fontsize=8, loc="upper left")
mu_decoder = 0.985
near_edge = values[values > 0.94]
p_edge = discretized_gaussian_log_likelihood(near_edge, torch.tensor(mu_decoder, dtype=torch.float64), torch.tensor(math.log(sigma_decoder), dtype=torch.float64)).exp()
for i, v in enumerate(near_edge.tolist()):
    axes[1].axvspan(v - 1 / 255, min(v + 1 / 255, 1.02), color=["0.85", "0.93"][i % 2], lw=0)
axes[1].bar(near_edge, p_edge, width=1.2 / 255, color="tab:orange", label="bin probabilities")
x_zoom = torch.linspace(0.94, 1.02, 800, dtype=torch.float64)
density = torch.distributions.Normal(mu_decoder, sigma_decoder).log_prob(x_zoom).exp()
axes[1].plot(x_zoom, density * 2 / 255, "k", lw=1, label="density x bin width")
axes[1].axvline(1.0, color="tab:red", lw=1, ls=":", label="x = 1: last bin runs to +inf")
axes[1].set_title(rf"decoder: $\mu = {mu_decoder}$, $\sigma_1 = {sigma_decoder:.4f}$, near the right edge")
axes[1].set_xlabel("pixel value")
axes[1].legend(fontsize=8, loc="upper left");

# %% [markdown]
# Because $\sigma_1$ is about one bin wide, even a perfect mean leaves much of the probability in the neighbouring
# bins: an inner pixel predicted exactly costs at least $-\log_2\big(2\Phi(\tfrac{1}{255\,\sigma_1}) - 1\big)$ bits.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
floor_bits = -math.log2(2 * torch.distributions.Normal(0.0, 1.0).cdf(torch.tensor(1 / (255 * sigma_decoder), dtype=torch.float64)).item() - 1)
library_floor = -discretized_gaussian_log_likelihood(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(math.log(sigma_decoder))).item() / LN2
print(f"sigma_1 = {sigma_decoder:.5f}: a perfect inner pixel costs {floor_bits:.3f} bits (library: {library_floor:.3f})")

# %% [markdown]
# ## 5. Bits per dimension of a real model
#
# Now the bound of a trained toy-cars model: the paper's DDPM that notebook 05 trains (`--preset ddpm`: the `small`
# U-Net, $L_\text{simple}$, linear schedule, $T = 1000$), in its shipped weights `ddpm_lib/weights/ddpm_toy_cars_32.pt`
# (1,600 steps), the model notebooks 06 and 07 study too. `bits_per_dim` evaluates $L_T$, then one term per timestep
# index with fresh noise, the model in eval mode.
# All $T = 1000$ terms cost 1000 passes of the network; the terms change smoothly and fall steeply with $t$, so we
# evaluate a log-spaced subset, dense at small $t$, and sum the terms interpolated between them (an estimate; the
# full loop is `timesteps=None`).

# %%
model, pretrained_diffusion, config = load_ema_model(DDPM_MODEL)
print(f"{DDPM_MODEL.name}: {recipe_summary(config)}, variance {pretrained_diffusion.variance_type}")
num_images, num_steps = (4, 20) if FAST else (32, 100)
timesteps = log_spaced_timesteps(pretrained_diffusion.num_timesteps, num_steps)
print(f"{num_images} held-out images, {len(timesteps)} timestep indices:", timesteps[:8], "...", timesteps[-3:])

# %%
bpd = bits_per_dim(pretrained_diffusion, model, x0[:num_images], generator=torch.Generator().manual_seed(0), timesteps=timesteps)
total = bpd["total"]
kl_sum = bpd["terms"][:, 1:] @ bpd["weights"][1:].float()
print(f"bound: {total.mean().item():.3f} ± {total.std().item() / num_images**0.5:.3f} bits/dim (mean ± standard error over images)")
print(f"  L_T (prior)   {bpd['prior'].mean().item():.2e}")
print(f"  sum of L_t-1  {kl_sum.mean().item():.3f}")
print(f"  L_0 (decoder) {bpd['decoder'].mean().item():.3f}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("total = L_T + sum of terms x weights:", torch.allclose(total, bpd["prior"] + bpd["terms"] @ bpd["weights"].float()))
print("the weights cover all T indices:", bpd["weights"].sum().item() == pretrained_diffusion.num_timesteps)
print("every term is >= 0:", bool((bpd["terms"] >= 0).all()))

# %% [markdown]
# **Where the bound's mass sits.** Left: the terms per timestep (mean over images). Right: the share of the bound
# accumulated from $t = 1$ upwards. The decoder alone holds about two thirds of the bound (1.3 bits/dim of it is the
# floor of Section 4), and with the first few dozen steps, the imperceptible details, it holds almost all of it; the
# steps that decide what the car looks like cost little. That is the paper's observation in Sec. 4.3, and
# the reason why $L_\text{simple}$, which down-weights exactly those steps, trades likelihood for sample quality.

# %%
step = bpd["timesteps"] + 1  # the paper's t
mean_terms = bpd["terms"].mean(0)
share = torch.cumsum(mean_terms.double() * bpd["weights"], 0) / total.mean().double()
fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
axes[0].loglog(step[1:], mean_terms[1:], "o-", ms=3, label=r"$L_{t-1}$ (KL terms)")
axes[0].loglog(step[:1], mean_terms[:1], "s", color="tab:red", ms=7, label=r"$L_0$ (decoder)")
axes[0].set_xlabel("paper's step t (index + 1)")
axes[0].set_ylabel("bits/dim")
axes[0].set_title("one term of the bound per step")
axes[0].grid(alpha=0.3, which="both")
axes[0].legend(fontsize=8)
axes[1].semilogx(step, share, "o-", ms=3)
axes[1].set_xlabel("paper's step t (index + 1)")
axes[1].set_ylabel("share of the bound")
axes[1].set_title("cumulative share of the bound, from t = 1")
axes[1].set_ylim(0, 1.02)
axes[1].grid(alpha=0.3, which="both");

# %% [markdown]
# ## 6. The same loss from another angle: denoising score matching
#
# Training $\epsilon_\theta$ with a squared error makes it estimate the conditional mean: the best predictor is
# $\epsilon^*(x_t, t) = \mathbb E[\epsilon \mid x_t]$. And that mean is the **score** of the noised data, scaled (Tweedie's
# formula). Differentiate $q_t(x) = \int q(x_0)\,\mathcal N(x; \sqrt{\bar\alpha_t}\,x_0, (1-\bar\alpha_t)I)\,dx_0$:
#
# $$\nabla_x \log q_t(x) = \mathbb E\Big[-\frac{x - \sqrt{\bar\alpha_t}\,x_0}{1-\bar\alpha_t}\ \Big|\ x_t = x\Big]
# = -\frac{\mathbb E[\epsilon \mid x_t = x]}{\sqrt{1-\bar\alpha_t}}
# \qquad\Longrightarrow\qquad \epsilon^*(x_t, t) = -\sqrt{1-\bar\alpha_t}\;\nabla \log q_t(x_t).$$
#
# So Eq. 12 is denoising score matching over many noise levels, and Algorithm 2 resembles Langevin dynamics with the
# learned score (Ho et al. 2020, Sec. 3.2). We check it where both sides are known exactly: a mixture of three
# Gaussians in 2-D, $q(x_0) = \sum_k \pi_k\,\mathcal N(m_k, s_k^2 I)$. Each component stays Gaussian under Eq. 4,
# so $q_t(x) = \sum_k \pi_k\,\mathcal N(x; \sqrt{\bar\alpha_t}\,m_k, v_k I)$ with $v_k = \bar\alpha_t s_k^2 + 1 - \bar\alpha_t$,
# and given the component $k$, $\mathbb E[x_0 \mid x_t, k] = m_k + \frac{\sqrt{\bar\alpha_t}\,s_k^2}{v_k}(x_t - \sqrt{\bar\alpha_t}\,m_k)$.
# Weighting by the responsibilities $r_k(x_t) = p(k \mid x_t)$ gives $\mathbb E[x_0 \mid x_t]$, and
# $\mathbb E[\epsilon \mid x_t] = (x_t - \sqrt{\bar\alpha_t}\,\mathbb E[x_0 \mid x_t]) / \sqrt{1-\bar\alpha_t}$.

# %%
mixture = {
    "weights": torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),  # pi_k
    "means": torch.tensor([[-0.6, -0.3], [0.5, 0.5], [0.5, -0.6]], dtype=torch.float64),  # m_k, (K, 2)
    "stds": torch.tensor([0.2, 0.1, 0.15], dtype=torch.float64),  # s_k
}


def component_log_densities(x, ab, mixture):
    """log pi_k + log N(x; sqrt(ab) m_k, v_k I) for x (N, 2): returns (N, K) and the variances v_k (K,)."""
    v = ab * mixture["stds"] ** 2 + 1 - ab
    sq = ((x[:, None, :] - math.sqrt(ab) * mixture["means"]) ** 2).sum(-1)  # (N, K)
    return mixture["weights"].log() - sq / (2 * v) - torch.log(2 * math.pi * v), v


def log_q_t(x, ab, mixture):
    """log q_t(x) of the noised mixture, (N,)."""
    return torch.logsumexp(component_log_densities(x, ab, mixture)[0], dim=1)


def optimal_eps(x, ab, mixture):
    """E[eps | x_t = x] in closed form, (N, 2)."""
    log_joint, v = component_log_densities(x, ab, mixture)
    r = torch.softmax(log_joint, dim=1)  # responsibilities p(k | x_t), (N, K)
    x0_given_k = mixture["means"] + (math.sqrt(ab) * mixture["stds"] ** 2 / v)[:, None] * (x[:, None, :] - math.sqrt(ab) * mixture["means"])
    x0_mean = (r[..., None] * x0_given_k).sum(1)  # E[x_0 | x_t], (N, 2)
    return (x - math.sqrt(ab) * x0_mean) / math.sqrt(1 - ab)


# %% [markdown]
# The score by automatic differentiation of $\log q_t$, against $-\epsilon^*/\sqrt{1-\bar\alpha_t}$, at several noise levels:

# %%
x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_()
worst = 0.0
for t in [0, 10, 50, 200, 600, 999]:
    ab = diffusion.alphas_cumprod[t].item()
    (score,) = torch.autograd.grad(log_q_t(x, ab, mixture).sum(), x)
    eps_as_score = -optimal_eps(x.detach(), ab, mixture) / math.sqrt(1 - ab)
    worst = max(worst, ((score - eps_as_score).abs().max() / score.abs().max()).item())
    print(f"t={t:4d}  bar-alpha={ab:.4f}  max |score - (-eps*/sqrt(1 - bar-alpha))| = {(score - eps_as_score).abs().max().item():.2e}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("the optimal noise predictor is the scaled score at every t:", worst < 1e-9)

# %% [markdown]
# The score field $-\epsilon^*/\sqrt{1-\bar\alpha_t}$ over the density $q_t$: at small $t$ it points sharply into each
# component; as $t$ grows the mixture melts into one broad Gaussian and the field into a gentle pull towards the
# centre. Sampling follows these arrows from right to left.

# %%
grid = torch.linspace(-1.6, 1.6, 161, dtype=torch.float64)
gx, gy = torch.meshgrid(grid, grid, indexing="xy")
points = torch.stack([gx.flatten(), gy.flatten()], dim=1)  # (161*161, 2)
fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
for ax, t in zip(axes, [0, 40, 150, 400]):
    ab = diffusion.alphas_cumprod[t].item()
    density = log_q_t(points, ab, mixture).exp().view(161, 161)
    ax.contourf(gx, gy, density.sqrt(), levels=30, cmap="Blues")  # sqrt: the faint components stay visible
    score = (-optimal_eps(points, ab, mixture) / math.sqrt(1 - ab)).view(161, 161, 2)
    ax.streamplot(grid.numpy(), grid.numpy(), score[..., 0].numpy(), score[..., 1].numpy(), color="k", density=0.9, linewidth=0.6, arrowsize=0.8)
    ax.set_title(rf"index t = {t}, $\bar\alpha_t$ = {ab:.3f}")
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle(r"$q_t$ and its score $\nabla\log q_t = -\epsilon^*/\sqrt{1-\bar\alpha_t}$");

# %% [markdown]
# ## Summary
#
# - The honest objective is the variational bound $L = L_T + \sum_{t>1} L_{t-1} + L_0$ on $-\log p_\theta(x_0)$ (Eq. 5);
#   $L_T$ has no parameters and is negligible with the paper's schedule.
# - Every $L_{t-1}$ is a KL between Gaussians: the posterior of Eq. 7 (completing the square) against the model's
#   step. With a fixed variance and the $\epsilon$-parameterisation it is a weighted noise-prediction error (Eq. 12).
# - $L_0$ is a discretised Gaussian over the 256 pixel values with open-ended edge bins (Eq. 13).
# - $L_\text{simple}$ (Eq. 14) sets every weight $w_t$ to 1: better samples (FID 3.17 against 13.51), worse likelihood
#   ($\le 3.75$ against $\le 3.70$ bits/dim on CIFAR-10).
# - The bound of a real model is measured in bits/dim; most of it sits in $L_0$ and the first steps.
# - The optimal $\epsilon_\theta$ is $-\sqrt{1-\bar\alpha_t}$ times the score of $q_t$: the loss is denoising score matching.
#
# ## Exercises
#
# Each exercise has a cell for your answer and a cell that checks it. The next cell loads all that the exercises use,
# so that they run on their own, without the cells above.

# %%
import math

import torch

from ddpm_lib import GaussianDiffusion, make_betas
from ddpm_lib.data import from_uint8, load_dataset
from ddpm_lib.bound import discretized_gaussian_log_likelihood, eps_weights, prior_bpd

LN2 = math.log(2.0)
x0 = from_uint8(load_dataset("toy_cars", image_size=32, split="test", num_images=64).images)  # (64, 3, 32, 32): the held-out cars
torch.manual_seed(0);

# %% [markdown]
# **Exercise 1.** Compute the weights $w_t$ of Eq. 12 for $\sigma_t^2 = \beta_t$ (`"fixed_large"`) by hand, as a float64
# tensor `weights_large` of shape `(1000,)`, for the linear schedule with $T = 1000$. *Hint:* with $\sigma_t^2 = \beta_t$ one
# $\beta_t$ cancels.

# %% nbgrader={"grade": false, "grade_id": "ex1-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
betas = make_betas("linear", 1000)
### BEGIN SOLUTION
alphas_cumprod = torch.cumprod(1 - betas, dim=0)
weights_large = betas / (2 * (1 - betas) * (1 - alphas_cumprod))
### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex1-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
expected = eps_weights(GaussianDiffusion(make_betas("linear", 1000), "fixed_large"))
assert weights_large.shape == (1000,), f"weights_large should have shape (1000,), got {tuple(weights_large.shape)}"
assert torch.allclose(weights_large.double(), expected, rtol=1e-9), "weights_large differs from eps_weights for fixed_large"

# %% [markdown]
# **Exercise 2.** The linear schedule keeps $\beta$ from $10^{-4}$ to $0.02$ whatever $T$ is (notebook 01). Find
# `smallest_T`, the smallest $T$ in `range(100, 1001, 50)` for which $L_T$ costs less than $10^{-3}$ bits/dim on average
# over the 64 held-out cars `x0`. *Hint:* `prior_bpd`.

# %% nbgrader={"grade": false, "grade_id": "ex2-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
smallest_T = next(T for T in range(100, 1001, 50) if prior_bpd(GaussianDiffusion(make_betas("linear", T)), x0).mean() < 1e-3)
### END SOLUTION
print("smallest T:", smallest_T)

# %% nbgrader={"grade": true, "grade_id": "ex2-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
prior_of = lambda T: prior_bpd(GaussianDiffusion(make_betas("linear", T)), x0).mean().item()  # L_T in bits/dim
assert smallest_T in range(100, 1001, 50), "smallest_T must be one of range(100, 1001, 50)"
assert prior_of(smallest_T) < 1e-3, f"with T={smallest_T}, L_T is {prior_of(smallest_T):.2e} bits/dim, not below 1e-3"
assert smallest_T == 100 or prior_of(smallest_T - 50) >= 1e-3, f"T={smallest_T - 50} already has L_T below 1e-3: look for a smaller T"

# %% [markdown]
# **Exercise 3.** A pixel of value exactly $x_0 = 1$ (white) and a decoder with mean $\mu = 0.99$ and $\sigma = 0.01$.
# Compute `p_white`, the probability the decoder gives this pixel (Eq. 13), with `torch.distributions.Normal` only,
# and `bits_white`, its cost in bits.

# %% nbgrader={"grade": false, "grade_id": "ex3-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
decoder = torch.distributions.Normal(torch.tensor(0.99, dtype=torch.float64), torch.tensor(0.01, dtype=torch.float64))
p_white = 1 - decoder.cdf(torch.tensor(1 - 1 / 255, dtype=torch.float64))  # the last bin runs to +inf
bits_white = -torch.log2(p_white)
### END SOLUTION
print(f"p = {float(p_white):.4f}, {float(bits_white):.3f} bits")

# %% nbgrader={"grade": true, "grade_id": "ex3-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
log_p = discretized_gaussian_log_likelihood(torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.99, dtype=torch.float64), torch.tensor(math.log(0.01), dtype=torch.float64))
assert abs(float(p_white) - log_p.exp().item()) < 1e-9, "p_white is not the probability of the last bin; remember that it is open-ended"
assert abs(float(bits_white) - (-log_p.item() / LN2)) < 1e-6, "bits_white should be -log2(p_white)"


# %% [markdown]
# **Exercise 4.** For one-dimensional data $x_0 \sim \mathcal N(m, s^2)$, $q_t$ is Gaussian too. Write
# `gaussian_score(x, ab, m, s)`, the score $\nabla_x \log q_t(x)$ in closed form, and `gaussian_optimal_eps(x, ab, m, s)`,
# $\mathbb E[\epsilon \mid x_t = x]$, using Tweedie's formula (Section 6). Both take a float64 tensor `x` and floats
# ($\bar\alpha_t$ = `ab`) and return a tensor of the shape of `x`. The check compares the first with automatic
# differentiation of $\log q_t$, and the second with the straight line that predicts $\epsilon$ from $x_t$ with the least
# squared error on simulated pairs $(x_t, \epsilon)$: the minimiser of Eq. 14's error, which for Gaussian data is a line.

# %% nbgrader={"grade": false, "grade_id": "ex4-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def gaussian_score(x, ab, m, s):
    return -(x - math.sqrt(ab) * m) / (ab * s**2 + 1 - ab)


def gaussian_optimal_eps(x, ab, m, s):
    return -math.sqrt(1 - ab) * gaussian_score(x, ab, m, s)


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex4-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
xs = torch.linspace(-3, 3, 101, dtype=torch.float64, requires_grad=True)
g = torch.Generator().manual_seed(0)
for ab_, m_, s_ in [(0.99, 0.3, 0.2), (0.5, -0.5, 0.5), (0.01, 1.0, 0.1)]:
    q_t = torch.distributions.Normal(math.sqrt(ab_) * m_, math.sqrt(ab_ * s_**2 + 1 - ab_))
    (autograd_score,) = torch.autograd.grad(q_t.log_prob(xs).sum(), xs)
    assert torch.allclose(gaussian_score(xs.detach(), ab_, m_, s_), autograd_score, atol=1e-9), f"gaussian_score is wrong at ab={ab_}"
    # simulate Eq. 4 and fit eps ~ a x_t + b by least squares: the squared error's minimiser among straight lines
    x0_ = m_ + s_ * torch.randn(200_000, generator=g, dtype=torch.float64)
    eps_ = torch.randn(200_000, generator=g, dtype=torch.float64)
    x_t_ = math.sqrt(ab_) * x0_ + math.sqrt(1 - ab_) * eps_
    design = torch.stack([x_t_, torch.ones_like(x_t_)], dim=1)  # (N, 2)
    fitted = design @ torch.linalg.lstsq(design, eps_[:, None]).solution[:, 0]
    rms = (gaussian_optimal_eps(x_t_, ab_, m_, s_) - fitted).pow(2).mean().sqrt().item()
    assert rms < 0.02, f"at ab={ab_}, gaussian_optimal_eps is {rms:.3f} (RMS) from the least-squares predictor of eps from x_t"
