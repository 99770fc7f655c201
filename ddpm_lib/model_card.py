"""Model cards: what a weights file is, how it was trained, how well it does, and the command that rebuilds it.

A card is a small dict of plain values (str, int, float, bool, None, and lists and dicts of them) stored
under ``model_card`` in a checkpoint, so it loads with ``torch.load(weights_only=True)`` like the rest.
The trainer writes one into every checkpoint, :func:`~ddpm_lib.checkpoints.export_weights` carries it
over, and ``python -m ddpm_lib.sample --checkpoint FILE --info`` prints it (:func:`describe_file`).
Version 1 holds:

- ``title``: one line naming the model and its recipe;
- ``recipe``: the config fields that define the network, the objective and the optimisation, and the
  number of parameters;
- ``data``: dataset, split, image size, number of images, seed and a fingerprint of the images;
- ``training``: steps, seconds spent in optimiser steps, and the hardware each part of the run used
  (device and its name, bf16 instructions, threads, processes, precision, torch version);
- ``command``: ``python -m ddpm_lib.train`` with every flag that rebuilds the run's config
  (:func:`train_command`; ``config_from_args`` of it gives the config back field for field);
- ``metrics``: measured scores, each with its protocol and the file it comes from (empty until measured);
- ``notes``: provenance the fields above cannot say.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import shlex
import textwrap
import zipfile
from pathlib import Path

import torch

from ddpm_lib.checkpoints import CheckpointError, card_problem, load_checkpoint, save_atomic
from ddpm_lib.config import PRESETS, TrainConfig
from ddpm_lib.devices import BF16_FLAGS, cpu_model_and_flags
from ddpm_lib.unet import UNET_PRESETS

CARD_VERSION = 1
# the config fields that define the network, the objective and the optimisation
RECIPE_FIELDS = (
    "model",
    "base_channels",
    "num_res_blocks",
    "attention_resolutions",
    "dropout",
    "schedule",
    "num_timesteps",
    "prediction_type",
    "loss_type",
    "snr_gamma",
    "variance_type",
    "class_cond",
    "p_uncond",
    "num_classes",
    "class_names",
    "batch_size",
    "lr",
    "warmup_steps",
    "optimizer",
    "weight_decay",
    "grad_clip",
    "ema_decay",
    "ema_warmup",
)
# the trainer sets these from the dataset's classes, so a command never names them
DERIVED_FIELDS = frozenset({"num_classes", "class_names"})
# boolean fields with a switch of their own on the train CLI
_SWITCH_ON = ("class_cond", "compile", "deterministic")  # --class-cond turns a False default on
_SWITCH_OFF = ("channels_last", "ema_warmup")  # --no-channels-last turns a True default off


# ---------------------------------------------------------------------------------- the command
def _flag(name: str, value) -> list[str] | None:
    """The train CLI's words that set field ``name`` to ``value``; None when no flag can (e.g. back to None)."""
    option = "--" + name.replace("_", "-")
    if name in _SWITCH_ON:
        return [option] if value else None
    if name in _SWITCH_OFF:
        return None if value else ["--no-" + name.replace("_", "-")]
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return [option, *(str(v) for v in value)]
    return [option, repr(value) if isinstance(value, float) else str(value)]


def _overrides_for(cfg: TrainConfig, preset: str) -> dict | None:
    """The fields to give ``PRESETS[preset]`` so that it builds ``cfg``; None when the CLI cannot say them."""
    target = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)}
    given: dict = {}
    # a given field may move another default (cpu_demo's attention follows the model): repeat until none differ
    for _ in range(len(target)):
        try:
            rebuilt = PRESETS[preset](**given)
        except ValueError:
            return None
        differ = [k for k in target if k not in DERIVED_FIELDS and getattr(rebuilt, k) != target[k]]
        if not differ:
            break
        if any(k in given or _flag(k, target[k]) is None for k in differ):
            return None
        given.update({k: target[k] for k in differ})
    return given


def config_flags(cfg: TrainConfig) -> list[str]:
    """The shortest ``--preset NAME --flag VALUE ...`` that ``python -m ddpm_lib.train`` turns into ``cfg``.

    Every field that differs from the preset's default is named, so ``config_from_args`` of the result
    equals ``cfg`` field for field (but ``num_classes`` and ``class_names``, which the trainer reads from the
    data). Raises ``ValueError`` when no preset and flags can express the config.
    """
    choices = {name: _overrides_for(cfg, name) for name in PRESETS}
    choices = {name: given for name, given in choices.items() if given is not None}
    if not choices:
        raise ValueError(f"no --preset and flags of python -m ddpm_lib.train rebuild {cfg}")
    preset = min(choices, key=lambda name: len(choices[name]))
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name in choices[preset]]
    return ["--preset", preset, *(word for k in names for word in _flag(k, choices[preset][k]))]


