"""Checkpoints: atomic writes, safe loads, and a model rebuilt from the file alone.

A checkpoint is a dict of tensors and plain containers, loaded with ``torch.load(weights_only=True)``
so that a file from elsewhere can never run code. It holds the training config (``config``), the
network's constructor arguments (``model_args``: preset, image size and overrides, the nanoGPT
pattern), the EMA weights (``ema``) and the step; a full training checkpoint adds the raw weights,
optimizer, scaler and RNG states. :func:`export_weights` keeps only what sampling needs.
"""

from __future__ import annotations

import csv
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
LOG_NAME = "loss.csv"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # shipped with the package
# EMA weights of the toy-cars model (README: how it was trained)
PRETRAINED = WEIGHTS_DIR / "pretrained_toy_cars_32.pt"
# the toy-cars model shipped before the recipe study: eps, linear, T = 1000
STUDY_MODEL = WEIGHTS_DIR / "study_toy_cars_32.pt"


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
    if path.is_dir():
        hint = (
            f"; did you mean {path / CHECKPOINT_NAME}?"
            if (path / CHECKPOINT_NAME).is_file()
            else ""
        )
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a checkpoint: torch.save files are zip archives, this one is not (text, random bytes, or truncated)"
        )
    try:  # torch.load does not check the archive's CRC-32 sums: a flipped bit would load as a wrong weight
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(exc).__name__}); use an earlier copy"
        ) from exc
    if damaged is not None:
        raise CheckpointError(
            f"{path} is corrupt: its part {damaged!r} fails its checksum (a damaged copy or disk); use an earlier copy"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it holds Python objects beyond tensors and plain containers, and loading those can run code"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(exc).__name__}); use an earlier copy"
        ) from exc
    if not isinstance(ckpt, dict) or not {"config", "ema"} <= set(ckpt):
        what = (
            type(ckpt).__name__
            if not isinstance(ckpt, dict)
            else f"a dict with keys {sorted(ckpt)[:6]}"
        )
        raise CheckpointError(
            f"{path} is not a ddpm_lib checkpoint: it holds {what}, expected 'config' and 'ema' (weights)"
        )
    _check_contents(ckpt, path)
    return ckpt


def _check_contents(ckpt: dict, path: Path) -> None:
    """Refuse a checkpoint whose parts have the wrong types, or whose ``model_args`` contradict its config."""
    problems = []
    if not isinstance(ckpt["config"], dict):
        problems.append(f"'config' is a {type(ckpt['config']).__name__}, not a dict")
    if not isinstance(ckpt["ema"], dict) or not all(
        isinstance(v, torch.Tensor) for v in ckpt["ema"].values()
    ):
        problems.append("'ema' is not a dict of tensors")
    args = ckpt.get("model_args")
    if args is not None and not isinstance(args, dict):
        problems.append(f"'model_args' is a {type(args).__name__}, not a dict")
    if problems:
        raise CheckpointError(f"{path} is not a usable ddpm_lib checkpoint: {'; '.join(problems)}")
    cfg = ckpt["config"]
    if args and cfg:
        said = {
            "preset": (args.get("preset"), cfg.get("model")),
            "image_size": (args.get("image_size"), cfg.get("image_size")),
        }
        differ = [f"{k} {a!r} vs config {c!r}" for k, (a, c) in said.items() if a != c]
        if differ:
            raise CheckpointError(
                f"{path} contradicts itself: its model_args say {', '.join(differ)}; the file was edited or mixed from two runs, "
                "export it again from the training checkpoint"
            )


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


def _state(weights: dict, dtype: torch.dtype | None = None) -> dict:
    """EMA state without AveragedModel's ``module.`` prefix and counter; floating tensors cast to ``dtype``."""
    return {
        k.removeprefix("module."): v.to(dtype) if dtype is not None and v.is_floating_point() else v
        for k, v in weights.items()
        if k != "n_averaged"
    }


def load_ema_model(
    path: str | os.PathLike = PRETRAINED, device: str | torch.device = "cpu"
) -> tuple[nn.Module, GaussianDiffusion, TrainConfig]:
    """The EMA model (eval mode, float32) on ``device``, its diffusion and its config, from a checkpoint or exported weights.

    The model's convolution weights are channels-last, the layout the trainer uses: on a CPU its convolutions,
    and so sampling, run faster so (DDIM of 64 images about 1.2x, fp32 or bf16; ``benchmarks/bench.py``).
    """
    path = Path(path)
    ckpt = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} holds a config this version cannot read: {exc}") from exc
    try:
        model = build_model_from_checkpoint(ckpt)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: cannot build its network from model_args {ckpt.get('model_args')!r}: {exc}"
        ) from exc
    state = _state(ckpt["ema"], torch.float32)
    mismatch = _state_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(
            f"{path}: its weights do not fit a {cfg.model!r} network at {cfg.image_size}px ({mismatch})"
        )
    model.load_state_dict(state)
    return (
        model.to(device, memory_format=torch.channels_last).eval(),
        diffusion_from_config(cfg),
        cfg,
    )


def _state_mismatch(expected: dict, given: dict) -> str:
    """A one-line summary of how ``given`` differs from a network's ``expected`` state dict ('' when it fits)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: file {tuple(given[k].shape)}, network {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    parts = [
        f"{len(names)} {what} (first: {names[0]})"
        for names, what in (
            (missing, "missing tensor(s)"),
            (unexpected, "unexpected tensor(s)"),
            (shapes, "shape mismatch(es)"),
        )
        if names
    ]
    return "; ".join(parts)


def export_weights(
    checkpoint: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype = torch.bfloat16
) -> int:
    """Write the EMA weights of ``checkpoint`` in ``dtype`` with its config and model args (a few MB); returns the size."""
    ckpt = load_checkpoint(checkpoint)
    args = checkpoint_model_args(ckpt)
    save_atomic(
        {
            "config": ckpt["config"],
            "model_args": args,
            "ema": _state(ckpt["ema"], dtype),
            "step": ckpt.get("step", 0),
        },
        out,
    )
    return Path(out).stat().st_size


def prepare_run_dir(out_dir: str | os.PathLike | None, resume: bool) -> Path | None:
    """Check the run folder before any work: writable, not a file, not holding another run."""
    if out_dir is None:
        if resume:
            raise ValueError("resume=True needs out_dir, the folder that holds checkpoint.pt")
        return None
    if str(out_dir).strip() == "":
        raise ValueError(
            "the run folder (--out) is an empty string; name a folder, e.g. runs/toy32"
        )
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"the run folder {path} is a file; choose a folder")
    if resume:
        return path
    if (path / CHECKPOINT_NAME).exists():
        raise ValueError(
            f"{path} already holds a training run; resume it (resume=True, --resume) or choose another folder"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"cannot write to the run folder {path}: {exc.strerror or exc}") from exc
    # a run that stopped before its first checkpoint: start it again
    (path / LOG_NAME).unlink(missing_ok=True)
    return path


def append_log_row(path: Path, row: dict[str, float]) -> None:
    """Append one row to the run's loss log (CSV with a header)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def truncate_log(path: Path, step: int) -> list[dict[str, float]]:
    """Drop log rows after ``step`` (a killed run wrote them; the resumed run repeats those steps); returns the rows kept."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= step]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    os.replace(tmp, path)
    return [{k: float(v) for k, v in r.items()} for r in rows]
