"""The recipe study (benchmarks/recipe.py): its bookkeeping, and that its winner is the CPU default."""

import importlib.util
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from ddpm_lib.config import TrainConfig  # noqa: E402
from ddpm_lib.plotting import plot_recipe_study  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STUDY = json.loads((ROOT / "benchmarks" / "recipe.json").read_text())


def _recipe():
    spec = importlib.util.spec_from_file_location("recipe", ROOT / "benchmarks" / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_recipe_builds_and_has_a_timing_key():
    recipe = _recipe()
    todo = recipe.speeds_to_time()
    for name, overrides in recipe.RECIPES.items():
        recipe.config_of(overrides, seed=0)  # a valid TrainConfig
        assert recipe.speed_key(overrides) in todo, name
    # only shape and batch cost time
    assert recipe.speed_key({"lr": 2e-3, "schedule": "cosine"}) == recipe.speed_key({})
    # the study's baseline is the recipe it replaced, not today's default
    start = recipe.config_of({}, seed=0)
    assert (
        start.schedule,
        start.num_timesteps,
        start.prediction_type,
        start.snr_gamma,
        start.attention_resolutions,
    ) == ("linear", 1000, "epsilon", None, None)


def test_untimed_combination_is_estimated_from_its_parts():
    recipe = _recipe()
    speeds = {
        recipe.speed_key({}): {"s_per_step": 1.0},
        recipe.speed_key({"batch_size": 32}): {"s_per_step": 0.5},
        recipe.speed_key({"num_res_blocks": 1}): {"s_per_step": 0.6},
    }
    assert recipe.s_per_step(speeds, {"batch_size": 32, "lr": 1e-3}) == (0.5, True)
    estimate, measured = recipe.s_per_step(speeds, {"batch_size": 32, "num_res_blocks": 1})
    assert not measured and math.isclose(estimate, 0.3)


def test_combined_recipe_takes_each_groups_best_change_that_beats_the_seed_spread():
    recipe = _recipe()
    run = lambda *fids: {"seeds": [{"curve": [{"fid": f}]} for f in fids]}  # noqa: E731
    runs = {
        "default": run(20, 22, 18),
        "lr2e-3": run(10),
        "lr5e-4": run(12),
        "cosine": run(17),
        "T500": run(11),
        "v": run(30),
    }
    chosen, evidence = recipe.combined_overrides(runs)  # bar: mean 20 - 2 * std 2 = 16
    assert chosen == {"lr": 2e-3, "num_timesteps": 500} and evidence["bar"] == 16
    assert (
        not evidence["groups"]["schedule"]["taken"] and evidence["groups"]["lr"]["best"] == "lr2e-3"
    )
    assert recipe.combined_overrides(runs, top=1)[0] == {"lr": 2e-3}


def test_stored_study_is_consistent_and_its_winner_is_the_cpu_default():
    section = STUDY["budget_10min"]
    speeds = STUDY["cpu_timing"]["speeds"]
    recipe = _recipe()
    assert len(section["runs"]["default"]["seeds"]) == 3
    for name, run in section["runs"].items():
        s = recipe.s_per_step(speeds, run["overrides"])[0]
        for seed in run["seeds"]:
            curve = seed["curve"]
            assert [p["step"] for p in curve] == sorted(p["step"] for p in curve), name
            assert all(math.isclose(p["cpu_minutes"], p["step"] * s / 60) for p in curve), name
            assert abs(curve[-1]["cpu_minutes"] - 10) < 0.05, name
    winner = section["combined_choice"]["combined"]["overrides"]
    assert section["cpu_runs"]["combined"]["overrides"] == winner
    default = TrainConfig.cpu_demo()
    for field, value in winner.items():
        got = getattr(default, field)
        assert (list(got) if isinstance(got, tuple) else got) == value, (
            f"cpu_demo().{field} is {got!r}, the study chose {value!r}"
        )
    fig = plot_recipe_study(STUDY, highlight=["combined (CPU clock)", "v-minsnr5"])
    lines = fig.axes[0].get_lines()
    assert len(lines) == sum(len(r["seeds"]) for r in section["runs"].values()) + len(
        section["cpu_runs"]
    )