def train_command(cfg: TrainConfig, out: str | os.PathLike = "runs/run", processes: int = 1) -> str:
    """The shell command that trains ``cfg`` into the folder ``out`` (``torchrun`` for several processes)."""
    launcher = (
        "python -m ddpm_lib.train"
        if processes == 1
        else f"torchrun --nproc_per_node={processes} -m ddpm_lib.train"
    )
    return shlex.join([*launcher.split(), *config_flags(cfg), "--out", os.fspath(out)])


# ---------------------------------------------------------------------------------- the card's parts
def recipe(cfg: TrainConfig, parameters: int | None = None) -> dict:
    """The config fields that define the network, the objective and the optimisation, plus the parameter count."""
    out = {name: _plain(getattr(cfg, name)) for name in RECIPE_FIELDS}
    if parameters is not None:
        out["parameters"] = int(parameters)
    return out


def data_entry(cfg: TrainConfig, num_images: int, images_sha1: str | None = None) -> dict:
    """The training data: dataset, split, size, count, seed, and :func:`images_fingerprint` of its images."""
    entry = {
        "dataset": cfg.dataset,
        "split": "train",
        "image_size": cfg.image_size,
        "num_images": int(num_images),
        "seed": cfg.seed,
    }
    if cfg.data_root is not None:
        entry["data_root"] = cfg.data_root
    if images_sha1 is not None:
        entry["images_sha1"] = images_sha1
    return entry


def images_fingerprint(images: torch.Tensor) -> str:
    """The first 16 hex digits of the SHA-1 of ``images`` (any shape, e.g. uint8 ``(N, 3, H, W)``), in C order."""
    data = images.detach().cpu().contiguous().numpy().tobytes()
    return hashlib.sha1(data).hexdigest()[:16]


def hardware(device: torch.device, precision: str, processes: int = 1) -> dict:
    """Where a run trained: device type and name, bf16 instructions (CPU) or support (GPU), threads, precision, torch."""
    device = torch.device(device)
    entry: dict = {"device": device.type}
    if device.type == "cuda":
        entry["name"] = str(torch.cuda.get_device_name(device))
        entry["bf16"] = bool(torch.cuda.is_bf16_supported())
    elif device.type == "cpu":
        name, flags = cpu_model_and_flags()
        entry["name"] = name
        entry["bf16"] = any(f in flags for f in BF16_FLAGS)
        entry["threads"] = torch.get_num_threads()
    else:
        entry["name"] = "Apple GPU (MPS)" if device.type == "mps" else device.type
    entry.update(processes=processes, precision=precision, torch=str(torch.__version__))
    return entry


def add_training(sessions: list[dict], where: dict, steps: int, seconds: float) -> list[dict]:
    """``sessions`` with ``steps`` and ``seconds`` trained on ``where`` (a :func:`hardware` entry) added."""
    out = [dict(s) for s in sessions]
    same = next((s for s in out if {k: s.get(k) for k in where} == where), None)
    if same is None:
        out.append({**where, "steps": 0, "seconds": 0.0})
        same = out[-1]
    same["steps"] += int(steps)
    same["seconds"] = round(same["seconds"] + float(seconds), 1)
    return out


def new_card(
    cfg: TrainConfig,
    *,
    command: str,
    steps: int,
    sessions: list[dict],
    data: dict,
    parameters: int | None = None,
    title: str | None = None,
    metrics: list[dict] | None = None,
    notes: list[str] | None = None,
    timed: str = "the optimiser steps; sample grids and checkpoints excluded",
) -> dict:
    """A version-1 card (module docstring); ``sessions`` are :func:`add_training`'s per-hardware entries.

    ``timed`` says what the training seconds measure.
    """
    times = [s.get("seconds") for s in sessions]
    known = bool(times) and all(isinstance(t, (int, float)) for t in times)
    return {
        "card_version": CARD_VERSION,
        "title": title or recipe_summary(cfg),
        "recipe": recipe(cfg, parameters),
        "data": data,
        "training": {
            "steps": int(steps),
            "seconds": round(sum(times), 1) if known else None,  # None: not recorded
            "timed": timed,
            "hardware": sessions,
        },
        "command": command,
        "metrics": list(metrics or []),
        "notes": list(notes or []),
    }


def metric(name: str, value, std, protocol: str, source: str, baseline=None) -> dict:
    """One measured score of a card: its value, its spread (None: none measured), how and where it was measured.

    ``baseline`` is the same score of real held-out images against the reference (None: not measured).
    """
    out = {"name": name, "value": float(value), "std": None if std is None else float(std)}
    if baseline is not None:
        out["baseline"] = float(baseline)
    return {**out, "protocol": protocol, "source": source}


