"""Builders: a config (or a checkpoint's stored arguments) turned into a network and a noise process.

``build_model(**model_args(cfg))`` is the network a run trains (the nanoGPT pattern: a checkpoint
stores the constructor's arguments, so the file alone rebuilds its network), and
:func:`diffusion_from_config` the process it trains and samples with.
"""

from __future__ import annotations

from torch import nn

from ddpm_lib.config import TrainConfig
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.schedules import make_betas
from ddpm_lib.unet import build_model


def model_args(cfg: TrainConfig) -> dict:
    """The constructor arguments of the config's network: ``build_model(**model_args(cfg))`` rebuilds it."""
    overrides = (
        {}
        if cfg.dropout is None or cfg.model in ("simple", "resnet18")
        else {"dropout": cfg.dropout}
    )
    for name in ("base_channels", "num_res_blocks", "attention_resolutions"):
        if getattr(cfg, name) is not None:
            overrides[name] = getattr(cfg, name)
    if cfg.num_classes:
        overrides["num_classes"] = cfg.num_classes
    return {"preset": cfg.model, "image_size": cfg.image_size, **overrides}


def checkpoint_model_args(ckpt: dict) -> dict:
    """The checkpoint's stored ``model_args``, or, for files written before they were stored, those of its config."""
    return ckpt.get("model_args") or model_args(TrainConfig.from_dict(ckpt["config"]))


def build_model_from_checkpoint(ckpt: dict) -> nn.Module:
    """An untrained network of the checkpoint's architecture."""
    return build_model(**checkpoint_model_args(ckpt))


def diffusion_from_config(cfg: TrainConfig) -> GaussianDiffusion:
    """The noise process a run trained with: schedule, T, the reverse variance and what the network predicts."""
    return GaussianDiffusion(
        make_betas(cfg.schedule, cfg.num_timesteps), cfg.variance_type, cfg.prediction_type
    )
