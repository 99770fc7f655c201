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
# # 04 · The U-Net that predicts the noise
#
# **Goal.** Build the network $\epsilon_\theta(x_t, t)$ of Ho et al. (2020, Appendix B) piece by piece: the sinusoidal
# time embedding, the residual block that receives it, self-attention, and the whole U-Net with its skip
# connections. Then compare it with the simpler BatchNorm U-Net of popular tutorials, and see what goes wrong when
# a network is left in train mode at sampling time: with BatchNorm an image's output depends on the other images in
# its batch; with dropout two passes over the same input disagree, and the samples of a trained model turn grainy.
#
# **The contract.** The network takes a noisy batch $x_t$ `(B, 3, H, W)` and integer timesteps `t` `(B,)`, and
# returns a tensor of $x_t$'s shape. Trained as the paper trains it, that tensor is its guess of the noise $\epsilon$
# that was added (notebook 08's recipe trains it, without attention, to return $v$ instead). It knows nothing of the
# schedule; `GaussianDiffusion` owns all the maths.
#
# **The model.** Section 6 loads `DDPM_MODEL` (`ddpm_lib/weights/ddpm_toy_cars_32.pt`): the paper's DDPM
# ($\epsilon$-prediction, linear schedule, $T = 1000$) on the `small` U-Net with attention at 16x16, 1,600 steps of
# notebook 05's recipe (`--preset ddpm`, batch 64, no dropout).

# %%
import math

import matplotlib.pyplot as plt
import torch

from ddpm_lib.checkpoints import DDPM_MODEL, load_ema_model
from ddpm_lib.plotting import show_images
from ddpm_lib.sampling import generate
from ddpm_lib.unet import (
    UNET_PRESETS,
    AttentionBlock,
    ResBlock,
    SimpleUNet,
    UNet,
    UNetConfig,
    build_model,
    count_parameters,
    timestep_embedding,
)

from ddpm_lib.checks import env_flag

FAST = env_flag("DDPM_FAST")
torch.manual_seed(0);

# %% [markdown]
# ## 1. Telling the network which step it is at
#
# One network serves all $T$ steps, so it must know $t$. The paper uses the Transformer's sinusoidal position
# embedding: for a dimension $d$ and frequencies $f_i = 10000^{-i/(d/2-1)}$,
#
# $$\mathrm{emb}(t) = \big[\sin(t f_0), \dots, \sin(t f_{d/2-1}),\ \cos(t f_0), \dots, \cos(t f_{d/2-1})\big].$$
#
# Nearby timesteps get similar vectors, far ones different vectors, at every scale. By hand, then checked:

# %%
def embedding_by_hand(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


t = torch.arange(0, 1000)
print("max |hand - library| =", (embedding_by_hand(t, 128) - timestep_embedding(t, 128)).abs().max().item())

# %%
fig, ax = plt.subplots(figsize=(9, 3.2))
im = ax.imshow(timestep_embedding(t, 128).T, aspect="auto", cmap="RdBu", interpolation="nearest")
ax.set_xlabel("timestep t")
ax.set_ylabel("embedding dimension")
ax.set_title("sinusoidal timestep embedding (d = 128): fast frequencies at the top of each half, slow below")
fig.colorbar(im, ax=ax);

# %% [markdown]
# ## 2. The residual block with time conditioning
#
# Each ResBlock normalises (GroupNorm), applies SiLU and a 3x3 convolution, then **adds a projection of the
# time embedding to every pixel**, and repeats with dropout. A 1x1 convolution matches channels on the skip path:
#
# $$h = \mathrm{conv}_1(\mathrm{SiLU}(\mathrm{GN}(x))) + W\,\mathrm{SiLU}(\mathrm{emb}),\qquad
# \mathrm{out} = \mathrm{skip}(x) + \mathrm{conv}_2(\mathrm{dropout}(\mathrm{SiLU}(\mathrm{GN}(h)))).$$

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
block = ResBlock(in_ch=32, out_ch=64, temb_ch=128, dropout=0.1, groups=8)
x = torch.randn(4, 32, 16, 16)
temb = torch.randn(4, 128)
print("ResBlock:", tuple(x.shape), "->", tuple(block(x, temb).shape), "| parameters:", count_parameters(block))

# %% [markdown]
# ## 3. Self-attention
#
# At the 16x16 resolution the paper adds a self-attention block: every position attends to every other, so the
# network can coordinate distant parts of the image (both wheels of a car, say). With queries, keys and values
# from 1x1 convolutions, $\mathrm{softmax}(QK^\top/\sqrt{d})V$ is computed by PyTorch's fused
# `scaled_dot_product_attention` on a GPU, and by two batched matrix products on a CPU (there they train faster in
# bf16: `benchmarks/bench.py`). By hand, then checked:

# %%
attn = AttentionBlock(64, num_heads=1, groups=8)
x = torch.randn(2, 64, 16, 16)
B, C, H, W = x.shape
q, k, v = attn.qkv(attn.norm(x)).reshape(B, 3, C, H * W).unbind(1)  # each (B, C, HW)
weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(C), dim=-1)  # (B, HW, HW)
by_hand = x + attn.proj_out((v @ weights.transpose(1, 2)).reshape(B, C, H, W))
print("max |hand - library| =", (by_hand - attn(x)).abs().max().item())

