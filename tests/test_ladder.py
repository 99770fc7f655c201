"""The ablation ladder (benchmarks/ladder.py, notebook 08): its recipes and the stored results."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")

from ddpm_lib.config import TrainConfig  # noqa: E402
from ddpm_lib.plotting import ladder_order, plot_ladder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LADDER = json.loads((ROOT / "benchmarks" / "ladder.json").read_text())
# the fields the ladder changes, and the other one a step's cost depends on
FIELDS = ("schedule", "num_timesteps", "prediction_type", "snr_gamma", "attention_resolutions")


def _module(name: str):
    """A script of benchmarks/ as a module (ladder.py imports recipe.py from its own folder)."""
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _fields(cfg: TrainConfig) -> tuple:
    return tuple(getattr(cfg, f) for f in FIELDS)


def _as_tuples(overrides: dict) -> dict:
    """Overrides as the recipes hold them: a JSON round trip turns tuples into lists."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


def test_rungs_are_cumulative_one_change_each():
    ladder = _module("ladder")
    rungs, previous = ladder.rungs(), {}
    assert list(rungs) == list(ladder.RUNG_CHANGES)
    for name, overrides in rungs.items():
        change = ladder.RUNG_CHANGES[name]
        assert overrides == {**previous, **change}, name
        assert name == "paper" or (
            len(change) == 1 and all(previous.get(k) != v for k, v in change.items())
        ), f"{name} must change exactly one field of the rung before it"
        previous = overrides


def test_side_arms_change_one_field_of_their_rung():
    ladder = _module("ladder")
    rungs, recipes = ladder.rungs(), ladder.recipes()
    for name, (base, change) in ladder.ARMS.items():
        assert base in rungs and len(change) == 1, name
        ((field, value),) = change.items()
        assert rungs[base].get(field) != value, f"{name} changes nothing of {base}"
        assert recipes[name] == {**rungs[base], field: value}, name
        _config(recipes[name])  # a valid TrainConfig


def _config(overrides: dict) -> TrainConfig:
    return _module("recipe").config_of(overrides, seed=0)


def test_first_rung_is_the_paper_recipe_and_last_the_shipped_one():
    ladder = _module("ladder")
    rungs = list(ladder.rungs().values())
    assert _fields(_config(rungs[0])) == _fields(TrainConfig.ddpm_demo())
    assert _fields(_config(rungs[-1])) == _fields(TrainConfig.cpu_demo())
    # the shipped recipe differs from the paper's in exactly the fields the rungs change
    changed = {k for change in ladder.RUNG_CHANGES.values() for k in change}
    differ = {
        f
        for f in TrainConfig.__dataclass_fields__
        if getattr(TrainConfig.ddpm_demo(), f) != getattr(TrainConfig.cpu_demo(), f)
    }
    assert differ == changed


def test_every_stored_run_trained_the_steps_its_budget_buys():
    ladder = _module("ladder")
    speeds = LADDER["cpu_timing"]["speeds"]
    settings = LADDER["settings"]
    budget, points = settings["budget_cpu_minutes"], settings["points"]
    assert set(LADDER["runs"]) == set(ladder.recipes())
    for name, run in LADDER["runs"].items():
        overrides = _as_tuples(run["overrides"])
        assert overrides == ladder.recipes()[name], name
        s_per_step = speeds[ladder.shape(overrides)]["s_per_step"]
        expected_seeds = 3 if name in ladder.RUNG_CHANGES else 1
        assert len(run["seeds"]) == expected_seeds, name
        for seed in run["seeds"]:
            curve = seed["curve"]
            assert [p["step"] for p in curve] == [round(m * 60 / s_per_step) for m in points], name
            assert curve[-1]["step"] == round(budget * 60 / s_per_step), name
            for p in curve:
                assert math.isclose(p["cpu_minutes"], p["step"] * s_per_step / 60), name
                assert {"fid", "precision", "recall", "class_tv"} <= set(p["raw"]), name


def test_plot_ladder_draws_the_stored_json():
    ladder = _module("ladder")
    rungs, arms = ladder_order(LADDER)
    assert rungs == list(ladder.RUNG_CHANGES) and set(arms) == set(ladder.ARMS)
    fig = plot_ladder(LADDER)
    left = fig.axes[0]
    (means,) = [c for c in left.containers if c.get_label().startswith("EMA weights")]
    drawn = means.lines[0].get_ydata()
    expected = [
        np.mean([s["curve"][-1]["fid"] for s in LADDER["runs"][n]["seeds"]]) for n in rungs + arms
    ]
    assert np.allclose(drawn, expected)
    assert len(fig.axes[2].containers) == len(rungs)  # one FID curve per rung
