"""Checkpoints: atomic writes, safe loads, and a model rebuilt from the file alone.

A checkpoint is a dict of tensors and plain containers, loaded with ``torch.load(weights_only=True)``
so that a file from elsewhere can never run code. It holds the training config (``config``), the
network's constructor arguments (``model_args``: preset, image size and overrides, the nanoGPT
pattern), the EMA weights (``ema``) and the step; a full training checkpoint adds the raw weights,
optimizer, scaler and RNG states. :func:`export_weights` keeps only what sampling needs.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from ddpm_lib.config import TrainConfig
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.schedules import make_betas
from ddpm_lib.unet import build_model

CHECKPOINT_NAME = "checkpoint.pt"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # shipped with the package
PRETRAINED = WEIGHTS_DIR / "pretrained_toy_cars_32.pt"  # EMA weights of the toy-cars model (README: how it was trained)


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names the file and what is wrong with it."""


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    On any failure (a full disk, an interrupt) the temporary file is removed and ``path`` keeps its
    previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, never arbitrary code.

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` (one line naming the
    file) for anything that is not a ddpm_lib checkpoint: empty, truncated, text, pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a checkpoint: torch.save files are zip archives, this one is not (text, random bytes, or truncated)"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it holds Python objects beyond tensors and plain containers, and loading those can run code"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({type(exc).__name__}); use an earlier copy") from exc
    if not isinstance(ckpt, dict) or not {"config", "ema"} <= set(ckpt):
        what = type(ckpt).__name__ if not isinstance(ckpt, dict) else f"a dict with keys {sorted(ckpt)[:6]}"
        raise CheckpointError(f"{path} is not a ddpm_lib checkpoint: it holds {what}, expected 'config' and 'ema' (weights)")
    return ckpt


def model_args(cfg: TrainConfig) -> dict:
    """The constructor arguments of the config's network: ``build_model(**model_args(cfg))`` rebuilds it."""
    overrides = {} if cfg.dropout is None or cfg.model in ("simple", "resnet18") else {"dropout": cfg.dropout}
    return {"preset": cfg.model, "image_size": cfg.image_size, **overrides}


def build_model_from_checkpoint(ckpt: dict) -> nn.Module:
    """An untrained network of the checkpoint's architecture (from ``model_args``, else from its config)."""
    args = ckpt.get("model_args") or model_args(TrainConfig.from_dict(ckpt["config"]))
    return build_model(**args)


def diffusion_from_config(cfg: TrainConfig) -> GaussianDiffusion:
    """The noise process a run trained with: schedule, T and the reverse variance."""
    return GaussianDiffusion(make_betas(cfg.schedule, cfg.num_timesteps), cfg.variance_type)


def _state(weights: dict, dtype: torch.dtype | None = None) -> dict:
    """EMA state without AveragedModel's ``module.`` prefix and counter; floating tensors cast to ``dtype``."""
    return {k.removeprefix("module."): v.to(dtype) if dtype is not None and v.is_floating_point() else v
            for k, v in weights.items() if k != "n_averaged"}  # fmt: skip


def load_ema_model(
    path: str | os.PathLike = PRETRAINED, device: str | torch.device = "cpu"
) -> tuple[nn.Module, GaussianDiffusion, TrainConfig]:
    """The EMA model (eval mode, float32) on ``device``, its diffusion and its config, from a checkpoint or exported weights."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} holds a config this version cannot read: {exc}") from exc
    model = build_model_from_checkpoint(ckpt)
    try:
        model.load_state_dict(_state(ckpt["ema"], torch.float32))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:2]
        raise CheckpointError(f"{path}: its weights do not fit a {cfg.model!r} network at {cfg.image_size}px ({' '.join(first)})") from exc
    return model.to(device).eval(), diffusion_from_config(cfg), cfg


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype = torch.bfloat16) -> int:
    """Write the EMA weights of ``checkpoint`` in ``dtype`` with its config and model args (a few MB); returns the size."""
    ckpt = load_checkpoint(checkpoint)
    args = ckpt.get("model_args") or model_args(TrainConfig.from_dict(ckpt["config"]))
    save_atomic({"config": ckpt["config"], "model_args": args, "ema": _state(ckpt["ema"], dtype), "step": ckpt["step"]}, out)
    return Path(out).stat().st_size