# %% [markdown]
# ## 4. The whole U-Net
#
# **Down the U:** a 3x3 convolution (`conv_in`), then at each level `num_res_blocks` ResBlocks (each followed by
# attention at the resolutions in `attention_resolutions`, 16x16 in the paper) and, at every level but the last, a
# stride-2 3x3 convolution that halves the resolution. Every one of these outputs is saved for the way up, `conv_in`'s
# included: with $L$ levels and $n$ = `num_res_blocks`, that is $1 + Ln + (L-1) = L(n+1)$ feature maps.
#
# **The middle:** ResBlock, attention, ResBlock, at the lowest resolution.
#
# **Up the U:** at each level **$n + 1$ = `num_res_blocks + 1`** ResBlocks (three per level in the paper's model, against two
# on the way down), each taking the **concatenation** of the current features and one saved map, the most recently
# saved first (the skip connections). The extra block per level is what uses up the maps saved after each
# downsampling and after `conv_in`. At every level but the top, nearest-neighbour upsampling and a 3x3 convolution
# double the resolution. GroupNorm, SiLU and a final 3x3 convolution return 3 channels.
#
# The table follows one 32x32 batch through the small CPU preset (3 levels, `num_res_blocks = 2`).

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
model = build_model("small", image_size=32).eval()
rows = []
hooks = [m.register_forward_hook(lambda m, i, o, name=name: rows.append((name, type(m).__name__, tuple(o.shape))))
         for name, m in model.named_modules() if isinstance(m, (ResBlock, AttentionBlock)) or name in ("conv_in", "conv_out")
         or type(m).__name__ in ("Downsample", "Upsample")]
with torch.no_grad():
    out = model(torch.randn(2, 3, 32, 32), torch.tensor([10, 900]))
for h in hooks:
    h.remove()
for name, kind, shape in rows:
    print(f"{name:12s} {kind:15s} {shape}")
print("output:", tuple(out.shape))
print("ResBlocks:", {part: sum(kind == "ResBlock" and name.startswith(part) for name, kind, _ in rows) for part in ("down", "mid", "up")})

# %% [markdown]
# ### Parameter counts
#
# The default `UNetConfig` is the paper's CIFAR-10 model: 128 base channels, multipliers 1-2-2-2, two ResBlocks
# per level on the way down (three on the way up), attention at 16x16, dropout 0.1. The paper reports **35.7M
# parameters**. The `small` and `tiny` presets keep the architecture at a width a CPU can train (notebook 05 trains
# `small`).

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
for name, cfg in UNET_PRESETS.items():
    print(f"{name:13s} {count_parameters(UNet(cfg)):>12,d} parameters   ch={cfg.base_channels} mults={cfg.channel_mults} "
          f"attention at {cfg.attention_resolutions} px, {cfg.image_size}x{cfg.image_size} input")

