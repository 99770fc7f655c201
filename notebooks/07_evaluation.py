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
# # 07 · Evaluation: measuring a generative model
#
# **Goal.** Notebook 06 ended with a question the eye cannot settle: which sampler draws the best cars for its cost?
# This notebook answers it with measurements, and asks whether bf16 sampling or clipping costs quality. First the
# tools: what FID, KID, precision/recall, class coverage and bits/dim each measure, and how each one fails. Then the
# answers, each with its noise. It also takes a first, short look at EMA against raw weights and linear against cosine
# schedule; notebook 08 measures those properly.
#
# **The model.** `DDPM_MODEL` (`ddpm_lib/weights/ddpm_toy_cars_32.pt`): the paper's DDPM ($\epsilon$-prediction,
# linear schedule, $T = 1000$) on the `small` U-Net with attention at 16x16, 1,600 steps of notebook 05's recipe
# (`--preset ddpm`); the study of section 5 measured it, and section 5.2 samples it live.
#
# **You will:** compute FID, KID and precision/recall by hand and check them against `ddpm_lib.metrics`; spoil real
# images in known ways and see which metric notices what; watch FID's bias shrink as the sample count grows; then read
# the evaluation study and choose the sampler the command line should use by default.
#
# **Deviations from the literature.** The features come from the toy-cars feature network of `ddpm_lib.features`
# (128 numbers per image), not from InceptionV3 (2048), so our FIDs compare with each other and with the real-vs-real
# baseline, never with published ones. The sample sets hold tens to hundreds of images, not 50,000: every figure carries
# its spread, and FIDs are compared only at equal sample counts.
#
# **Where the numbers come from.** Sections 1-4 compute everything live, in a minute or two. Section 5 needs thousands
# of sampled images and two training runs, about 35 minutes of one CPU core, so it reads `benchmarks/eval_study.json`,
# written by `OMP_NUM_THREADS=1 python benchmarks/eval_study.py` (the next cell prints where and when it ran).

# %%
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from ddpm_lib.checkpoints import DDPM_MODEL, load_ema_model
from ddpm_lib.data import from_uint8, load_dataset, to_uint8
from ddpm_lib.features import load_feature_extractor
from ddpm_lib.metrics import (class_tv, compute_features, evaluate_samples, frechet_distance, kernel_distance, knn_radii,
                              precision_recall, reference_features)
from ddpm_lib.plotting import show_images
from ddpm_lib.sampling import generate

from ddpm_lib.checks import env_flag

FAST = env_flag("DDPM_FAST")
ASSETS = Path("../assets")
STUDY = json.loads(Path("../benchmarks/eval_study.json").read_text())
N_REF = 500 if FAST else 5000  # reference: the first N_REF train images (the study used 5,000)
N_LIVE = 100 if FAST else 500  # images per live set
meta = STUDY["meta"]
print(f"study: {meta['date'][:10]}, {meta['seconds'] / 60:.0f} min on {meta['machine']}, torch {meta['torch']}")
print(f"       {meta['command']}")

# %% [markdown]
# ## 1. The feature space
#
# Every metric below compares two *sets* of images, a reference of real ones and a candidate set, through the eyes of a
# network: each image $x$ becomes a feature vector $\phi(x) \in \mathbb R^{128}$, the globally pooled last convolution of
# a small CNN trained to recognise the six body types and to regress the other drawing parameters of each car (colours,
# position, proportions), so that its features see the sky and the paint as well as the shape. The reference is the
# first 5,000 training images; the held-out *test* images play the perfect generator.

# %%
net = load_feature_extractor()
reference = reference_features("toy_cars", 32, N_REF, net, "train")  # FeatureSet: features (N, 128) float64, labels (N,)
test = load_dataset("toy_cars", 32, "test", num_images=3 * N_LIVE)
held_out = compute_features(test.images[:N_LIVE], net)
print(f"feature network: held-out body-type accuracy {net.test_accuracy:.3f}; reference {tuple(reference.features.shape)}, "
      f"held-out {tuple(held_out.features.shape)}")

# %% [markdown]
# ## 2. The metrics, by hand
#
# ### FID: two Gaussians, one distance
#
# Fit a Gaussian to each feature set (mean $\mu$, covariance $\Sigma$) and take the Fréchet (2-Wasserstein) distance
# between the two (Heusel et al. 2017, Eq. 6):
#
# $$\mathrm{FID} = \lVert\mu_r-\mu_g\rVert_2^2 + \operatorname{Tr}\!\Big(\Sigma_r+\Sigma_g-2\big(\Sigma_r\Sigma_g\big)^{1/2}\Big).$$
#
# The trace of the matrix square root needs no square root of a matrix: the eigenvalues of $\Sigma_r\Sigma_g$ are those of
# the symmetric $\Sigma_r^{1/2}\Sigma_g\Sigma_r^{1/2}$, real and non-negative, and $\operatorname{Tr}(\Sigma_r\Sigma_g)^{1/2}$ is the sum of
# their square roots. **How it fails:** it sees only two moments, so distributions that differ beyond them can score 0;
# one number mixes fidelity and diversity; and it is biased upward at a finite sample count (section 4).

