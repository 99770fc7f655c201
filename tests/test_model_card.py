"""Model cards: every checkpoint and every shipped weights file says how it was made and how to make it again.

The proof that a card's command reproduces its run: ``build_parser`` and ``config_from_args`` of the
command give back the run's config field for field.
"""

import dataclasses
import importlib.util
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

from ddpm_lib import sample as sample_cli
from ddpm_lib.checkpoints import (
    WEIGHTS_DIR,
    CheckpointError,
    export_weights,
    load_checkpoint,
    load_ema_model,
    save_atomic,
)
from ddpm_lib.config import CPU_RECIPE_BEFORE_STUDY, TrainConfig
from ddpm_lib.features import FeatureNetConfig
from ddpm_lib.model_card import DERIVED_FIELDS, describe_file, train_command
from ddpm_lib.train import build_parser, config_from_args
from ddpm_lib.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
DIFFUSION_FILES = [
    "pretrained_toy_cars_32.pt",
    "ddpm_toy_cars_32.pt",
    "pretrained_toy_cars_cond_32.pt",
]
SHIPPED = [*DIFFUSION_FILES, "toy_cars_classifier.pt"]
TINY = dict(
    model="tiny",
    image_size=16,
    num_images=16,
    batch_size=8,
    warmup_steps=1,
    num_timesteps=20,
    num_sample_images=2,
    sample_steps=2,
    log_every=1,
    max_steps=2,
    precision="fp32",
)


def _tool():
    spec = importlib.util.spec_from_file_location(
        "write_model_cards", ROOT / "tools/write_model_cards.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rebuilt(command: str) -> TrainConfig:
    """The config ``python -m ddpm_lib.train`` builds from ``command``, before the data is read."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "ddpm_lib.train"], command
    return config_from_args(build_parser().parse_args(words[3:]))


def assert_reproduces(command: str, cfg: TrainConfig) -> None:
    """Field for field; the dataset's classes are read from the data, not the command."""
    got = dataclasses.replace(rebuilt(command), **{k: getattr(cfg, k) for k in DERIVED_FIELDS})
    differ = {
        f.name: (getattr(got, f.name), getattr(cfg, f.name))
        for f in dataclasses.fields(cfg)
        if getattr(got, f.name) != getattr(cfg, f.name)
    }
    assert not differ, f"{command} rebuilds other values (command, run): {differ}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A two-step CPU run's folder, its trainer and its exported weights."""
    folder = tmp_path_factory.mktemp("card_run") / "run"
    trainer = Trainer(TrainConfig.cpu_demo(**TINY), folder, progress=False)
    trainer.fit()
    export_weights(folder / "checkpoint.pt", folder.parent / "weights.pt")
    return folder, trainer, folder.parent / "weights.pt"


# ---------------------------------------------------------------------------------- the command
def test_every_config_field_has_a_flag_or_comes_from_the_data():
    dests = {a.dest for a in build_parser()._actions}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields - DERIVED_FIELDS <= dests, sorted(fields - DERIVED_FIELDS - dests)


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(),
        TrainConfig.cpu_demo(),
        TrainConfig.cpu_demo(**CPU_RECIPE_BEFORE_STUDY, max_steps=1600, sample_steps=50),
        TrainConfig.cpu_demo(model="tiny", snr_gamma=None, dropout=None),
        TrainConfig(
            dataset="folder",
            data_root="/data/my cars",
            class_cond=True,
            ema_warmup=False,
            channels_last=False,
            compile=True,
            deterministic=True,
            attention_resolutions=(16, 8),
            lr=3.5e-5,
            max_minutes=0.25,
        ),
    ],
    ids=["paper", "cpu", "former cpu", "cpu, fields back to None", "every kind of flag"],
)
def test_the_command_rebuilds_the_config(cfg):
    assert_reproduces(train_command(cfg, "runs/x"), cfg)


def test_the_command_names_only_what_differs_from_its_preset():
    assert train_command(TrainConfig.cpu_demo(max_steps=3600), "runs/a") == (
        "python -m ddpm_lib.train --preset cpu --max-steps 3600 --out runs/a"
    )
    words = train_command(TrainConfig.cpu_demo(), "runs/a", processes=4).split()
    assert words[:3] == ["torchrun", "--nproc_per_node=4", "-m"]


# ---------------------------------------------------------------------------------- the trainer's card
def test_a_training_checkpoint_and_its_exported_weights_hold_the_runs_card(tiny_run):
    folder, trainer, weights = tiny_run
    card = load_checkpoint(folder / "checkpoint.pt")["model_card"]
    assert card == load_checkpoint(weights)["model_card"]
    assert card["card_version"] == 1
    assert_reproduces(card["command"], trainer.config)
    assert card["command"].endswith(f"--out {folder}")
    assert card["recipe"]["num_timesteps"] == 20 and card["recipe"]["parameters"] > 0
    assert card["data"]["num_images"] == 16 and len(card["data"]["images_sha1"]) == 16
    assert card["training"]["steps"] == 2 and card["training"]["seconds"] > 0
    (where,) = card["training"]["hardware"]
    assert (where["device"], where["precision"], where["steps"]) == ("cpu", "fp32", 2)
    assert where["torch"] == torch.__version__ and isinstance(where["bf16"], bool)
    assert card["metrics"] == [] and card["notes"] == []