# %% [markdown]
# A configuration the network cannot build fails at construction with a message that says what to change:

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
for bad in [UNetConfig(image_size=30), UNetConfig(base_channels=24)]:
    try:
        UNet(bad)
    except ValueError as err:
        print("ValueError:", err)

# %% [markdown]
# ## 5. The tutorial U-Net, and BatchNorm in train mode
#
# Popular "diffusion from scratch" tutorials use a simpler U-Net: plain convolutions with **BatchNorm** and ReLU, a
# 32-dimensional time embedding, channels 64 to 1024, no attention. It has more parameters than the paper's model
# but no attention and no GroupNorm:

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
simple = SimpleUNet()
print(f"SimpleUNet: {count_parameters(simple):,d} parameters; ResNet-18 U-Net: {count_parameters(build_model('resnet18')):,d}")

# %% [markdown]
# BatchNorm normalises each channel with the statistics **of the current batch** in train mode. At sampling time
# a batch is a set of images at the same noise level, often few of them, so the output for one image depends on
# the others in the batch. In eval mode BatchNorm uses its running averages instead, and the output depends only
# on the image itself. `GaussianDiffusion.sample` always switches the model to eval mode (and back); here is what
# it protects you from:

# %%
simple = SimpleUNet(channels=(32, 64, 128)).train()
x_t = torch.randn(8, 3, 32, 32)
t = torch.full((8,), 500)
with torch.no_grad():
    alone = simple(x_t[:1], t[:1])  # image 0 in a batch of 1 ...
    in_batch = simple(x_t, t)[:1]  # ... and in a batch of 8
    simple.eval()
    alone_eval, in_batch_eval = simple(x_t[:1], t[:1]), simple(x_t, t)[:1]
print(f"train mode: image 0's output changes by {(alone - in_batch).abs().max().item():.3f} with its batch-mates")
print(f"eval mode:  image 0's output changes by {(alone_eval - in_batch_eval).abs().max().item():.2e}")

# %% [markdown]
# GroupNorm, which the paper's U-Net uses, normalises within each image, so it has no such problem at all:

# %%
model = build_model("small").train()
with torch.no_grad():
    diff = (model(x_t[:1], t[:1]) - model(x_t, t)[:1]).abs().max().item()
print(f"GroupNorm U-Net in train mode (dropout 0): image 0's output changes by {diff:.2e} with its batch-mates")

# %% [markdown]
# ## 6. Dropout in train mode
#
# The paper's U-Net has dropout 0.1 inside every ResBlock. In train mode dropout zeroes a random 10% of the activations
# (and scales the others by 1/0.9), so the same input gives a different output at every call; in eval mode it does
# nothing. `DDPM_MODEL`, the $\epsilon$-prediction model of notebook 05's recipe that notebooks 06 and 07 study, was
# trained without dropout; loaded into a network with the paper's dropout, it shows both modes:

# %%
pretrained, diffusion, config = load_ema_model(DDPM_MODEL)  # eps-prediction, linear, T = 1000; eval mode
dropped = build_model(config.model, image_size=config.image_size, dropout=0.1)  # the same network with dropout 0.1 ...
dropped.load_state_dict(pretrained.state_dict())  # ... and the same weights (dropout has none)
x_t, t = torch.randn(4, 3, 32, 32), torch.full((4,), 500)
rms = lambda a: a.pow(2).mean().sqrt().item()  # noqa: E731
with torch.no_grad():
    first, second = dropped.train()(x_t, t), dropped(x_t, t)
    first_eval, second_eval = dropped.eval()(x_t, t), dropped(x_t, t)
    loaded = pretrained(x_t, t)  # the loaded model computes in channels-last order
gap = (first_eval - loaded).abs().max().item()
print(f"train mode: two passes over the same input differ by {rms(first - second):.3f} (rms), "
      f"for an output of rms {rms(first_eval):.3f}")