# %%
def fid_by_hand(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID of feature sets (N, F) and (M, F), float64."""
    mu_r, mu_g = real.mean(0), fake.mean(0)
    cov_r, cov_g = torch.cov(real.T), torch.cov(fake.T)  # unbiased (N - 1), as torchmetrics
    eigenvalues = torch.linalg.eigvals(cov_r @ cov_g).real.clamp(min=0)
    return ((mu_r - mu_g).square().sum() + cov_r.trace() + cov_g.trace() - 2 * eigenvalues.sqrt().sum()).item()


fid_hand = fid_by_hand(reference.features, held_out.features)
fid_lib = frechet_distance(reference.features, held_out.features)
print(f"FID(reference, held-out): by hand {fid_hand:.6f}, ddpm_lib.metrics (torchmetrics) {fid_lib:.6f}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("FID by hand == library (relative 1e-6):", abs(fid_hand - fid_lib) <= 1e-6 * max(1.0, abs(fid_lib)))

# %% [markdown]
# ### KID: an unbiased kernel distance
#
# KID (Bińkowski et al. 2018) is the squared maximum mean discrepancy with the cubic polynomial kernel
# $k(x, y) = (x^\top y / d + 1)^3$, estimated without bias from $m$ real and $n$ generated features:
#
# $$\mathrm{KID} = \frac{1}{m(m-1)}\sum_{i\neq j} k(x_i, x_j) + \frac{1}{n(n-1)}\sum_{i\neq j} k(y_i, y_j) - \frac{2}{mn}\sum_{i,j} k(x_i, y_j).$$
#
# Its expectation is the population MMD$^2$, exactly 0 for two sets from one distribution *at any sample count*, so it
# has no small-$N$ bias (and can come out negative). torchmetrics averages it over random subsets of both sets; on two
# sets of equal size $m$ with subsets of size $m$, every subset is the whole set and the average is the formula above.

# %%
def kid_by_hand(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic kernel of feature sets (m, d) and (n, d)."""
    d, m, n = x.shape[1], len(x), len(y)
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    return ((k_xx.sum() - k_xx.diag().sum()) / (m * (m - 1)) + (k_yy.sum() - k_yy.diag().sum()) / (n * (n - 1))
            - 2 * k_xy.mean()).item()


real_m = reference.features[:N_LIVE]
kid_hand = kid_by_hand(real_m, held_out.features)
kid_lib, _ = kernel_distance(real_m, held_out.features, subsets=1, subset_size=N_LIVE)
print(f"KID(reference[:{N_LIVE}], held-out): by hand {kid_hand:.6f}, library {kid_lib:.6f}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("KID by hand == library (1e-9):", abs(kid_hand - kid_lib) < 1e-9)

# %% [markdown]
# ### Precision and recall: two manifolds of k-NN balls
#
# Kynkäänniemi et al. (2019) approximate the support of each set by the union of balls around its points, each ball
# reaching the point's $k$-th nearest neighbour in its own set ($k = 3$). A feature $\phi$ is *inside* a set $\Phi$ when
# some ball covers it (Eqs. 1-2):
#
# $$f(\phi, \Phi) = \mathbb 1\Big[\exists\,\phi' \in \Phi:\ \lVert\phi - \phi'\rVert_2 \le \lVert\phi' - \mathrm{NN}_k(\phi', \Phi)\rVert_2\Big],$$
#
# $$\text{precision} = \frac{1}{|\Phi_g|}\sum_{\phi_g \in \Phi_g} f(\phi_g, \Phi_r), \qquad \text{recall} = \frac{1}{|\Phi_r|}\sum_{\phi_r \in \Phi_r} f(\phi_r, \Phi_g).$$
#
# Precision is the share of samples that look real (fidelity), recall the share of real images that some sample
# resembles (diversity). **How they fail:** one outlier grows a huge ball that can swallow many points; the radii
# shrink as the sets grow, so both depend on $N$ and $k$ and are compared at equal set sizes.

# %%
def inside(points: torch.Tensor, support: torch.Tensor, k: int = 3) -> torch.Tensor:
    """f(phi, Phi) for each of points (M, F) against support (N, F): bool (M,)."""
    d_support = torch.cdist(support, support)
    d_support.fill_diagonal_(math.inf)  # a point is not its own neighbour
    radii = d_support.kthvalue(k, dim=1).values  # (N,)
    return (torch.cdist(points, support) <= radii).any(dim=1)


fake_m = held_out.features
pr_hand = (inside(fake_m, real_m).double().mean().item(), inside(real_m, fake_m).double().mean().item())
pr_lib = precision_recall(real_m, fake_m, k=3)
print(f"precision, recall: by hand {pr_hand[0]:.4f}, {pr_hand[1]:.4f}; library {pr_lib[0]:.4f}, {pr_lib[1]:.4f}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("precision and recall by hand == library:", pr_hand == pr_lib)

# %% [markdown]
# ### Class coverage, and the likelihood
#
# The feature network also classifies, so each set has a histogram of body types. `class_tv` is the total-variation
# distance between the histograms of the samples, $p_g$, and of the reference, $p_r$:
# $\mathrm{TV} = \tfrac12\sum_c |p_g(c) - p_r(c)|$, between 0 and 1. It catches a model that drops or over-draws a body type and is
# blind to everything else. Both sides are classified by the same network, so its rare mistakes count on both.
#
# **Bits/dim** is the other kind of measure: the variational bound of notebook 03 on $-\log p_\theta(x_0)$ of held-out
# images. It needs no samples and no feature network, and it answers a different question, how much probability the
# model puts on real images, not how real its samples look; the two can disagree (Theis et al. 2016). Section 5.5 shows
# where the bound's mass sits.
#
# ## 3. Which metric notices what
#
# Spoil held-out images in known ways and score each set against the reference with `evaluate_samples`, which adds the
# spread (std over bootstrap resamples). One more measure joins them, for a defect the series has met: the **grain** left
# in DDIM samples at $\eta = 0$ (notebook 06). The mask $M$ below (Immerkær 1996) is a second difference along the rows
# times a second difference along the columns: it returns 0 on flat regions, on ramps and on anything that changes along
# one axis only (a horizon, a road), and on i.i.d. noise of std $s$ its response has std $\lVert M\rVert_F\,s = 6s$. The toy
# cars are flat-shaded, so the median response, rescaled, estimates the noise left in an image, ignoring the few pixels
# on edges:
#
# $$M = \begin{pmatrix}1 & -2 & 1\\ -2 & 4 & -2\\ 1 & -2 & 1\end{pmatrix}, \qquad \hat s = \frac{\operatorname{median}\,\lvert M * x\rvert}{6 \cdot 0.6745}.$$

# %%
NOISE_MASK = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def noise_level(images: torch.Tensor) -> torch.Tensor:
    """Estimated std of the pixel noise of each image (N, 3, H, W) in [-1, 1]: (N,)."""
    x = images.float()
    response = F.conv2d(x, NOISE_MASK.view(1, 1, 3, 3).repeat(3, 1, 1, 1), groups=3)
    return response.abs().flatten(1).median(dim=1).values / (6 * 0.6745)


flat = torch.zeros(64, 3, 32, 32)
s_hat = noise_level(flat + 0.1 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(0)))
print(f"noise of std 0.1 on a flat image: estimated {s_hat.mean():.4f} ± {s_hat.std():.4f}; clean test images: "
      f"{noise_level(from_uint8(test.images[:N_LIVE])).mean():.4f}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("the estimate recovers a known noise std within 3%:", abs(s_hat.mean().item() - 0.1) < 0.003)

# %% [markdown]
# Five sets of `N_LIVE` images: the held-out images as they are; blurred (Gaussian, $\sigma$ = 1 px); colour-shifted (red
# up and blue down by 0.2 of the $[-1, 1]$ range); with Gaussian noise of std 0.1; and with three of the six body types
# dropped (held-out sedans, hatchbacks and SUVs only).

# %%
x_test = from_uint8(test.images)  # (3 N_LIVE, 3, 32, 32) in [-1, 1]
x_real = x_test[:N_LIVE]
g = torch.Generator().manual_seed(1)
sets = {
    "real": x_real,
    "blurred": TF.gaussian_blur(x_real, kernel_size=5, sigma=1.0),
    "colour-shifted": (x_real + torch.tensor([0.2, 0.0, -0.2]).view(1, 3, 1, 1)).clamp(-1, 1),
    "noisy": (x_real + 0.1 * torch.randn(x_real.shape, generator=g)).clamp(-1, 1),
    "3 types dropped": x_test[test.labels < 3][:N_LIVE],
}
show_images(torch.cat([x[:10] for x in sets.values()]), nrow=10, title=" | ".join(sets), scale=1.2);

# %%
live = {}
for name, x in sets.items():
    scores = evaluate_samples(x, reference, net, bootstrap=10)
    scores["grain"] = noise_level(from_uint8(to_uint8(x))).mean().item()  # as saved: rounded to uint8
    live[name] = scores
print(f"{'set':16s} {'FID':>13s} {'KID':>7s} {'precision':>13s} {'recall':>13s} {'class_tv':>13s} {'grain':>7s}")
for name, s in live.items():
    sd = s["spread"]
    print(f"{name:16s} {s['fid']:6.2f} ± {sd['fid']:4.2f} {s['kid_mean']:7.3f} {s['precision']:6.3f} ± {sd['precision']:.3f} "
          f"{s['recall']:6.3f} ± {sd['recall']:.3f} {s['class_tv']:6.3f} ± {sd['class_tv']:.3f} {s['grain']:7.4f}")


# %%
def bar_panel(ax, names, values, errors, title, reference_value=None):
    ax.bar(range(len(names)), values, yerr=errors, capsize=3, color=[f"C{i}" for i in range(len(names))])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_title(title)
    if reference_value is not None:
        ax.axhline(reference_value, color="k", lw=0.8, ls="--")


names = list(live)
fig, axes = plt.subplots(1, 5, figsize=(18, 3.6))
for ax, key in zip(axes, ["fid", "precision", "recall", "class_tv"]):
    bar_panel(ax, names, [live[n][key] for n in names], [live[n]["spread"][key] for n in names], key, live["real"][key])
bar_panel(axes[4], names, [live[n]["grain"] for n in names], None, "grain (noise std)")
fig.suptitle(f"{N_LIVE} images per set against {N_REF} reference images; error bars: bootstrap std; dashed: the real set")
fig.tight_layout();

# %% [markdown]
# Read the table and the bars column by column (the cell below checks each claim on this run). FID rises for every
# defect, so it tells *that* something is wrong, not *what*. Blur and noise throw the images off the real manifold
# (precision below 0.2) and even scramble the body-type counts the network reads (`class_tv` well above the real
# set's); only the noise registers as grain. Dropping body types leaves precision near the real set's (every image is
# a real car) but costs recall and sends `class_tv` to about 0.5, the value for a generator that draws three of six
# equally common types, each twice as often: a mode-dropping generator in one line. The colour shift, which a viewer
# might not notice, costs precision and recall, because the feature network was trained to see colour; its `class_tv`
# stays near the real set's, since every car keeps its body type. Keep these bars in mind in section 5: a model's
# samples can fail in several of these ways at once.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
spoiled = [n for n in live if n != "real"]
print("the real set has the lowest FID:", all(live["real"]["fid"] < live[n]["fid"] for n in spoiled))
print("dropping types costs recall and class_tv, not precision:",
      live["3 types dropped"]["recall"] < live["real"]["recall"] - 0.2 and live["3 types dropped"]["class_tv"] > 0.3
      and live["3 types dropped"]["precision"] > live["real"]["precision"] - 0.1)
print("the grain measure flags the noisy set only:", max(spoiled, key=lambda n: live[n]["grain"]) == "noisy")
print("blur and noise: precision below 0.2, class_tv above twice the real set's:",
      all(live[n]["precision"] < 0.2 and live[n]["class_tv"] > 2 * live["real"]["class_tv"] for n in ("blurred", "noisy")))
print("the colour shift costs precision and recall, not class_tv:",
      live["colour-shifted"]["precision"] < live["real"]["precision"] - 0.1
      and live["colour-shifted"]["recall"] < live["real"]["recall"] - 0.1
      and live["colour-shifted"]["class_tv"] < live["real"]["class_tv"] + 0.1)

# %% [markdown]
# ## 4. How noisy is one number
#
# ### FID's bias falls like $1/N$
#
# Score real held-out images against the reference at several sample counts $N$. A perfect generator would get FID 0,
# but the covariance of $N$ samples is noisy, and that noise adds to the trace term on average: FID is biased upward,
# roughly in proportion to $1/N$ (Chong & Forsyth 2020). Below 128 images the sample covariance is even singular. KID is
# unbiased: its mean stays at 0 at every $N$, while its spread grows as $N$ shrinks. (Error bars: the std over random
# subsets of the held-out images.)

# %%
pool = compute_features(test.images, net).features  # 3 N_LIVE held-out features
counts = [25, 50, 100, 200] if FAST else [50, 100, 200, 500, 1000]
repeats = 5 if FAST else 10
sweep = {}
for n in counts:
    fids, kids = [], []
    for r in range(repeats):
        subset = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(100 * n + r))[:n]]
        fids.append(frechet_distance(reference.features, subset))
        kids.append(kernel_distance(reference.features, subset, subsets=20, seed=r)[0])
    sweep[n] = (np.mean(fids), np.std(fids), np.mean(kids), np.std(kids))
    print(f"N = {n:5d}: FID {sweep[n][0]:6.2f} ± {sweep[n][1]:.2f}   KID {sweep[n][2]:+.4f} ± {sweep[n][3]:.4f}")

# %%
inv_n = np.array([1 / n for n in counts])
fid_mean = np.array([sweep[n][0] for n in counts])
slope, intercept = np.polyfit(inv_n, fid_mean, 1)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
axes[0].errorbar(inv_n, fid_mean, yerr=[sweep[n][1] for n in counts], fmt="o", capsize=3, label="real vs real")
grid_inv = np.linspace(0, inv_n.max(), 50)
axes[0].plot(grid_inv, intercept + slope * grid_inv, "k--", lw=1, label=f"fit: {intercept:.2f} + {slope:.0f}/N")
axes[0].set_xlabel("1 / N")
axes[0].set_ylabel("FID")
axes[0].legend()
axes[0].set_title("FID of real held-out images: biased at small N")
axes[1].errorbar(counts, [sweep[n][2] for n in counts], yerr=[sweep[n][3] for n in counts], fmt="o", capsize=3, color="C1")
axes[1].axhline(0, color="k", lw=0.8)
axes[1].set_xscale("log")
axes[1].set_xlabel("N")
axes[1].set_title("KID of the same sets: unbiased")
fig.tight_layout();

# %% [markdown]
# So a FID is only meaningful beside another at the same $N$, ideally beside the real-vs-real baseline at that $N$. The
# study scores every sample set so, and rows of different sizes are never compared by their FID.

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("real-vs-real FID falls as N grows:", bool(np.all(np.diff(fid_mean) < 0)))

# %% [markdown]
# ### The bootstrap spread against independent sample sets
#
# Every study figure carries the std over bootstrap resamples of its samples. Is that the real spread of a score? The
# study drew DDIM-10 sets of the same size with other seeds; their std across seeds should match the bootstrap std.

# %%
rows = STUDY["rows"]
for eta in (0.0, 1.0):
    same = [r for r in rows if r["sampler"] == "ddim" and r["steps"] == 10 and r["eta"] == eta and r["study"] in ("samplers", "seeds")]
    fids = np.array([r["fid"] for r in same])
    boot = np.mean([r["spread"]["fid"] for r in same])
    print(f"DDIM-10, eta = {eta:g}, N = {same[0]['num_samples']}: FID over seeds {np.round(fids, 2).tolist()}: "
          f"std {fids.std(ddof=1):.2f}; mean bootstrap std {boot:.2f}")

# %% [markdown]
# Over three sample sets each, FID varies with a std of 1.2 ($\eta = 0$) and 1.0 ($\eta = 1$), while the bootstrap std of
# a single set averages 2.7 and 1.7: the bootstrap errs on the side of caution (three seeds pin a std down only to within
# about ±50%, so take the factor of two loosely). The conclusions below rest on gaps of many bootstrap stds.
#
# ## 5. The measured answers
#
# Every row of the study, its sampler, its sample count and its spreads, is in `benchmarks/eval_study.json`; the
# function `pick` below selects rows from it. The reference and the baselines are those of section 1, at 5,000 reference images.

# %%
def pick(study=None, **match):
    """The study's rows whose fields equal `match` (and whose study is `study`, if given)."""
    return [r for r in rows if (study is None or r["study"] == study) and all(r.get(k) == v for k, v in match.items())]


baselines = {b["num_samples"]: b for b in STUDY["baselines"]}
sizes = meta["sizes"]
N_GRID, N_LONG = sizes["num_samples"], sizes["num_samples_long"]
print(f"{len(rows)} rows; sample counts: DDIM 10-100 {N_GRID}, DDIM-250 and DDPM-1000 {N_LONG}, training runs {sizes['num_samples_train']}; "
      f"reference {sizes['num_reference']}; {sizes['bootstrap']} bootstrap resamples")
for n, b in sorted(baselines.items()):
    print(f"real-vs-real baseline at N = {n:4d}: FID {b['fid']:.2f} ± {b['spread']['fid']:.2f}, precision {b['precision']:.3f}, "
          f"recall {b['recall']:.3f}, class_tv {b['class_tv']:.3f}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("study complete:", meta["complete"], "| rows:", len(rows), "| every row has a bootstrap spread:",
      all(r["spread"] is not None for r in rows))

# %% [markdown]
# ### 5.1 Samplers: quality against network evaluations
#
# The study's model (`DDPM_MODEL`: notebook 05's recipe, $\epsilon$-prediction, linear schedule, $T = 1000$,
# 1,600 steps) through every sampler of notebook 06: DDIM at 10, 20, 50, 100 and 250 steps with
# $\eta \in \{0, 0.5, 1\}$, and DDPM's 1000 steps with both reverse variances. Every run starts from the same noise $x_T$,
# batch by batch, so the comparisons are paired. The cost of a sample is its number of network evaluations (NFE).
# DDIM-250 and DDPM-1000 cost 2.5 and 10 times as much as DDIM-100, so they were drawn with fewer samples ($N$ = 32) and appear in the
# lower left panel beside the first 32 samples of every other run. The lower right panel is the same experiment in the DDIM paper
# (Song et al. 2021, Table 1): a CIFAR-10 model trained for 800,000 steps, 50,000 samples, Inception features.

# %%
ETA_COLOURS = {0.0: "C0", 0.5: "C2", 1.0: "C3"}
GRID_STEPS = [10, 20, 50, 100]
# DDIM Table 1 (Song et al. 2021), CIFAR-10, FID of 50,000 samples (Inception features) at 10, 20, 50, 100 steps
DDIM_TABLE1 = {0.0: [13.36, 6.84, 4.67, 4.16], 0.5: [16.66, 8.35, 5.25, 4.46], 1.0: [41.07, 18.36, 8.01, 5.78]}


def at_n(row, n):
    """The scores of the row's first n samples (the row itself when it has n)."""
    return row if row["num_samples"] == n else row["at_n"][str(n)]


def series(eta, key, steps=GRID_STEPS, n=None, study="samplers", **match):
    """Arrays (nfe, value, spread) of the DDIM rows at `eta`, scored on their first n samples (all when n is None)."""
    out = []
    for s in steps:
        (r,) = pick(study, sampler="ddim", steps=s, eta=eta, **match)
        r = r if n is None else at_n(r, n)
        out.append((s, r[key], r["spread"][key] if key in r["spread"] else r[f"{key}_sem"]))
    return np.array(out).T


fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
axes = axes.flatten()
for eta, c in ETA_COLOURS.items():
    nfe, fid, sd = series(eta, "fid")
    axes[0].errorbar(nfe, fid, yerr=sd, color=c, marker="o", capsize=3, label=rf"DDIM $\eta$ = {eta:g}")
    for key, ls in (("precision", "-"), ("recall", "--")):
        nfe, v, sd = series(eta, key)
        axes[1].errorbar(nfe, v, yerr=sd, color=c, ls=ls, marker="o", capsize=3, label=rf"{key}, $\eta$ = {eta:g}")
    nfe, fid, sd = series(eta, "fid", GRID_STEPS + [250], n=N_LONG)
    axes[2].errorbar(nfe, fid, yerr=sd, color=c, marker="o", capsize=3, label=rf"DDIM $\eta$ = {eta:g}")
    axes[3].plot(GRID_STEPS, DDIM_TABLE1[eta], color=c, marker="o", label=rf"DDIM $\eta$ = {eta:g}")
for variance, marker, x in (("fixed_small", "s", 900), ("fixed_large", "D", 1110)):  # side by side at 1000
    (r,) = pick("samplers", sampler="ddpm", variance=variance)
    axes[2].errorbar([x], [r["fid"]], yerr=[r["spread"]["fid"]], color="k", marker=marker, capsize=3, ls="none",
                     label=f"DDPM-1000, {variance}")
for ax, n in ((axes[0], N_GRID), (axes[2], N_LONG)):
    b = baselines[n]
    ax.axhspan(b["fid"] - b["spread"]["fid"], b["fid"] + b["spread"]["fid"], color="grey", alpha=0.3, label=f"real vs real, N = {n}")
for key, ls in (("precision", "-"), ("recall", "--")):
    axes[1].axhline(baselines[N_GRID][key], color="grey", ls=ls, lw=1.5, label=f"{key}, real vs real")
axes[0].set_title(f"FID, N = {N_GRID} (lower is better)")
axes[1].set_title(f"precision (solid) and recall (dashed), N = {N_GRID}")
axes[2].set_title(f"FID, N = {N_LONG}: with the long samplers")
axes[3].set_title("Song et al. 2021, Table 1: CIFAR-10, N = 50,000")
for ax in axes:
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per image")
    ax.legend(fontsize=7, ncol=2 if ax is axes[1] else 1)
for ax in (axes[0], axes[2], axes[3]):
    ax.set_ylabel("FID")
    ax.set_ylim(bottom=0)
fig.suptitle(f"Samplers of the study's toy-cars model ({meta['checkpoint_steps']:,} training steps) against the literature; "
             "error bars: bootstrap std")
fig.tight_layout()
if not FAST:
    fig.savefig(ASSETS / "eval_samplers.png", dpi=100, bbox_inches="tight")

# %%
print(f"{'sampler':24s} {'NFE':>5s} {'N':>4s} {'FID':>14s} {'KID':>7s} {'precision':>9s} {'recall':>7s} {'class_tv':>8s} {'grain':>7s} "
      f"{'ms/NFE':>7s}")
for r in pick("samplers"):
    label = f"DDPM-1000 {r['variance']}" if r["sampler"] == "ddpm" else f"DDIM-{r['steps']} eta={r['eta']:g}"
    print(f"{label:24s} {r['nfe']:5d} {r['num_samples']:4d} {r['fid']:7.2f} ± {r['spread']['fid']:4.2f} {r['kid_mean']:7.3f} "
          f"{r['precision']:9.3f} {r['recall']:7.3f} {r['class_tv']:8.3f} {r['grain']:7.4f} {r['ms_per_evaluation']:7.2f}")

# %% [markdown]
# **What the study says.** At every budget of network evaluations $\eta = 1$ gives the best samples, by a wide margin:
# FID 24.2 ± 2.4 against 44.8 ± 1.7 for $\eta = 0$ at 10 evaluations, 12.5 ± 1.3 against 31.5 ± 2.0 at 100, with
# $\eta = 0.5$ in between and nearer to $\eta = 0$. Precision agrees (at 50 steps 0.49 of the $\eta = 1$ samples fall inside
# the real manifold, 0.19 of the $\eta = 0$ ones), and so do KID and `class_tv`. More steps help at every $\eta$, with
# diminishing returns: at $\eta = 1$ FID goes 24.2, 17.5, 15.6, 12.5 from 10 to 100 evaluations; at $\eta = 0$ it levels off
# near 31 from 50 steps on.
#
# At $N = 32$ (lower left) the real-vs-real FID alone is 15.5 ± 6.3, so FID cannot rank DDIM at $\eta = 1$ from 20 steps
# up, DDIM-250 (16.3 ± 3.1) and DDPM-1000 (20.3 ± 4.0) against one another; it still separates $\eta = 0$ from $\eta = 1$ at
# every step count. DDPM's two reverse variances score the same from the same noise (20.26 and 20.36), as Ho et al. found,
# and ten times the cost of DDIM-100 buys nothing measurable. Precision is near 1 for every set at $N = 32$: with 32
# reference points the k-NN balls are wide, so precision and recall, like FID, compare only at equal $N$.
#
# A check across sample counts: the README scores DDIM-50 at $\eta = 1$ with $N$ = 1,000 (FID 12.11, real vs real 0.38).
# If the small-sample bias adds, the difference of the two baselines (3.73 − 0.38) predicts 15.5 at $N$ = 128; the study
# measures 15.59 ± 1.79.
#
# **Against the paper.** The lower right panel is the reverse picture. On CIFAR-10, Song et al. found $\eta = 0$ best at every
# budget from 10 to 100 steps and $\eta = 1$ far worse at few steps (41.07 against 13.36 at 10 steps); for this model
# $\eta = 1$ wins everywhere. Sections 5.2 and 5.3 look for the reason.
#
# ### 5.2 Grain: what $\eta$ does to the samples
#
# The grain measure of section 3 puts a number on what notebook 06 showed: DDIM at $\eta = 0$ leaves noise in its samples,
# a std of 0.036 at 10 steps (4.6 of 255 grey levels) and still 0.019 at 100, where $\eta = 1$ leaves 0.009 and 0.005 and
# the flat-shaded data 0. A deterministic sampler follows $\epsilon_\theta$ all the way down, so whatever noise the network
# fails to predict stays in the image. A stochastic step (Eq. 12 with $\sigma > 0$) replaces part of the predicted noise
# with fresh Gaussian noise, the kind the network was trained to remove, and the later steps remove it. Karras et al.
# (2022, Sec. 4) describe this as stochasticity correcting the errors of earlier steps, worth most where the network is
# least accurate.

# %%
fig, ax = plt.subplots(figsize=(6, 3.6))
for eta, c in ETA_COLOURS.items():
    nfe, v, sem = series(eta, "grain")
    ax.errorbar(nfe, v, yerr=sem, color=c, marker="o", capsize=3, label=rf"DDIM $\eta$ = {eta:g}")
ax.axhline(baselines[N_GRID]["grain"], color="grey", label="real images")
ax.set_xscale("log")
ax.set_xlabel("network evaluations per image")
ax.set_ylabel("noise std left (grain)")
ax.set_title(f"grain of the samples (N = {N_GRID}; error bars: standard error)")
ax.legend(fontsize=8);

# %% [markdown]
# The same noise through DDIM-10 and DDIM-50 at $\eta = 0$ and $\eta = 1$, live: the grain shows in the skies of the
# $\eta = 0$ rows.

# %%
model, diffusion, config = load_ema_model(DDPM_MODEL)  # the model the study measured
k = 4 if FAST else 8
x_T = torch.randn(k, 3, 32, 32, generator=torch.Generator().manual_seed(7))
settings = [(10, 0.0), (10, 1.0)] if FAST else [(10, 0.0), (10, 1.0), (50, 0.0), (50, 1.0)]
fig, axes = plt.subplots(len(settings), 1, figsize=(k * 1.1, 1.3 * len(settings)))
for ax, (steps, eta) in zip(axes, settings):
    out = generate(model, diffusion, k, 32, num_steps=steps, eta=eta, x_T=x_T, seed=0)
    grain = noise_level(from_uint8(to_uint8(out.images))).mean().item()
    show_images(out.images, nrow=k, ax=ax)
    ax.set_title(rf"DDIM-{steps}, $\eta$ = {eta:g}: grain {grain:.3f}", fontsize=9, loc="left")
fig.tight_layout();

# %% [markdown]
# ### 5.3 Why our ranking of $\eta$ is the reverse of the paper's
#
# Three differences from Song et al.'s setting could turn the ranking around, and the study measured each one.
#
# **Precision.** The network ran in bf16 on the study's machine (measured faster there). The study sampled DDIM-50 at
# $\eta = 0$ and $\eta = 1$ in bf16 and in fp32 from the same noise and compared the pairs image by image.

# %%
for p in STUDY["precision_pairs"]:
    (a,) = pick("samplers", sampler="ddim", steps=50, eta=p["eta"])
    (b,) = pick("precision", sampler="ddim", steps=50, eta=p["eta"])
    print(f"DDIM-50, eta = {p['eta']:g}: {a['sampling_precision']} FID {a['fid']:.2f} ± {a['spread']['fid']:.2f}, grain {a['grain']:.4f} | "
          f"{b['sampling_precision']} FID {b['fid']:.2f} ± {b['spread']['fid']:.2f}, grain {b['grain']:.4f}")
    print(f"    mean |pixel difference| {p['mean_abs_pixel_difference']:.4f} (one uint8 level: {2 / 255:.4f}); "
          f"{100 * p['share_of_pixels_differing']:.1f}% of pixels differ; {b['sampling_precision']} takes {p['speedup']:.2f}x the time")

# %% [markdown]
# No. The bf16 and fp32 samples differ by 0.0018 per pixel on average, a quarter of one uint8 level (22% of the pixels
# round to a different level); FID moves by 0.19 and 0.08 against spreads of 1.8-2.0, the grain by 0.0001-0.0002 against
# 0.022 and 0.005. The grain belongs to the model, not to the arithmetic, and bf16 sampled 1.35-1.44 times faster there at
# no measurable cost.
#
# **Clipping $\hat x_0$.** The library clips the predicted $\hat x_0$ to $[-1, 1]$ at every step (`clip_denoised=True`),
# as Ho et al.'s code does; Song et al.'s DDIM update (Eq. 12) does not. The study repeated DDIM-10 and DDIM-50 without it.

# %%
for steps in (10, 50):
    for eta in (0.0, 1.0):
        (c,) = pick("samplers", sampler="ddim", steps=steps, eta=eta)
        (u,) = pick("clipping", sampler="ddim", steps=steps, eta=eta)
        print(f"DDIM-{steps:<3d} eta = {eta:g}: clipped FID {c['fid']:6.2f} ± {c['spread']['fid']:.2f}, grain {c['grain']:.4f}  |  "
              f"not clipped FID {u['fid']:6.2f} ± {u['spread']['fid']:.2f}, grain {u['grain']:.4f}")

# %% [markdown]
# Clipping is not the cause either. Without it every setting is far worse (FID 73-103 against 16-45), even in the
# body-type counts (`class_tv` 0.38-0.71; notebook 06 showed how unclipped samples drift outside $[-1, 1]$ and come out as
# flat black or white patches), and $\eta = 1$ still beats $\eta = 0$ at both step counts. This young network needs the
# clipping.
#
# **Training length.** Song et al.'s network trained for 800,000 steps; ours for 1,600. The study also trained two
# models for 135 steps, a twelfth of that (section 5.4), and sampled their EMA weights at both $\eta$. If the gap between
# $\eta = 0$ and $\eta = 1$ comes from the network's errors, it should grow as training shortens.

# %%
n_train = sizes["num_samples_train"]
gaps = []
for schedule in ("linear", "cosine"):
    (e0,) = pick("training", schedule=schedule, weights="ema", eta=0.0)
    (e1,) = pick("training", schedule=schedule, weights="ema", eta=1.0)
    gaps.append((f"{schedule}, {e1['train_steps']} steps", e0, e1))
(p0,), (p1,) = pick("samplers", sampler="ddim", steps=50, eta=0.0), pick("samplers", sampler="ddim", steps=50, eta=1.0)
gaps.append((f"linear, {meta['checkpoint_steps']:,} steps (study model)", at_n(p0, n_train), at_n(p1, n_train)))
for label, e0, e1 in gaps:
    print(f"{label:34s} DDIM-50: FID eta=0 {e0['fid']:7.2f} ± {e0['spread']['fid']:5.2f}, eta=1 {e1['fid']:7.2f} ± {e1['spread']['fid']:5.2f}; "
          f"ratio {e0['fid'] / e1['fid']:.2f}; grain {e0['grain']:.3f} vs {e1['grain']:.3f}")

# %% [markdown]
# Training length moves the picture the expected way, without settling it. The less a network has trained, the more
# $\eta = 0$ costs in absolute terms: after 135 steps FID 231 against 121 (linear) and 205 against 96 (cosine), with a grain
# of 0.37 and 0.32 against 0.06 and 0.04 (the $\eta = 0$ samples are mostly noise); after 1,600 steps 32.6 against 17.8 on
# the same 64-sample footing, grain 0.022 against 0.005. The ratio of the FIDs hardly moves, though (1.9 and 2.1, then
# 1.8), so two training lengths cannot say where $\eta = 0$ would catch up, and Song et al.'s network trained 500 times
# longer than ours. What the study does establish: bf16 and clipping are ruled out, and the grain that $\eta = 0$ leaves
# shrinks as the network learns. With this young network, the sampler that draws fresh noise is the one that sheds the
# network's errors.
#
# ### 5.4 A first look at EMA against raw weights, linear against cosine
#
# Two short runs of notebook 05's recipe (`TrainConfig.ddpm_demo()`, the recipe of the study's model), identical but for
# the schedule: the same seed, hence the same initial weights and the same batches, 135 steps each (about 4 minutes on one
# core; the study's model had 1,600). Each run is sampled from its EMA weights (decay $\min(0.999, (1+k)/(10+k))$ after
# $k$ updates) and from its raw weights, from the same noise (DDIM-50, $\eta = 1$), and its bound is measured on 32
# held-out images. One run per schedule: the bootstrap spread covers the sampling noise, not the noise of training itself.
# These runs show what the metrics and the bound do on young networks; they cannot rank the weights or the schedules.
# Notebook 08 does, with 3 seeds per recipe at equal CPU minutes (`benchmarks/ladder.json`); the end of this section
# reads its numbers.

# %%
train_rows = [r for r in pick("training") if r["eta"] == 1.0]
labels = [f"{r['schedule']}, {r['weights']}" for r in train_rows]


def bound_split(b):
    """(bits/dim over every index but the last, the last term L_{T-1}) from a row's stored per-index terms."""
    last = b["terms_mean"][-1] * b["weights"][-1]  # the estimate's share of the last evaluated index (T-1)
    return b["total"] - last, b["terms_mean"][-1]


fig, axes = plt.subplots(1, 4, figsize=(19, 3.8))
bar_panel(axes[0], labels, [r["fid"] for r in train_rows], [r["spread"]["fid"] for r in train_rows], "FID", baselines[n_train]["fid"])
bar_panel(axes[1], labels, [r["class_tv"] for r in train_rows], [r["spread"]["class_tv"] for r in train_rows], "class_tv",
          baselines[n_train]["class_tv"])
bar_panel(axes[2], labels, [bound_split(r["bits_per_dim"])[0] for r in train_rows], None, "bits/dim over t < T-1")
for r, ls in zip(train_rows, ["-", ":", "-", ":"]):
    b = r["bits_per_dim"]
    axes[3].plot(np.array(b["timesteps"]) + 1, b["terms_mean"], ls, marker="o", ms=3, label=f"{r['schedule']}, {r['weights']}")
axes[3].set_xscale("log")
axes[3].set_yscale("log")
axes[3].set_xlabel("t + 1")
axes[3].set_title("each term of the bound (bits/dim)")
axes[3].legend(fontsize=7)
fig.suptitle(f"{train_rows[0]['train_steps']} training steps each; DDIM-50, eta = 1, N = {n_train}; dashed: real vs real")
fig.tight_layout()
for r in train_rows:
    rest, last = bound_split(r["bits_per_dim"])
    print(f"{r['schedule']:6s} {r['weights']:3s} ({r['train_seconds'] / 60:.1f} min): loss {r['final_loss']:.4f}  "
          f"FID {r['fid']:6.1f} ± {r['spread']['fid']:4.1f}  KID {r['kid_mean']:5.2f}  precision {r['precision']:.3f}  recall {r['recall']:.3f}  "
          f"class_tv {r['class_tv']:.2f}  bits/dim: {rest:.2f} over t < T-1, L_T-1 {last:.2f}, estimate {r['bits_per_dim']['total']:,.2f}")

# %% [markdown]
# All four models are far from the data (FID 96-126, against 6.3 for real images at this $N$), so far that precision and
# recall are 0 for every one: not a single sample falls inside the real manifold, and these two metrics cannot rank them.
# FID, KID and `class_tv` still can, and what they show is noise more than an answer:
#
# - **EMA against raw, linear against cosine: not settled here.** With the cosine schedule the EMA weights are better
#   (FID 96 ± 2 against 126 ± 3), with the linear one slightly worse (121 ± 2 against 116 ± 1), so the two raw scores rank
#   the schedules the other way round from the two EMA scores. At step 135 the EMA's decay has only warmed up to 0.94
#   (roughly the last fifteen steps), a raw score depends on where the last step happened to land, and one run per
#   schedule cannot tell a schedule from the luck of its last steps. The cosine run's bound over every step but the last
#   is lower (4.85 against 5.52 bits/dim), one more number from one run each.
# - **The cosine schedule's last step.** Its $\beta$ is clipped at 0.999 (Nichol & Dhariwal 2021, against a singularity at
#   $t = T$), so $\alpha_{T-1} = 0.001$ and the Eq. 12 weight of the last term (notebook 03) is about 500 per unit of squared
#   noise error. These young networks have not yet learned that trivial step, and $L_{T-1}$ alone costs 21 and 19
#   bits/dim. The log-spaced estimate then interpolates linearly between indices 749 and 999, counts the last term about
#   125 times, and reports 2,698 and 2,380 bits/dim: the estimate assumes terms that change smoothly between the evaluated
#   indices, and this one does not. Under the linear schedule the last term is 0.00.
#
# **The measured answer, from notebook 08.** The same two recipes (the paper's linear schedule, and cosine), trained with
# 3 seeds each for the same CPU minutes, each seed scored from its EMA and its raw weights on 1,000 samples:

# %%
LADDER = json.loads(Path("../benchmarks/ladder.json").read_text())
ladder_fid = {}
for rung, schedule in (("paper", "linear"), ("+cosine", "cosine")):
    ends = [seed["curve"][-1] for seed in LADDER["runs"][rung]["seeds"]]  # every seed at the end of the budget
    for weights in ("ema", "raw"):
        fids = np.array([e["fid"] if weights == "ema" else e["raw"]["fid"] for e in ends])
        ladder_fid[schedule, weights] = fids.mean()
        print(f"{schedule:6s} {weights}: FID {fids.mean():5.1f} ± {fids.std(ddof=1):4.1f} (std over {len(fids)} seeds), "
              f"{ends[0]['step']} steps = {ends[0]['cpu_minutes']:.0f} CPU minutes, N = {LADDER['settings']['num_samples']:,}")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("ladder.json: EMA better than raw under both schedules:",
      all(ladder_fid[s, "ema"] < ladder_fid[s, "raw"] for s in ("linear", "cosine")),
      "| cosine better than linear (EMA):", ladder_fid["cosine", "ema"] < ladder_fid["linear", "ema"])

# %% [markdown]
# With three seeds and longer runs, the cell above prints what the 135-step runs could not show: the mean FID
# of each recipe's EMA and raw weights and their spread over seeds. Notebook 08 puts these rungs in context, with the
# other changes of the recipe.
#
# ### 5.5 Where the bound's mass sits
#
# The bits/dim of the study's model on held-out test images, term by term (Ho et al. 2020, Eq. 5), from a
# log-spaced subset of timesteps (notebook 03). Left, each term at its index; right, the bound accumulated from $t = 0$
# upwards, each evaluated term standing for the indices around it.

# %%
bpd = STUDY["bits_per_dim"]
t = np.array(bpd["timesteps"])
terms, sem, w = np.array(bpd["terms_mean"]), np.array(bpd["terms_sem"]), np.array(bpd["weights"])
cumulative = np.cumsum(terms * w) / bpd["total"]
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
axes[0].errorbar(t + 1, terms, yerr=sem, fmt="o-", ms=3, capsize=2)
axes[0].set_xscale("log")
axes[0].set_yscale("log")
axes[0].set_xlabel("t + 1 (the paper's step)")
axes[0].set_ylabel("bits/dim")
axes[0].set_title(r"$L_0$ (at 1) and each $L_{t}$")
axes[1].plot(t + 1, cumulative, "o-", ms=3)
axes[1].set_xscale("log")
axes[1].set_xlabel("t + 1")
axes[1].set_ylabel("share of the bound")
axes[1].set_title(f"cumulative: total {bpd['total']:.3f} ± {bpd['total_sem']:.3f} bits/dim ({bpd['num_images']} images)")
fig.tight_layout()
share = lambda upto: float(np.sum((terms * w)[t < upto]) / bpd["total"])  # noqa: E731
print(f"L_0 (decoder): {bpd['decoder']:.3f} bits/dim ({100 * bpd['decoder'] / bpd['total']:.0f}% of the bound); "
      f"indices below 10: {100 * share(10):.0f}%; below 100: {100 * share(100):.0f}%; prior L_T: {bpd['prior']:.1e}")

# %% [markdown]
# Two thirds of the bound (1.75 of 2.66 bits/dim) is the decoder $L_0$, the cost of the last step from $x_1$ to 8-bit
# pixels; the first ten indices hold 90% and the first hundred 98%. The many steps at large $t$, where the coarse content of
# a sample is decided, cost almost nothing in likelihood. This is why $L_\text{simple}$, which drops the weights (notebook 03),
# trades likelihood for sample quality, and why bits/dim and FID need not agree: in section 5.4 the raw cosine weights
# have the better bound over $t < T-1$ (4.93 against 5.44 bits/dim) and the worse samples (FID 126 against 116).
#
# ## 6. Conclusion: the sampler to use
#
# For each budget of network evaluations, the best setting the study measured (at $N$ = 128) and the gap to the others:

# %%
best = {}
for s in GRID_STEPS:
    candidates = pick("samplers", sampler="ddim", steps=s)
    best[s] = min(candidates, key=lambda r: r["fid"])
    b = best[s]
    others = ", ".join(f"eta={r['eta']:g}: {r['fid']:.2f}" for r in candidates if r is not b)
    print(f"{s:4d} evaluations: best eta = {b['eta']:g}, FID {b['fid']:.2f} ± {b['spread']['fid']:.2f}, precision {b['precision']:.3f}, "
          f"recall {b['recall']:.3f}, {b['ms_per_evaluation'] * s / 1000:.2f} s per image on the study's machine   (others: {others})")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("best eta per budget:", {s: best[s]["eta"] for s in GRID_STEPS})

# %% [markdown]
# **The sampler to use.** For this model, DDIM with $\eta = 1$ is the best setting at every budget the study measured, by
# 14-21 FID at $N = 128$ (bootstrap stds 1.3-3.3), with twice the precision of $\eta = 0$ and almost none of its grain. This
# holds in fp32 and without clipping, and it is the reverse of DDIM's Table 1, measured on a network trained 500 times
# longer. Along $\eta = 1$, 20 steps (FID 17.5 ± 2.2) are within the noise of 50 (15.6 ± 1.8), 100 steps are better
# (12.5 ± 1.3) at twice the cost, and DDIM-250 or DDPM's 1000 steps show no gain that 32 samples can measure.
#
# **The command line's default** stays what it is: DDIM, 50 steps, $\eta = 1$ (`python -m ddpm_lib.sample` and
# `python -m ddpm_lib.evaluate`), at 7.5 ms per network evaluation, about 0.38 s per image on one core of the study's
# machine, a twentieth of DDPM-1000's cost. `--steps 20` when speed matters, `--steps 100` for the last bit of quality.
# $\eta = 0$ is for where determinism is the point (interpolating between noises, notebook 06's exercise 3), not for
# quality; a network trained much longer should be measured again before that changes.
#
# ## Summary
#
# - FID fits a Gaussian to each feature set and measures the distance between them; it rises for every defect, is biased
#   upward at small $N$ (about $1/N$), and is compared only at equal $N$, beside the real-vs-real baseline.
# - KID is an unbiased kernel estimate of the same kind of gap: 0 for real images at any $N$.
# - Precision (fidelity) and recall (diversity) come from k-NN balls; `class_tv` flags dropped modes; the grain measure
#   estimates the noise left in an image; bits/dim measures likelihood, not samples.
# - Every score is an estimate: the bootstrap spread is a cautious estimate of the spread over independent sample sets.
# - For the study's toy-cars model, DDIM with $\eta = 1$ beats $\eta = 0$ at every budget, the reverse of Song
#   et al.'s CIFAR-10 result; bf16 and clipping are ruled out, and the grain $\eta = 0$ leaves shrinks with training.
#   DDIM-50 at $\eta = 1$ stays the default. Two 135-step runs cannot rank EMA against raw weights or linear against
#   cosine; notebook 08 measures both with 3 seeds at equal CPU minutes. A log-spaced bound estimate fails where one term
#   spikes, as the cosine schedule's last does.
#
# ## Exercises
#
# Each exercise has a cell for your answer and a cell that checks it. The next cell loads all that the exercises use,
# so that they run on their own, without the cells above: the feature network, the features of 500 training images
# (`reference`), of 100 held-out images (`held_out`) and of 100 held-out images of the first three body types only
# (`dropped`, as in section 3). Each exercise re-derives something `ddpm_lib.metrics` computes: the checks compare your
# answer with the library, and run it with the library's version switched off (`refusing` from `ddpm_lib.grading`),
# so that an answer which calls the function it re-derives fails.

# %%
import torch
import torchmetrics.image.fid as torchmetrics_fid

from ddpm_lib import metrics
from ddpm_lib.data import load_dataset
from ddpm_lib.features import load_feature_extractor
from ddpm_lib.grading import names_used, refusing
from ddpm_lib.metrics import class_tv, compute_features, frechet_distance, knn_radii, precision_recall, reference_features  # noqa: F811

net = load_feature_extractor()
reference = reference_features("toy_cars", 32, 500, net, "train")  # FeatureSet: features (500, 128) float64, labels (500,)
test = load_dataset("toy_cars", 32, "test", num_images=300)
held_out = compute_features(test.images[:100], net)  # FeatureSet, features (100, 128)
dropped = compute_features(test.images[test.labels < 3][:100], net)  # sedans, hatchbacks and SUVs only
real_m = reference.features[:100]  # (100, 128): as many real features as held-out ones
print(f"reference {tuple(reference.features.shape)}, held-out {tuple(held_out.features.shape)}, dropped {tuple(dropped.features.shape)}")


def library(*names):
    """Each of `names` in ddpm_lib.metrics and, where imported, in this notebook: where an answer would find it."""
    return [(metrics, name) for name in names] + [(globals(), name) for name in names if name in globals()]

# %% [markdown]
# **Exercise 1.** Write `fid_gaussians(mu1, cov1, mu2, cov2)`, the Fréchet distance between two Gaussians given by
# their means `(F,)` and covariances `(F, F)` (float64), returned as a Python float, with tensor arithmetic and
# `torch.linalg` (not `frechet_distance` or torchmetrics). *Hint:* section 2.

# %% nbgrader={"grade": false, "grade_id": "ex1-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def fid_gaussians(mu1, cov1, mu2, cov2):
    eigenvalues = torch.linalg.eigvals(cov1 @ cov2).real.clamp(min=0)
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * eigenvalues.sqrt().sum())


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex1-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
used = names_used(fid_gaussians) & {"frechet_distance", "_compute_fid", "FrechetInceptionDistance", "torchmetrics"}
assert not used, f"fid_gaussians uses {sorted(used)}: compute the distance from the means and covariances yourself"
a, b = reference.features[:300], held_out.features
expected = frechet_distance(a, b)
with refusing(*library("frechet_distance"), (torchmetrics_fid, "_compute_fid"), answer=fid_gaussians):
    got = fid_gaussians(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))
    one_d = fid_gaussians(torch.tensor([0.5], dtype=torch.float64), torch.tensor([[4.0]], dtype=torch.float64),
                          torch.tensor([-0.5], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64))
