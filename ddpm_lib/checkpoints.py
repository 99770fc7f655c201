"""Checkpoints: atomic writes, safe loads, and a model rebuilt from the file alone.

A checkpoint is a dict of tensors and plain containers, loaded with ``torch.load(weights_only=True)``
so that a file from elsewhere can never run code. It holds the training config (``config``), the
network's constructor arguments (``model_args``: preset, image size and overrides, the nanoGPT
pattern), the EMA weights (``ema``) and the step; a full training checkpoint adds the raw weights,
optimizer, scaler and RNG states. :func:`export_weights` keeps only what sampling needs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import pickle
import weakref
import zipfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import torch
from torch import nn

from ddpm_lib.build import (
    build_model_from_checkpoint,
    checkpoint_model_args,
    diffusion_from_config,
)
from ddpm_lib.config import TrainConfig
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.outputs import OutputError, write_atomic, write_text_atomic

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "loss.csv"
LOCK_NAME = ".run.lock"  # the lock of a run folder; it also marks the folder as a run's
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # shipped with the package
# the paper's DDPM (--preset ddpm: eps, linear schedule, T = 1000) that notebook 05 trains and
# notebooks 06 and 07 study
DDPM_MODEL = WEIGHTS_DIR / "ddpm_toy_cars_32.pt"
# the recipe notebook 08 arrives at (--preset cpu: v + Min-SNR-5, cosine, T = 500, no attention)
PRETRAINED = WEIGHTS_DIR / "pretrained_toy_cars_32.pt"
# flow matching on that recipe's network (--preset flow), 708 steps: 15 minutes of a 2-core CPU (notebook 11)
FLOW_MODEL = WEIGHTS_DIR / "flow_toy_cars_32.pt"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names the file and what is wrong with it."""


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    On any failure (a full disk, an interrupt) the temporary file is removed and ``path`` keeps its
    previous content (:func:`ddpm_lib.outputs.write_atomic`; a write error is an ``OutputError``).
    """
    write_atomic(path, lambda f: torch.save(obj, f))


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
    if "model_card" in ckpt and card_problem(ckpt["model_card"]):
        problems.append(card_problem(ckpt["model_card"]))
    if problems:
        raise CheckpointError(f"{path} is not a usable ddpm_lib checkpoint: {'; '.join(problems)}")
    _check_step(ckpt, path)
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


MAX_STEP = 10**9  # a billion optimiser steps: beyond any run; a larger step is an edited file


def _check_step(ckpt: dict, path: Path) -> None:
    step = ckpt.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise CheckpointError(
            f"{path}: its 'step' must be an integer in [0, {MAX_STEP}], got {step!r}; "
            "the file was edited or damaged, use an earlier copy"
        )


def card_problem(card) -> str:
    """What is wrong with a ``model_card`` entry (:mod:`ddpm_lib.model_card`); '' when it is usable.

    A card is a dict with an integer ``card_version``; its ``recipe``, ``data`` and ``training`` are dicts,
    its ``metrics`` and ``notes`` lists. A file without a card is fine (files written before cards).
    """
    if not isinstance(card, dict):
        return f"'model_card' is a {type(card).__name__}, not a dict"
    version = card.get("card_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return f"'model_card' has no valid card_version (got {version!r})"
    wrong = [k for k in ("recipe", "data", "training") if not isinstance(card.get(k, {}), dict)]
    wrong += [k for k in ("metrics", "notes") if not isinstance(card.get(k, []), list)]
    return f"'model_card' parts {wrong} have the wrong type" if wrong else ""


def check_training_state(ckpt: dict, path: str | os.PathLike) -> None:
    """Refuse a checkpoint that cannot continue a run: one line naming the file and the field.

    Checks what :meth:`ddpm_lib.training.Trainer` restores: ``model`` (a dict of finite tensors: NaN
    weights would only be resumed), ``optimizer``, ``scaler``, ``rng`` (uint8 CPU state) and
    ``world_size``; the shapes are checked against the network when they are loaded.
    """
    path = Path(path)
    if not {"model", "optimizer", "rng"} <= set(ckpt):
        raise CheckpointError(
            f"{path} holds exported weights (for sampling), not a training state to resume"
        )

    def refuse(field: str, what: str) -> None:
        raise CheckpointError(
            f"{path}: its {field!r} {what}; the file was edited or damaged, use an earlier copy"
        )

    model, opt, rng = ckpt["model"], ckpt["optimizer"], ckpt["rng"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        refuse("model", "is not a dict of tensors")
    if (
        not isinstance(opt, dict)
        or not isinstance(opt.get("state"), dict)
        or not isinstance(opt.get("param_groups"), list)
    ):
        refuse("optimizer", "is not an optimizer state (a dict with 'state' and 'param_groups')")
    if not isinstance(ckpt.get("scaler", {}), dict):
        refuse("scaler", f"is a {type(ckpt['scaler']).__name__}, not a dict")
    cpu = rng.get("cpu") if isinstance(rng, dict) else None
    if not isinstance(cpu, torch.Tensor) or cpu.dtype != torch.uint8:
        refuse("rng", "has no CPU generator state (a uint8 tensor under 'cpu')")
    world = ckpt.get("world_size", 1)
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        refuse("world_size", f"must be an integer >= 1, got {world!r}")
    bad = next(
        (k for k, v in model.items() if v.is_floating_point() and not v.isfinite().all()), None
    )
    if bad is not None:
        raise CheckpointError(
            f"{path}: its raw weights ('model', first: {bad}) hold NaN or inf values, so resuming would continue "
            "from them; restore an earlier copy of the checkpoint, or start a new run (another folder) with a lower --lr"
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
    mismatch = state_mismatch(model.state_dict(), state)
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


def state_mismatch(expected: dict, given: dict) -> str:
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
    """Write the EMA weights of ``checkpoint`` in ``dtype`` with its config, model args and model card (a few MB); returns the size."""
    ckpt = load_checkpoint(checkpoint)
    args = checkpoint_model_args(ckpt)
    card = {"model_card": ckpt["model_card"]} if "model_card" in ckpt else {}
    save_atomic(
        {
            "config": ckpt["config"],
            "model_args": args,
            "ema": _state(ckpt["ema"], dtype),
            "step": ckpt.get("step", 0),
            **card,
        },
        out,
    )
    return Path(out).stat().st_size


class RunLock:
    """An exclusive lock on a run folder (``fcntl.flock`` on its :data:`LOCK_NAME` file), held while alive.

    The operating system releases it when the process ends, however it ends, so a killed run leaves
    no stale lock. One process shares one lock per folder (a notebook may hold two trainers on it).
    """

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self._file = open(self.path, "a+")  # noqa: SIM115 (held open: the open file is the lock)
        if fcntl is None:  # Windows: the file still marks the folder as a run's
            return
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip()
            self._file.close()
            raise RunFolderBusy(
                f"the run folder {folder} is in use by another training"
                f"{f' (process {holder})' if holder.isdigit() else ''}; "
                "wait for it to end, or choose another folder (--out)"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        """Give the folder back (closing the file releases the lock)."""
        if getattr(self, "_file", None) is not None:
            self._file.close()

    def __del__(self):
        self.release()


class RunFolderBusy(ValueError):
    """Another process trains into the run folder right now."""


_LOCKS: weakref.WeakValueDictionary[str, RunLock] = weakref.WeakValueDictionary()


def lock_run_dir(folder: Path) -> RunLock:
    """The lock of ``folder`` for this process: taken now, or shared with a holder in this process."""
    key = str(folder.resolve())
    lock = _LOCKS.get(key)
    if lock is None:
        lock = _LOCKS[key] = RunLock(folder)
    return lock


def check_run_dir(out_dir: str | os.PathLike | None, resume: bool) -> Path | None:
    """Check the run folder before any work, writing nothing: ``None`` for no folder, else its path.

    Refused: an empty name, a file, a path under a file or in a folder that cannot be written, a
    folder that holds a run (unless ``resume``), and a non-empty folder that is not a run folder (no
    :data:`LOCK_NAME` file): nothing of a user's folder is deleted or overwritten.
    """
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
    if resume:  # no checkpoint: the trainer says so
        return path
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(
            f"cannot write to the run folder {path}: Not a directory ({existing} is a file)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to the run folder {path}: Permission denied")
    _check_fresh(path)
    return path


def _check_fresh(path: Path) -> None:
    """A new run may use an empty folder or a run folder without a checkpoint (a run that stopped early)."""
    if (path / CHECKPOINT_NAME).exists():
        raise ValueError(
            f"{path} already holds a training run; resume it (resume=True, --resume) or choose another folder"
        )
    if not path.is_dir() or (path / LOCK_NAME).exists():
        return
    foreign = sorted(q.name for q in path.iterdir() if not q.name.startswith("."))
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise ValueError(
            f"the run folder {path} holds files that are not a training run's ({shown}); "
            "to continue a run use --resume (resume=True), otherwise choose a new or empty folder"
        )


def claim_run_dir(path: Path, resume: bool) -> RunLock | None:
    """Create and lock a folder that :func:`check_run_dir` passed, once the run is built; the caller keeps the lock.

    Checked again under the lock (another run may have started meanwhile). A run that stopped before
    its first checkpoint starts again: its ``loss.csv`` is removed.
    """
    if resume:
        return lock_run_dir(path) if (path / CHECKPOINT_NAME).is_file() else None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot write to the run folder {path}: {exc.strerror or exc}") from exc
    lock = lock_run_dir(path)
    _check_fresh(path)
    (path / LOG_NAME).unlink(missing_ok=True)
    return lock


def prepare_run_dir(out_dir: str | os.PathLike | None, resume: bool) -> Path | None:
    """:func:`check_run_dir` and :func:`claim_run_dir` at once, for callers that keep the folder for the
    whole process (the lock stays held)."""
    path = check_run_dir(out_dir, resume)
    if path is not None:
        lock = claim_run_dir(path, resume)
        if lock is not None:
            _HELD.append(lock)
    return path


_HELD: list[RunLock] = []


def append_log_row(path: Path, row: dict[str, float]) -> None:
    """Append one row to the run's loss log (CSV with a header) in one write.

    A write that fails (a full disk) is cut back to the rows before it and raised as
    :class:`~ddpm_lib.outputs.OutputError`: earlier rows are never lost or joined to a partial one.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(row))
    if not path.exists() or path.stat().st_size == 0:
        writer.writeheader()
    writer.writerow(row)
    data = buffer.getvalue().encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise OutputError(
                f"cannot append to {path} ({exc.strerror or exc}); its earlier rows are kept"
            ) from exc
    finally:
        os.close(fd)


def truncate_log(path: Path, step: int) -> list[dict[str, float]]:
    """Drop log rows after ``step`` (a killed run wrote them; the resumed run repeats those steps); returns the rows kept.

    Rows that do not parse (a partial last line of a killed run) are dropped too; the file is rewritten atomically.
    """
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                values = {k: float(v) for k, v in r.items() if k is not None}
            except (TypeError, ValueError):
                continue
            if None not in r and "step" in values and int(values["step"]) <= step:
                rows.append((r, values))
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0][0]))
        writer.writeheader()
        writer.writerows(r for r, _ in rows)
    write_text_atomic(path, buffer.getvalue())
    return [values for _, values in rows]