print(f"eval mode:  two passes differ by {rms(first_eval - second_eval):.1e}; against the pretrained model: "
      f"max |difference| {gap:.0e}, float rounding of another memory order")

# %% tags=["nbval-check-output"]
# NBVAL_CHECK_OUTPUT
print("eval mode: two passes agree exactly:", torch.equal(first_eval, second_eval))
print("eval mode equals the pretrained model (allclose, atol 1e-5):", torch.allclose(first_eval, loaded, atol=1e-5))

# %% [markdown]
# `generate`, like every sampler in the library, switches the model to eval mode (and back). Hiding the network behind
# a plain function hides it from that switch too: that is the sampling loop that forgets `model.eval()`. The same
# starting noise $x_T$ and the same sampler (DDIM, $\eta = 1$, notebook 06), once in eval mode and twice in train mode:

# %%
n, steps = (2, 10) if FAST else (8, 20)
x_T = torch.randn(n, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(0))


def ddim(net):
    return generate(net, diffusion, n, config.image_size, num_steps=steps, eta=1.0, x_T=x_T, precision="fp32").images


in_eval = ddim(dropped)
forgot_eval = lambda x, t: dropped.train()(x, t)  # noqa: E731  (generate cannot switch a plain function to eval mode)
in_train = [ddim(forgot_eval), ddim(forgot_eval)]
dropped.eval()
fig, axes = plt.subplots(3, 1, figsize=(1.0 * n, 3.9))
show_images(in_eval, nrow=n, title=f"eval mode (DDIM-{steps})", ax=axes[0])
show_images(in_train[0], nrow=n, title="train mode, dropout 0.1: run 1", ax=axes[1])
show_images(in_train[1], nrow=n, title="train mode, dropout 0.1: run 2", ax=axes[2])
fig.tight_layout()
pixels = lambda a, b: 127.5 * (a - b).abs().mean().item()  # noqa: E731  (mean |difference| in 0-255 pixel values)
print(f"eval mode vs train mode: {pixels(in_eval, in_train[0]):.1f} / 255 per pixel on average; "
      f"train mode run 1 vs run 2: {pixels(*in_train):.1f} / 255")

# %% [markdown]
# In train mode every one of the sampler's network evaluations carries its own random error, and the sampler turns
# these into grain and washed-out colour that the eval-mode samples do not have; two train-mode runs from the same
# noise do not even agree with each other. A model trained with dropout has learned to work with dropped activations,
# so it would be damaged less than this one, which never saw dropout (this notebook does not measure how much less);
# but its train-mode samples would still change from run to run. Sample in eval mode.

# %% [markdown]
# ## Summary
#
# - $\epsilon_\theta(x_t, t)$ is a U-Net: ResBlocks conditioned on a sinusoidal embedding of $t$, attention at
#   16x16, skip connections between matching resolutions.
# - The paper's CIFAR-10 configuration has 35.7M parameters; the CPU presets keep the architecture at a smaller
#   width.
# - The decoder has `num_res_blocks + 1` ResBlocks per level: one per feature map saved on the way down.
# - In train mode BatchNorm makes an image's output depend on its batch and dropout makes every pass random; always
#   sample in eval mode (the library does).
#
# ## Exercises
#
# Each exercise has a cell for your answer and a cell that checks it. The next cell imports what they use; the section
# runs on its own, without the cells above. Each exercise derives something the library already computes, so the
# checks compare your answer with the library, and run it with the library's version switched off (`refusing`
# from `ddpm_lib.grading`): an answer that calls the function it re-derives, or builds the network and counts,
# fails.

# %%
import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lib import unet as unet_lib
from ddpm_lib.grading import names_used, refusing
from ddpm_lib.unet import UNET_PRESETS, AttentionBlock, ResBlock, UNet, count_parameters

torch.manual_seed(0)
small = UNET_PRESETS["small"]  # 32 base channels, mults (1, 2, 2), 2 ResBlocks per level, attention at 16x16
features = torch.randn(2, 64, 8, 8)  # a batch of feature maps (B, C, H, W)
gn_weight, gn_bias = torch.randn(64), torch.randn(64)  # GroupNorm's per-channel scale and shift
attn4 = AttentionBlock(64, num_heads=4, groups=8)  # self-attention with 4 heads of 16 channels