assert abs(got - expected) < 1e-6 * max(1.0, expected), f"fid_gaussians gives {got}, the library {expected}"
assert abs(one_d - (1.0**2 + (2.0 - 1.0) ** 2)) < 1e-9, "in one dimension the distance is (m1 - m2)^2 + (s1 - s2)^2"

# %% [markdown]
# **Exercise 2.** A generator that draws nothing but one body type $c$, however perfect each car. Write
# `tv_one_class(reference_labels, c, num_classes)`, its `class_tv` against a reference with labels `reference_labels`
# `(M,)` (a float), in closed form from the reference's class histogram alone, without calling `class_tv`. Then read
# off the value for a sedans-only generator (class 0) against `reference.labels`, the body types the feature network
# reads.

# %% nbgrader={"grade": false, "grade_id": "ex2-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def tv_one_class(reference_labels, c, num_classes):
    p_reference = torch.bincount(reference_labels, minlength=num_classes).double() / len(reference_labels)
    return 1.0 - p_reference[c].item()  # (1/2)(|1 - p_c| + sum_{c' != c} p_c') = 1 - p_c


### END SOLUTION
print(f"class_tv of a sedans-only generator: {tv_one_class(reference.labels, 0, 6):.3f}")

# %% nbgrader={"grade": true, "grade_id": "ex2-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
used = names_used(tv_one_class) & {"class_tv", "evaluate_samples", "_scores"}
assert not used, f"tv_one_class uses {sorted(used)}: write the distance in closed form"
for labels_, c_ in [(reference.labels, 0), (reference.labels, 3), (held_out.labels, 5), (dropped.labels, 4)]:
    expected = class_tv(torch.full((1000,), c_), labels_, 6)
    with refusing(*library("class_tv", "evaluate_samples"), answer=tv_one_class):
        got = tv_one_class(labels_, c_, 6)
    assert abs(got - expected) < 1e-12, f"tv_one_class for class {c_} gives {got}, class_tv {expected}"

