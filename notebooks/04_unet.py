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
# # 04 · The U-Net that predicts the noise
#
# **Goal.** Build the network $\epsilon_\theta(x_t, t)$ of Ho et al. (2020, Appendix B) piece by piece: the sinusoidal
# time embedding, the residual block that receives it, self-attention, and the whole U-Net with its skip
# connections. Then compare it with the simpler BatchNorm U-Net of popular tutorials, and see what goes wrong
# when such a model samples in train mode.
#
# **The contract.** The network takes a noisy batch $x_t$ `(B, 3, H, W)` and integer timesteps `t` `(B,)`, and
# returns a tensor of $x_t$'s shape: its guess of the noise $\epsilon$ that was added. It knows nothing of the
# schedule; `GaussianDiffusion` owns all the maths.

# %%
import math

import matplotlib.pyplot as plt
import torch

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
# `scaled_dot_product_attention`. By hand, then checked:

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
# Down the U: a convolution, then at each level `num_res_blocks` ResBlocks (plus attention at 16x16) and a
# stride-2 convolution that halves the resolution. The middle: ResBlock, attention, ResBlock. Up the U: at each
# level one more ResBlock, each taking the **concatenation** of the current features and a saved feature map
# from the way down (the skip connections), then nearest-neighbour upsampling. GroupNorm, SiLU and a final
# convolution return 3 channels.
#
# The table follows one 32x32 batch through the small CPU preset.

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

# %% [markdown]
# ### Parameter counts
#
# The default `UNetConfig` is the paper's CIFAR-10 model: 128 base channels, multipliers 1-2-2-2, two ResBlocks
# per level, attention at 16x16, dropout 0.1. The paper reports **35.7M parameters**. The `small` and `tiny`
# presets are what a CPU can train in minutes.

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
# ## Summary
#
# - $\epsilon_\theta(x_t, t)$ is a U-Net: ResBlocks conditioned on a sinusoidal embedding of $t$, attention at
#   16x16, skip connections between matching resolutions.
# - The paper's CIFAR-10 configuration has 35.7M parameters; the CPU presets keep the architecture at a smaller
#   width.
# - BatchNorm makes outputs depend on the batch in train mode; always sample in eval mode (the library does).
#
# ## Exercises
#
# 1. Count the parameters of a U-Net with attention at both 16x16 and 8x8 for the `small` preset. How many does the
#    extra attention add? *Hint:* `dataclasses.replace(UNET_PRESETS["small"], attention_resolutions=(16, 8))`.
# 2. What is the receptive field problem that attention solves? Find the resolution at which a 3x3 convolution
#    sees the whole image in the `small` preset.
# 3. Build `UNetConfig(image_size=64, channel_mults=(1, 2, 2, 2))` and print the shape table. Where is the attention?
#
# A check of exercise 1:

# %%
import dataclasses

base = count_parameters(UNet(UNET_PRESETS["small"]))
more = count_parameters(UNet(dataclasses.replace(UNET_PRESETS["small"], attention_resolutions=(16, 8))))
print(f"attention at 8x8 too adds {more - base:,d} parameters")
assert more - base > 0