NO_NETWORK = [(nn.Module, "__init__"), (unet_lib, "count_parameters"), (globals(), "count_parameters")]  # builds and counts nothing

# %% [markdown]
# **Exercise 1.** Write `resblock_params(in_ch, out_ch, temb_ch)`, the number of parameters (an `int`) of
# `ResBlock(in_ch, out_ch, temb_ch, dropout, groups)` by formula, from section 2's equation: two GroupNorms (a scale and
# a shift per channel), two 3x3 convolutions, the linear projection of the time embedding, and the 1x1 skip convolution
# that exists only when `in_ch != out_ch` (every convolution and linear layer has a bias). Count by formula: the check
# builds no `ResBlock` for you.

# %% nbgrader={"grade": false, "grade_id": "ex1-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def resblock_params(in_ch: int, out_ch: int, temb_ch: int) -> int:
    norms = 2 * in_ch + 2 * out_ch
    convs = (9 * in_ch * out_ch + out_ch) + (9 * out_ch * out_ch + out_ch)
    temb = temb_ch * out_ch + out_ch
    skip = in_ch * out_ch + out_ch if in_ch != out_ch else 0
    return norms + convs + temb + skip


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex1-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
used = names_used(resblock_params) & {"count_parameters", "ResBlock", "numel", "parameters", "Conv2d", "Linear"}
assert not used, f"resblock_params uses {sorted(used)}: count the parameters by formula, without building the block"
for in_ch, out_ch, temb_ch in [(32, 64, 128), (64, 64, 128), (128, 64, 512), (96, 32, 256)]:
    expected = count_parameters(ResBlock(in_ch, out_ch, temb_ch, dropout=0.1, groups=8))
    with refusing(*NO_NETWORK, answer=resblock_params):
        got = resblock_params(in_ch, out_ch, temb_ch)
    assert got == expected, f"resblock_params({in_ch}, {out_ch}, {temb_ch}) is off by {got - expected:+d}; check each layer's bias and the skip path"

# %% [markdown]
# **Exercise 2.** Write `decoder_in_channels(cfg)`: for a `UNetConfig` `cfg`, the list of the input channels (ints) of
# the decoder's ResBlocks, in the order the forward pass runs them. Each one receives the current features
# **concatenated** with the most recently saved feature map of the way down (section 4). Work from `cfg`'s fields, without
# building the network. *Hint:* first list the channels of every saved map, `conv_in`'s included.

# %% nbgrader={"grade": false, "grade_id": "ex2-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def decoder_in_channels(cfg) -> list[int]:
    ch = cfg.base_channels
    saved, cur = [ch], ch  # conv_in's output
    for level, mult in enumerate(cfg.channel_mults):
        for _ in range(cfg.num_res_blocks):
            cur = ch * mult
            saved.append(cur)
        if level != len(cfg.channel_mults) - 1:
            saved.append(cur)  # the Downsample's output
    ins = []
    for mult in reversed(cfg.channel_mults):
        for _ in range(cfg.num_res_blocks + 1):
            ins.append(cur + saved.pop())
            cur = ch * mult
    return ins


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex2-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
used = names_used(decoder_in_channels) & {"UNet", "build_model", "modules", "named_modules", "children", "up"}
assert not used, f"decoder_in_channels uses {sorted(used)}: derive the channels from cfg, without building the network"
for cfg in [small, UNET_PRESETS["tiny"], UNET_PRESETS["ddpm-cifar10"], replace(small, channel_mults=(1, 2, 3), num_res_blocks=3)]:
    net = UNet(cfg)
    expected = [block[0].conv1.in_channels for block in net.up if isinstance(block, nn.ModuleList)]
    with refusing(*NO_NETWORK, answer=decoder_in_channels):
        got = list(decoder_in_channels(cfg))
    assert len(got) == len(expected), f"{len(got)} decoder ResBlocks for {cfg}, the network has {len(expected)}: how many per level?"
    assert got == expected, f"decoder input channels for {cfg}: the first mismatch is at ResBlock {next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)}"