# %% [markdown]
# **Exercise 3.** Write `recall_by_hand(real, fake, k)`, the recall of feature sets `real` `(N, F)` and `fake` `(M, F)` as
# a float, with `knn_radii` from `ddpm_lib.metrics` (the distance from each point to its k-th nearest neighbour in its own
# set) and `torch.cdist`, without `precision_recall` or `in_manifold`.

# %% nbgrader={"grade": false, "grade_id": "ex3-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def recall_by_hand(real, fake, k=3):
    radii = knn_radii(fake, k)  # (M,): the balls of the generated manifold
    return (torch.cdist(real, fake) <= radii).any(dim=1).double().mean().item()


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex3-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
used = names_used(recall_by_hand) & {"precision_recall", "in_manifold", "evaluate_samples"}
assert not used, f"recall_by_hand uses {sorted(used)}: test which real features some generated ball covers yourself"
for k_ in (1, 3, 5):
    expected = precision_recall(real_m, dropped.features, k=k_)[1]
    with refusing(*library("precision_recall", "in_manifold", "evaluate_samples"), answer=recall_by_hand):
        got = recall_by_hand(real_m, dropped.features, k_)
    assert abs(got - expected) < 1e-12, f"recall_by_hand differs from the library at k={k_}: {got} against {expected}"