def test_a_resumed_run_adds_its_steps_and_says_what_changed(tmp_path):
    Trainer(TrainConfig.cpu_demo(**TINY), tmp_path, progress=False).fit()
    resumed = Trainer(
        TrainConfig.cpu_demo(**{**TINY, "max_steps": 3, "lr": 5e-4}),
        tmp_path,
        resume=True,
        progress=False,
    )
    resumed.fit()
    card = load_checkpoint(tmp_path / "checkpoint.pt")["model_card"]
    (where,) = card["training"]["hardware"]  # the same machine: one entry
    assert card["training"]["steps"] == where["steps"] == 3
    assert card["notes"] == ["resumed at step 2 with lr 0.001 -> 0.0005"]
    assert_reproduces(card["command"], resumed.config)


# ---------------------------------------------------------------------------------- the shipped files
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_file_has_a_card_with_its_provenance(name):
    saved = torch.load(WEIGHTS_DIR / name, map_location="cpu", weights_only=True)
    card = saved["model_card"]
    for key in ("title", "recipe", "data", "training", "command", "metrics", "notes"):
        assert card[key], f"{name}: its card says nothing under {key!r}"
    assert card["training"]["steps"] > 0 and card["training"]["hardware"]
    for where in card["training"]["hardware"]:
        assert {"device", "name", "precision", "torch", "steps", "seconds"} <= set(where)
    for m in card["metrics"]:
        assert m["source"] and m["protocol"] and isinstance(m["value"], float), m
    if name in DIFFUSION_FILES:
        assert_reproduces(card["command"], TrainConfig.from_dict(saved["config"]))
    else:  # the feature network: its command trains the architecture the file holds
        assert card["command"].startswith("python -m ddpm_lib.features ")
        assert saved["config"] == {
            **dataclasses.asdict(FeatureNetConfig()),
            "widths": [32, 64, 128],
        }


def test_the_shipped_cards_match_the_table_and_the_stored_results():
    """Metrics cannot drift: each card is what tools/write_model_cards.py builds from benchmarks/*.json."""
    tool = _tool()
    for name in SHIPPED:
        saved = torch.load(WEIGHTS_DIR / name, map_location="cpu", weights_only=True)
        assert saved["model_card"] == tool.card_for(name, saved), (
            f"run tools/write_model_cards.py ({name})"
        )


def _committed(name: str, tmp_path: Path) -> Path | None:
    path = tmp_path / name
    try:
        blob = subprocess.run(
            ["git", "show", f"HEAD:ddpm_lib/weights/{name}"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("name", SHIPPED)
def test_the_cards_leave_the_weights_bit_identical(name, tmp_path):
    committed = _committed(name, tmp_path)
    if committed is None:
        pytest.skip("not a git checkout")
    tool = _tool()
    before = torch.load(committed, map_location="cpu", weights_only=True)
    now = torch.load(WEIGHTS_DIR / name, map_location="cpu", weights_only=True)
    assert tool.same_contents(tool.without_card(now), tool.without_card(before))


@pytest.mark.parametrize("name", DIFFUSION_FILES)
def test_the_shipped_models_still_load(name):
    model, diffusion, cfg = load_ema_model(WEIGHTS_DIR / name)
    assert diffusion.num_timesteps == cfg.num_timesteps


# ---------------------------------------------------------------------------------- --info
def _info(path: Path, capsys, monkeypatch, cwd: Path) -> str:
    """``python -m ddpm_lib.sample --checkpoint path --info`` run in ``cwd``: exits 0, writes nothing."""
    monkeypatch.chdir(cwd)
    before = sorted(p for p in cwd.rglob("*"))
    assert sample_cli.main(["--checkpoint", str(path), "--info"]) == 0
    assert sorted(p for p in cwd.rglob("*")) == before, "--info wrote a file"
    return capsys.readouterr().out


@pytest.mark.parametrize("name", ["pretrained_toy_cars_32.pt", "toy_cars_classifier.pt"])
def test_info_prints_a_shipped_card_and_writes_nothing(name, capsys, monkeypatch, tmp_path):
    out = _info(WEIGHTS_DIR / name, capsys, monkeypatch, tmp_path)
    card = torch.load(WEIGHTS_DIR / name, weights_only=True)["model_card"]
    assert f"{name}: model card (version 1)" in out
    assert f"command: {card['command']}\n" in out
    assert card["metrics"][0]["source"] in " ".join(out.split())


def test_info_prints_a_tiny_runs_card(tiny_run, capsys, monkeypatch, tmp_path):
    folder, trainer, weights = tiny_run
    out = _info(weights, capsys, monkeypatch, tmp_path)
    assert "model card (version 1)" in out and "metrics: none measured yet" in out
    assert trainer.describe().split()[0] in out  # the network's name


def test_info_of_a_file_without_a_card_says_what_the_file_holds(
    tiny_run, capsys, monkeypatch, tmp_path
):
    folder, trainer, weights = tiny_run
    bare = {k: v for k, v in load_checkpoint(weights).items() if k != "model_card"}
    save_atomic(bare, tmp_path / "bare" / "old.pt")
    text = describe_file(tmp_path / "bare" / "old.pt")
    assert text.startswith("old.pt: no model card")
    assert "step: 2" in text and "model tiny" in text
    assert_reproduces(text.split("rebuilds this config: ")[1].splitlines()[0], trainer.config)
    assert _info(tmp_path / "bare" / "old.pt", capsys, monkeypatch, tmp_path / "bare") != ""


def test_a_damaged_card_is_refused_in_one_line(tiny_run, tmp_path):
    folder, trainer, weights = tiny_run
    ckpt = load_checkpoint(weights)
    save_atomic({**ckpt, "model_card": "trained on a GPU"}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"'model_card' is a str, not a dict"):
        load_checkpoint(tmp_path / "bad.pt")
    save_atomic({**ckpt, "model_card": {"card_version": "1"}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"no valid card_version \(got '1'\)"):
        load_checkpoint(tmp_path / "bad.pt")