# %% [markdown]
# **Exercise 3.** An `AttentionBlock` on $C$ channels has a GroupNorm, a 1x1 convolution to $3C$ channels (queries, keys,
# values) and a 1x1 output convolution. Write `attention_params(C)`, its number of parameters by formula, and
# `attention_added(cfg, res)`, the number of parameters (an `int`) that attention at the resolution `res` (in pixels, one
# that `cfg` does not yet attend at) adds to `UNet(cfg)`. *Hint:* which level works at `res`, with how many channels, and
# how many ResBlocks does it have, down and up? (The middle block has its attention already.)

# %% nbgrader={"grade": false, "grade_id": "ex3-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def attention_params(C: int) -> int:
    return 2 * C + (C * 3 * C + 3 * C) + (C * C + C)  # = 4 C^2 + 6 C


def attention_added(cfg, res: int) -> int:
    level = int(math.log2(cfg.image_size // res))  # level i works at image_size / 2^i pixels
    channels = cfg.base_channels * cfg.channel_mults[level]
    blocks = cfg.num_res_blocks + (cfg.num_res_blocks + 1)  # down and up
    return blocks * attention_params(channels)


### END SOLUTION
print(f"attention at 8x8 adds {attention_added(small, 8):,d} parameters to the small preset")

# %% nbgrader={"grade": true, "grade_id": "ex3-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
for fn in (attention_params, attention_added):
    used = names_used(fn) & {"count_parameters", "AttentionBlock", "UNet", "build_model", "numel", "parameters"}
    assert not used, f"{fn.__name__} uses {sorted(used)}: count by formula, without building the network"
for C in (32, 64, 128):
    expected = count_parameters(AttentionBlock(C, num_heads=1, groups=8))
    with refusing(*NO_NETWORK, answer=attention_params):
        got = attention_params(C)
    assert got == expected, f"attention_params({C}) is off by {got - expected:+,d}"
for cfg, res in [(small, 8), (small, 32), (UNET_PRESETS["tiny"], 16), (UNET_PRESETS["ddpm-cifar10"], 8)]:
    expected = count_parameters(UNet(replace(cfg, attention_resolutions=(*cfg.attention_resolutions, res))))
    expected -= count_parameters(UNet(cfg))
    with refusing(*NO_NETWORK, answer=attention_added):
        got = attention_added(cfg, res)
    assert got == expected, f"attention_added(..., {res}) is off by {got - expected:+,d}: count the blocks at {res}x{res} on both sides of the U"

# %% [markdown]
# **Exercise 4.** Write `group_norm_by_hand(x, num_groups, weight, bias, eps=1e-6)`: GroupNorm of `x` `(B, C, H, W)`
# with tensor arithmetic (means, variances), without PyTorch's normalisation functions (`F.group_norm`, `nn.GroupNorm`,
# layer or instance norm). Split the $C$ channels into `num_groups` groups; normalise each image's group by its own mean
# and (biased) variance over the group's channels and all pixels; then scale and shift each channel by `weight[c]` and
# `bias[c]`. Nothing is shared between the images of a batch, which is why the paper's U-Net has no train-mode problem.

# %% nbgrader={"grade": false, "grade_id": "ex4-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def group_norm_by_hand(x, num_groups, weight, bias, eps=1e-6):
    B, C, H, W = x.shape
    g = x.reshape(B, num_groups, -1)  # (B, groups, C/groups * H * W)
    mean = g.mean(dim=-1, keepdim=True)
    var = g.var(dim=-1, unbiased=False, keepdim=True)
    normed = ((g - mean) / torch.sqrt(var + eps)).reshape(B, C, H, W)
    return normed * weight[None, :, None, None] + bias[None, :, None, None]


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex4-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
NORMS = ("group_norm", "layer_norm", "instance_norm", "batch_norm")
used = names_used(group_norm_by_hand) & {*NORMS, "GroupNorm", "LayerNorm", "InstanceNorm2d", "BatchNorm2d"}
assert not used, f"group_norm_by_hand uses {sorted(used)}: compute the means and variances yourself"
NO_NORM = [(module, name) for module in (F, torch) for name in NORMS] + [(nn.Module, "__init__")]
for groups in (8, 4, 1):
    norm = nn.GroupNorm(groups, 64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(gn_weight)
        norm.bias.copy_(gn_bias)
        expected = norm(features)
    with refusing(*NO_NORM, answer=group_norm_by_hand):
        got = group_norm_by_hand(features, groups, gn_weight, gn_bias)
    assert got.shape == features.shape, f"expected shape {tuple(features.shape)}, got {tuple(got.shape)}"
    assert torch.allclose(got, expected, atol=1e-5), (
        f"with {groups} groups the result differs by {(got - expected).abs().max().item():.2e}: one mean and one biased variance per image and group"
    )
with refusing(*NO_NORM, answer=group_norm_by_hand):
    alone, in_batch = group_norm_by_hand(features[:1], 8, gn_weight, gn_bias), group_norm_by_hand(features, 8, gn_weight, gn_bias)
assert torch.allclose(alone, in_batch[:1], atol=1e-6), "an image's output must not depend on the batch"

# %% [markdown]
# **Exercise 5.** Section 3 wrote attention by hand for one head. Write `attention_by_hand(block, x)` for an
# `AttentionBlock` with any number of heads `block.num_heads`: the block's `qkv` output `(B, 3C, H, W)` holds, in this
# order, queries, keys and values, each as `num_heads` consecutive groups of $d = C/$`num_heads` channels. Each head
# attends on its own with $\mathrm{softmax}(QK^\top/\sqrt{d})V$; the heads' outputs are stacked back into $C$ channels
# in the same order, go through `block.proj_out`, and are added to `x`. Use `block.norm`, `block.qkv` and
# `block.proj_out`, not `block(x)` or `scaled_dot_product_attention`.

# %% nbgrader={"grade": false, "grade_id": "ex5-solution", "locked": false, "schema_version": 3, "solution": true, "task": false}
### BEGIN SOLUTION
def attention_by_hand(block, x):
    B, C, H, W = x.shape
    heads = block.num_heads
    d = C // heads
    q, k, v = block.qkv(block.norm(x)).reshape(B, 3, heads, d, H * W).unbind(1)  # each (B, heads, d, HW)
    weights = torch.softmax(q.transpose(-1, -2) @ k / math.sqrt(d), dim=-1)  # (B, heads, HW, HW)
    h = (weights @ v.transpose(-1, -2)).transpose(-1, -2)  # (B, heads, d, HW)
    return x + block.proj_out(h.reshape(B, C, H, W))


### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex5-test", "locked": true, "points": 1, "schema_version": 3, "solution": false, "task": false}
used = names_used(attention_by_hand) & {"scaled_dot_product_attention", "MultiheadAttention", "multi_head_attention_forward", "forward"}
assert not used, f"attention_by_hand uses {sorted(used)}: compute the attention weights yourself"
NO_ATTENTION = [(AttentionBlock, "forward"), (F, "scaled_dot_product_attention"), (F, "multi_head_attention_forward")]
for blk in (attn4, AttentionBlock(64, num_heads=1, groups=8), AttentionBlock(64, num_heads=8, groups=8)):
    with torch.no_grad():
        expected = blk(features)
        with refusing(*NO_ATTENTION, answer=attention_by_hand):
            got = attention_by_hand(blk, features)
    assert got.shape == features.shape, f"expected shape {tuple(features.shape)}, got {tuple(got.shape)}"
    assert torch.allclose(got, expected, atol=1e-5), (
        f"with {blk.num_heads} heads the result differs by {(got - expected).abs().max().item():.2e}: "
        "check the head split, the scale 1/sqrt(d) and the order in which the heads are put back"
    )