# %% [markdown]
# **Exercise 4.** Section 4 fitted FID $\approx a + b/N$ to real-vs-real scores. Part of the bias is in the mean term
# alone: for two independent sets of $n$ and $m$ samples from one distribution with covariance $\Sigma$,
# $\mathbb E\lVert\hat\mu_1-\hat\mu_2\rVert^2 = \operatorname{Tr}\Sigma\,(1/n + 1/m)$. Compute `mean_term_bias` (a float), this
# expectation for $n = 100$ held-out samples against the $m$ = `len(reference)` reference features, with $\Sigma$ estimated
# from the reference. The check draws 20,000 such pairs of sets from the reference features and compares.

# %% nbgrader={"grade": false, "grade_id": "ex4-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
mean_term_bias = torch.cov(reference.features.T).trace().item() * (1 / 100 + 1 / len(reference))
### END SOLUTION
print(f"expected mean term of FID at n = 100, m = {len(reference)}: {mean_term_bias:.3f}; "
      f"the whole FID of the 100 held-out images: {frechet_distance(reference.features, held_out.features):.2f}")

# %% nbgrader={"grade": true, "grade_id": "ex4-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
X_, m_, n_ = reference.features, len(reference), 100
g_, draws = torch.Generator().manual_seed(0), []
for _ in range(40):  # 40 x 500 pairs of sets drawn with replacement: the mean of each as a weighted sum of X_
    counts = [torch.randint(0, m_, (500, size), generator=g_) for size in (n_, m_)]
    w1, w2 = (torch.zeros(500, m_, dtype=X_.dtype).scatter_add_(1, i, torch.ones(i.shape, dtype=X_.dtype)) / i.shape[1] for i in counts)
    draws.append(((w1 - w2) @ X_).square().sum(1))  # ||mean of set 1 - mean of set 2||^2
simulated = torch.cat(draws).mean().item()
assert isinstance(mean_term_bias, float), f"mean_term_bias should be a float, got {type(mean_term_bias).__name__}"
assert abs(mean_term_bias - simulated) < 0.03 * simulated, (
    f"mean_term_bias = {mean_term_bias:.4f}, but 20,000 simulated pairs of sets average {simulated:.4f}: "
    "use Tr(Sigma) (1/n + 1/m) with n = 100 and m = len(reference)"
)
