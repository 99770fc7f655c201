"""The denoising networks f_theta(x_t, t) (stage 3 of the series): eps_theta or v_theta.

- :class:`UNet`: the DDPM U-Net of Ho et al. 2020 (Appendix B): a PixelCNN++-style U-Net with
  wide ResBlocks, GroupNorm, SiLU, a sinusoidal time embedding fed to every ResBlock, dropout and
  self-attention at chosen resolutions. :class:`UNetConfig`'s defaults are the paper's CIFAR-10
  model (35.7M parameters).
- :class:`SimpleUNet`: the small conv/BatchNorm/ReLU U-Net of popular "diffusion from scratch"
  tutorials, kept for comparison (it has no attention and no GroupNorm; BatchNorm makes its output
  depend on the batch in train mode).
- :class:`ResNet18UNet`: a torchvision ResNet-18 encoder with a transposed-convolution decoder.

Every model maps ``(x_t, t)`` with x_t ``(B, C, H, W)`` and t a LongTensor ``(B,)`` to an output of
x_t's shape: the noise eps (the paper) or v, as the diffusion's ``prediction_type`` reads it; the
network itself knows nothing about noise. A :class:`UNet` built with ``num_classes > 0`` also takes class labels
``y`` ``(B,)``: a learned class embedding added to the time embedding, with one extra "null" class
(index ``num_classes``) for the unconditional model of classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, Sec. 3.5; Ho et al. 2020, Sec. 4).

    t ``(B,)`` -> ``(B, dim)``: ``[sin(t * f_0..f_{d/2-1}), cos(t * f_0..f_{d/2-1})]`` with
    ``f_i = max_period^(-i / (d/2 - 1))`` as in the paper's code.
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"timestep embedding dim must be even and >= 4, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, device=t.device, dtype=torch.float32)
        / (half - 1)
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


# ---------------------------------------------------------------------------------- DDPM U-Net
@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`UNet`; the defaults are the paper's CIFAR-10 model."""

    image_size: int = 32  # height = width of the input
    in_channels: int = 3  # RGB
    base_channels: int = 128  # ch: channels of the first level
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)  # channels of level i = ch * mults[i]
    num_res_blocks: int = 2  # ResBlocks per level on the way down (one more on the way up)
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sizes that get self-attention
    dropout: float = 0.1  # inside each ResBlock (the paper's CIFAR-10 value)
    num_heads: int = 1  # attention heads (the paper uses 1)
    num_groups: int = 32  # GroupNorm groups
    # > 0: class-conditional, labels 0..num_classes-1 plus the null label num_classes
    num_classes: int = 0