def evaluation_metrics(result: dict, source: str) -> list[dict]:
    """The card's metrics from a result of ``python -m ddpm_lib.evaluate --checkpoint`` (its ``--json``).

    FID, KID, precision, recall and class TV of the samples, with the bootstrap spread and the real-vs-real
    baseline where measured, and bits/dim when estimated; ``source`` names where the result is kept.
    """
    spread, base = result.get("spread") or {}, result.get("baseline") or {}
    samples = (
        f"{result['num_samples']:,} {result['sampler'].upper()}-{result['num_steps']} "
        f"eta {result['eta']:g} samples ({result['sampling_precision']}, seed {result['seed']}) vs "
        f"{result['num_reference']:,} training images, {result['features']}"
    )
    if spread:
        samples += f"; ± bootstrap std ({result['bootstrap']} resamples; KID: std over its subsets)"
    if base:
        samples += (
            f"; in parentheses: {base['num_samples']:,} held-out test images scored the same way"
        )
    rows = [
        ("FID", "fid", spread.get("fid")),
        ("KID", "kid_mean", result.get("kid_std")),
        ("precision (k = 3)", "precision", spread.get("precision")),
        ("recall (k = 3)", "recall", spread.get("recall")),
        ("class TV (body types)", "class_tv", spread.get("class_tv")),
    ]
    out = [
        metric(name, result[key], sd, samples, source, base.get(key))
        for name, key, sd in rows
        if result.get(key) is not None
    ]
    if result.get("bits_per_dim") is not None:
        exact = "every t" if result.get("bpd_exact") else f"{result['bpd_timesteps']} log-spaced t"
        bpd = f"{result['bpd_images']} test images, {exact} (an estimate of the bound)"
        out.append(
            metric("bits/dim", result["bits_per_dim"], result.get("bits_per_dim_sem"), bpd, source)
        )
    return out


def add_metrics(path: str | os.PathLike, metrics: list[dict]) -> None:
    """Write ``metrics`` into the model card of the checkpoint ``path``, atomically, the rest of the file
    unchanged. A stored metric with the same name, protocol and source as a new one is replaced."""
    ckpt = load_checkpoint(path)
    card = ckpt.get("model_card")
    if card is None or card_problem(card):
        raise CheckpointError(
            f"{path} has no usable model card to write scores into (a file written before cards "
            "existed, or by other code): keep the scores in the --json file instead"
        )
    new = {(m["name"], m["protocol"], m["source"]) for m in metrics}
    kept = [
        m for m in card.get("metrics", []) if (m["name"], m["protocol"], m["source"]) not in new
    ]
    save_atomic({**ckpt, "model_card": {**card, "metrics": kept + list(metrics)}}, path)


def recipe_summary(cfg: TrainConfig) -> str:
    """One line: the network and the objective, e.g. ``small U-Net, no attention; v_prediction + Min-SNR-5, ...``."""
    preset = UNET_PRESETS.get(cfg.model)
    sizes = cfg.attention_resolutions
    if sizes is None and preset is not None:
        sizes = preset.attention_resolutions
    attention = (
        "" if sizes is None else f", attention at {list(sizes)}" if sizes else ", no attention"
    )
    weighting = f" + Min-SNR-{cfg.snr_gamma:g}" if cfg.snr_gamma else ""
    labels = f", {cfg.num_classes or 'its'} classes" if cfg.class_cond else ""
    return (
        f"{cfg.dataset} {cfg.image_size}px DDPM: {cfg.model} U-Net{attention}{labels}; "
        f"{cfg.prediction_type}{weighting}, {cfg.schedule} schedule, T = {cfg.num_timesteps}"
    )


def _plain(value):
    """Tuples as lists: the card holds the types a JSON file would."""
    return list(value) if isinstance(value, tuple) else value


# ---------------------------------------------------------------------------------- reading
def read_file(path: str | os.PathLike) -> dict:
    """A weights file's contents, loaded safely: a ddpm_lib checkpoint, or the feature network's weights.

    Raises what :func:`~ddpm_lib.checkpoints.load_checkpoint` raises for anything else.
    """
    try:
        return load_checkpoint(path)
    except CheckpointError as refused:
        try:  # the feature network's file (ddpm_lib.features) has its own layout
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile):
            raise refused from None  # the checkpoint loader's message says what is wrong
        if isinstance(saved, dict) and {"config", "state_dict"} <= set(saved):
            return saved
        raise


def describe_file(path: str | os.PathLike) -> str:
    """The text ``--info`` prints: the file's card, or, for a file without one, what the file itself says."""
    ckpt = read_file(path)
    card = ckpt.get("model_card")
    if card is not None and not card_problem(card):
        return format_card(card, Path(path).name)
    return format_without_card(ckpt, Path(path).name)


def format_without_card(ckpt: dict, name: str) -> str:
    """A card-less file: its step, its config (fields that differ from the paper's defaults) and a command."""
    lines = [
        f"{name}: no model card (written before cards existed, or by other code); the file itself says:"
    ]
    if "state_dict" in ckpt:  # the feature network
        lines.append(f"  architecture: {_pairs(ckpt['config'])}")
        for key in ("test_accuracy", "command"):
            if key in ckpt:
                lines.append(f"  {key}: {ckpt[key]}")
        return "\n".join(lines)
    lines.append(f"  step: {ckpt.get('step', 'not stored')}")
    try:
        cfg = TrainConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:
        lines.append(f"  config (unreadable by this version: {exc}): {_pairs(ckpt['config'])}")
        return "\n".join(lines)
    default = TrainConfig()
    changed = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if getattr(cfg, f.name) != getattr(default, f.name)
    }
    lines.append(f"  recipe: {recipe_summary(cfg)}")
    lines.append(_wrap("config (fields that differ from the paper's defaults)", _pairs(changed)))
    try:
        lines.append(f"  a command that rebuilds this config: {train_command(cfg)}")
    except ValueError as exc:
        lines.append(f"  command: {exc}")
    lines.append("  not recorded: data fingerprint, training time, hardware, metrics")
    return "\n".join(lines)


def format_card(card: dict, name: str = "") -> str:
    """A card as text for people: title, command, recipe, data, training and hardware, metrics, notes."""
    lines = [f"{name}: model card (version {card.get('card_version')})".lstrip(": ")]
    lines.append(_wrap("", card.get("title", "")))
    lines.append(f"  command: {card.get('command', 'not recorded')}")  # one line, to copy
    lines.append(_wrap("recipe", _pairs(_shown_recipe(card.get("recipe", {})))))
    lines.append(_wrap("data", _pairs(card.get("data", {}))))
    training = card.get("training", {})
    lines.append(_wrap("training", _training_line(training)))
    lines += [
        _wrap("on", _hardware_line(where), indent=4) for where in training.get("hardware", [])
    ]
    metrics = card.get("metrics", [])
    lines.append("  metrics:" + ("" if metrics else " none measured yet"))
    groups: dict[tuple, list[dict]] = {}
    for m in metrics:  # one line per protocol and source, then its scores
        groups.setdefault(
            (m.get("protocol", "not recorded"), m.get("source", "not recorded")), []
        ).append(m)
    for (protocol, source), scores in groups.items():
        lines.append(_wrap("-", f"{protocol} [{source}]:", indent=4))
        lines.append(_wrap("", ", ".join(_score(m) for m in scores), indent=6))
    notes = card.get("notes", [])
    if notes:
        lines.append("  notes:")
        lines += [_wrap("-", note, indent=4) for note in notes]
    return "\n".join(lines)


def _shown_recipe(recipe: dict) -> dict:
    """The recipe without the fields that say nothing: None (the preset's), labels of an unlabelled run."""
    unlabelled = (
        ("p_uncond", "num_classes", "class_names") if not recipe.get("class_cond", True) else ()
    )
    return {k: v for k, v in recipe.items() if v is not None and k not in unlabelled}


def _training_line(training: dict) -> str:
    steps, seconds = training.get("steps"), training.get("seconds")
    time = f"{seconds / 60:.1f} min" if seconds else "time not recorded"
    if seconds and training.get("timed"):
        time += f" ({training['timed']})"
    return f"{steps:,} steps, {time}" if isinstance(steps, int) else time


def _hardware_line(where: dict) -> str:
    keys = ("device", "name", "bf16", "threads", "processes", "precision", "torch")
    head = _pairs({k: where[k] for k in keys if k in where})
    steps, seconds = where.get("steps"), where.get("seconds")
    amount = f"{steps:,} steps" if isinstance(steps, int) else ""
    if seconds:
        amount += f", {seconds / 60:.1f} min"
    extra = _pairs({k: v for k, v in where.items() if k not in (*keys, "steps", "seconds")})
    return "; ".join(p for p in (head, amount, extra) if p)


def _score(m: dict) -> str:
    """``FID 2.643 ± 0.24 (real vs real 0.38)``."""
    value = m.get("value")
    text = f"{m.get('name', '?')} {f'{value:.4g}' if isinstance(value, float) else value}"
    if m.get("std") is not None:
        text += f" ± {m['std']:.2g}"
    if m.get("baseline") is not None:
        text += f" (real vs real {m['baseline']:.3g})"
    return text


def _pairs(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def _wrap(label: str, text: str, indent: int = 2) -> str:
    return textwrap.fill(
        text,
        width=100,
        initial_indent=" " * indent + {"": "", "-": "- "}.get(label, f"{label}: "),
        subsequent_indent=" " * (indent + 4),
        break_on_hyphens=False,
        break_long_words=False,
    )