UNET_PRESETS: dict[str, UNetConfig] = {
    "ddpm-cifar10": UNetConfig(),  # Ho et al. 2020, CIFAR-10: 35.7M parameters
    "ddpm-64": UNetConfig(
        image_size=64, base_channels=128, channel_mults=(1, 2, 2, 4), attention_resolutions=(16,)
    ),
    "small": UNetConfig(
        base_channels=32,
        channel_mults=(1, 2, 2),
        attention_resolutions=(16,),
        dropout=0.0,
        num_groups=8,
    ),
    "tiny": UNetConfig(
        base_channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        dropout=0.0,
        num_groups=4,
    ),
}


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the autocast dtype (as in Dhariwal & Nichol's guided-diffusion).

    Under bf16 autocast on a CPU, GroupNorm of a channels-last bf16 tensor has a slow backward; in float32 the
    training step runs faster (benchmarks/bench.py) and the statistics are exact to float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return GroupNorm32(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Wide ResBlock with the time embedding added after the first conv (Ho et al. 2020, App. B)."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = _group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]  # time conditioning
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions, with a residual connection.

    softmax(q k^T / sqrt(d)) v: PyTorch's fused kernel (SDPA) on a GPU; on a CPU two batched matmuls on the
    channels-last layout, which train faster there than SDPA's CPU flash kernel in bf16 (benchmarks/bench.py).
    """

    def __init__(self, ch: int, num_heads: int, groups: int):
        super().__init__()
        if ch % num_heads:
            raise ValueError(f"{ch} channels cannot be split into {num_heads} attention heads")
        self.num_heads = num_heads
        self.norm = _group_norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        heads, d = self.num_heads, C // self.num_heads
        # (B, 3C, H, W): channel s*C + head*d + j is q (s=0), k (1) or v (2)
        qkv = self.qkv(self.norm(x))
        if x.device.type != "cpu":
            # each (B, heads, H*W, d)
            q, k, v = qkv.reshape(B, 3, heads, d, H * W).transpose(-1, -2).unbind(1)
            h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H*W, d)
            return x + self.proj_out(h.transpose(-1, -2).reshape(B, C, H, W))
        # positions as rows; with channels-last qkv (the engine's layout) and one head these are views, no copies
        q, k, v = (
            qkv.permute(0, 2, 3, 1)
            .reshape(B, H * W, 3, heads, d)
            .permute(2, 0, 3, 1, 4)
            .reshape(3, B * heads, H * W, d)
        )
        weights = torch.bmm(q, k.transpose(1, 2) * d**-0.5).softmax(dim=-1)  # (B*heads, H*W, H*W)
        h = torch.bmm(weights, v).reshape(B, heads, H, W, d)  # (B, heads, H, W, d)
        return x + self.proj_out(h.permute(0, 1, 4, 2, 3).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 convolution."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling then a 3x3 convolution."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def validate_unet_config(cfg: UNetConfig) -> None:
    """Raise ``ValueError`` when ``cfg`` cannot build a U-Net, saying what to change."""
    levels = len(cfg.channel_mults)
    if levels < 1 or cfg.num_res_blocks < 1 or cfg.base_channels < 1:
        raise ValueError("channel_mults must be non-empty and num_res_blocks, base_channels >= 1")
    factor = 2 ** (levels - 1)
    if cfg.image_size < factor or cfg.image_size % factor:
        raise ValueError(
            f"image_size {cfg.image_size} cannot be halved {levels - 1} times by {levels} levels "
            f"(channel_mults={cfg.channel_mults}); use a multiple of {factor} or fewer levels"
        )
    for ch in {cfg.base_channels * m for m in cfg.channel_mults} | {cfg.base_channels}:
        if ch % cfg.num_groups:
            raise ValueError(
                f"GroupNorm cannot split {ch} channels into {cfg.num_groups} groups; choose num_groups dividing every level's channels"
            )
    resolutions = {cfg.image_size // 2**i for i in range(levels)}
    missing = set(cfg.attention_resolutions) - resolutions
    if missing:
        raise ValueError(
            f"attention_resolutions {sorted(missing)} never occur; this U-Net's resolutions are {sorted(resolutions, reverse=True)}"
        )
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if (
        isinstance(cfg.num_classes, bool)
        or not isinstance(cfg.num_classes, int)
        or cfg.num_classes < 0
    ):
        raise ValueError(
            f"num_classes must be an integer >= 0 (0: unconditional), got {cfg.num_classes!r}"
        )


class UNet(nn.Module):
    """The DDPM U-Net (Ho et al. 2020, App. B): f_theta(x_t, t[, y]), eps or v by the training target.

    Shapes: ``(B, C, H, W), (B,)[, (B,)] -> (B, C, H, W)``.
    """

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        validate_unet_config(config)
        self.config = cfg = config
        ch, temb_ch, g = cfg.base_channels, 4 * cfg.base_channels, cfg.num_groups
        self.time_mlp = nn.Sequential(
            nn.Linear(ch, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch)
        )
        self.num_classes = cfg.num_classes
        # + the null label
        self.class_emb = nn.Embedding(cfg.num_classes + 1, temb_ch) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()  # each entry: ResBlock [+ attention], or Downsample
        skip_chs, cur, res = [ch], ch, cfg.image_size
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                self.down.append(self._res_attn(cur, ch * mult, res))
                cur = ch * mult
                skip_chs.append(cur)
            if level != len(cfg.channel_mults) - 1:
                self.down.append(Downsample(cur))
                res //= 2
                skip_chs.append(cur)

        self.mid = nn.ModuleList(
            [
                ResBlock(cur, cur, temb_ch, cfg.dropout, g),
                AttentionBlock(cur, cfg.num_heads, g),
                ResBlock(cur, cur, temb_ch, cfg.dropout, g),
            ]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(self._res_attn(cur + skip_chs.pop(), ch * mult, res))
                cur = ch * mult
            if level != 0:
                self.up.append(Upsample(cur))
                res *= 2

        self.norm_out = _group_norm(cur, g)
        self.conv_out = nn.Conv2d(cur, cfg.in_channels, 3, padding=1)

    def _res_attn(self, in_ch: int, out_ch: int, res: int) -> nn.ModuleList:
        cfg = self.config
        blocks = [ResBlock(in_ch, out_ch, 4 * cfg.base_channels, cfg.dropout, cfg.num_groups)]
        if res in cfg.attention_resolutions:
            blocks.append(AttentionBlock(out_ch, cfg.num_heads, cfg.num_groups))
        return nn.ModuleList(blocks)

    def _labels(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """Class labels ``(B,)`` in [0, num_classes], the last being the null label; None gives all-null labels."""
        if y is None:
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if y.shape != (batch,) or y.is_floating_point():
            raise ValueError(
                f"labels must be integers of shape ({batch},), got {y.dtype} {tuple(y.shape)}"
            )
        if int(y.min()) < 0 or int(y.max()) > self.num_classes:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes - 1}] (or {self.num_classes}, the null label), "
                f"got [{int(y.min())}, {int(y.max())}]"
            )
        return y.long()

    @staticmethod
    def _run_block(block: nn.Module, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        if isinstance(block, nn.ModuleList):  # ResBlock [+ attention]
            h = block[0](h, temb)
            return block[1](h) if len(block) > 1 else h
        if isinstance(block, ResBlock):
            return block(h, temb)
        return block(h)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.config.base_channels))  # (B, 4ch)
        if self.class_emb is not None:  # y None: the null label, the unconditional model
            temb = temb + self.class_emb(self._labels(y, len(x), x.device))
        elif y is not None:
            raise ValueError(
                "this U-Net was built without classes (num_classes=0) and takes no labels; train one with --class-cond"
            )
        hs = [self.conv_in(x)]  # (B, ch, H, W)
        for block in self.down:
            hs.append(self._run_block(block, hs[-1], temb))
        h = hs[-1]
        for block in self.mid:
            h = self._run_block(block, h, temb)
        for block in self.up:
            if isinstance(block, nn.ModuleList):
                h = torch.cat([h, hs.pop()], dim=1)  # skip connection
            h = self._run_block(block, h, temb)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------- tutorial U-Net
class _SimpleBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, time_emb_dim: int, up: bool):
        super().__init__()
        self.time_mlp = nn.Linear(time_emb_dim, out_ch)
        self.conv1 = nn.Conv2d(2 * in_ch if up else in_ch, out_ch, 3, padding=1)
        self.transform = (
            nn.ConvTranspose2d(out_ch, out_ch, 4, 2, 1)
            if up
            else nn.Conv2d(out_ch, out_ch, 4, 2, 1)
        )
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.bnorm1, self.bnorm2 = nn.BatchNorm2d(out_ch), nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.bnorm1(F.relu(self.conv1(x)))
        h = h + F.relu(self.time_mlp(temb))[:, :, None, None]
        h = self.bnorm2(F.relu(self.conv2(h)))
        return self.transform(h)


class SimpleUNet(nn.Module):
    """The tutorial U-Net: conv blocks with BatchNorm and ReLU, a 32-d time embedding, 64..1024 channels.

    Each down block halves the resolution with a 4x4 stride-2 conv, each up block doubles it with a
    transposed conv; ``len(channels) - 1`` halvings in all, so image_size must be a multiple of
    ``2 ** (len(channels) - 1)`` (16 for the defaults).
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, ...] = (64, 128, 256, 512, 1024),
        time_emb_dim: int = 32,
    ):
        super().__init__()
        if len(channels) < 2:
            raise ValueError("SimpleUNet needs at least two channel counts")
        self.factor = 2 ** (len(channels) - 1)
        self.time_emb_dim = time_emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_emb_dim, time_emb_dim), nn.ReLU())
        self.conv0 = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.downs = nn.ModuleList(
            _SimpleBlock(a, b, time_emb_dim, up=False) for a, b in zip(channels[:-1], channels[1:])
        )
        up = channels[::-1]
        self.ups = nn.ModuleList(
            _SimpleBlock(a, b, time_emb_dim, up=True) for a, b in zip(up[:-1], up[1:])
        )
        self.output = nn.Conv2d(channels[0], in_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(
                f"SimpleUNet needs H and W divisible by {self.factor}, got {tuple(x.shape[-2:])}"
            )
        temb = self.time_mlp(timestep_embedding(t, self.time_emb_dim))
        h, skips = self.conv0(x), []
        for down in self.downs:
            h = down(h, temb)
            skips.append(h)
        for up in self.ups:
            h = up(torch.cat([h, skips.pop()], dim=1), temb)
        return self.output(h)


# ---------------------------------------------------------------------------------- ResNet-18 U-Net
class ResNet18UNet(nn.Module):
    """A torchvision ResNet-18 encoder (random init, BatchNorm) with a transposed-conv decoder.

    The time embedding is added to every encoder stage and every decoder block. Five halvings:
    image_size must be a multiple of 32.
    """

    def __init__(self, in_channels: int = 3, time_emb_dim: int = 128):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.time_emb_dim = time_emb_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(time_emb_dim, time_emb_dim), nn.SiLU(), nn.Linear(time_emb_dim, time_emb_dim)
        )
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)  # /2, 64
        # /4../32
        self.stages = nn.ModuleList(
            [nn.Sequential(net.maxpool, net.layer1), net.layer2, net.layer3, net.layer4]
        )
        enc_chs = [64, 64, 128, 256, 512]
        self.enc_temb = nn.ModuleList(nn.Linear(time_emb_dim, c) for c in enc_chs)
        self.dec = nn.ModuleList()
        self.dec_temb = nn.ModuleList()
        cur = 512
        for skip in [256, 128, 64, 64]:
            self.dec.append(
                nn.ModuleList(
                    [
                        nn.ConvTranspose2d(cur, skip, 4, 2, 1),
                        nn.Conv2d(2 * skip, skip, 3, padding=1),
                        nn.BatchNorm2d(skip),
                    ]
                )
            )
            self.dec_temb.append(nn.Linear(time_emb_dim, skip))
            cur = skip
        self.head = nn.Sequential(
            nn.ConvTranspose2d(cur, 32, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, in_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(
                f"ResNet18UNet needs H and W divisible by 32, got {tuple(x.shape[-2:])}"
            )
        temb = self.time_mlp(timestep_embedding(t, self.time_emb_dim))
        h = self.stem(x) + self.enc_temb[0](temb)[:, :, None, None]
        skips = [h]
        for stage, proj in zip(self.stages, self.enc_temb[1:]):
            h = stage(h) + proj(temb)[:, :, None, None]
            skips.append(h)
        skips.pop()  # the bottleneck itself
        for (upconv, conv, norm), proj in zip(self.dec, self.dec_temb):
            h = upconv(h)
            h = (
                F.relu(norm(conv(torch.cat([h, skips.pop()], dim=1))))
                + proj(temb)[:, :, None, None]
            )
        return self.head(h)


# ---------------------------------------------------------------------------------- factory
MODEL_PRESETS: tuple[str, ...] = (*UNET_PRESETS, "simple", "resnet18")


def build_model(
    preset: str = "small", image_size: int = 32, in_channels: int = 3, **overrides
) -> nn.Module:
    """Build a denoising network by preset name (see ``MODEL_PRESETS``).

    The DDPM presets accept :class:`UNetConfig` field overrides, e.g. ``dropout=0.0``.
    """
    if preset in UNET_PRESETS:
        return UNet(
            replace(
                UNET_PRESETS[preset], image_size=image_size, in_channels=in_channels, **overrides
            )
        )
    if preset == "simple":
        model = SimpleUNet(in_channels, **overrides)
        factor = model.factor
    elif preset == "resnet18":
        model, factor = ResNet18UNet(in_channels, **overrides), 32
    else:
        raise ValueError(
            f"unknown model preset {preset!r}; valid choices: {', '.join(MODEL_PRESETS)}"
        )
    if image_size % factor:
        raise ValueError(
            f"model {preset!r} needs image_size divisible by {factor}, got {image_size}"
        )
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
