"""The evaluation study behind notebook 07: its noise measure, and the stored results the notebook reads."""

import importlib.util
import json
import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUDY_JSON = ROOT / "benchmarks" / "eval_study.json"


@pytest.fixture(scope="module")
def eval_study():
    spec = importlib.util.spec_from_file_location(
        "eval_study", ROOT / "benchmarks" / "eval_study.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["eval_study"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("eval_study", None)


def test_noise_level_recovers_a_known_std(eval_study):
    """On a flat image with i.i.d. Gaussian noise of std s, the estimate is s (within 3% over 64 images)."""
    g = torch.Generator().manual_seed(0)
    for s in (0.02, 0.1):
        noisy = 0.3 + s * torch.randn(64, 3, 32, 32, generator=g)
        assert abs(eval_study.noise_level(noisy).mean().item() - s) < 0.03 * s


def test_noise_level_ignores_ramps_and_one_axis_patterns(eval_study):
    """The mask cancels linear ramps and anything that varies along one axis only (a horizon): the estimate is 0."""
    y = torch.linspace(-1, 1, 32).view(1, 1, 32, 1)
    x = torch.linspace(-1, 1, 32).view(1, 1, 1, 32)
    ramp = (0.3 * x + 0.2 * y).expand(2, 3, 32, 32)
    horizon = torch.where(y < 0, 0.8, -0.5).expand(2, 3, 32, 32)
    for image in (ramp, horizon):
        assert eval_study.noise_level(image).abs().max().item() < 1e-6


def test_the_stored_study_is_complete():
    """The JSON the notebook reads: finished, every study present, every row with its spread, sizes as recorded."""
    study = json.loads(STUDY_JSON.read_text())
    meta, rows = study["meta"], study["rows"]
    assert meta["complete"] and meta["seconds"] > 0
    assert {r["study"] for r in rows} == {"samplers", "precision", "clipping", "seeds", "training"}
    assert all(r["spread"] is not None and r["spread"]["fid"] is not None for r in rows)
    sizes = meta["sizes"]
    long = [
        r
        for r in rows
        if r["study"] == "samplers" and (r["sampler"] == "ddpm" or r["steps"] == 250)
    ]
    assert len(long) == 5 and all(r["num_samples"] == sizes["num_samples_long"] for r in long)
    grid = [r for r in rows if r["study"] == "samplers" and r not in long]
    assert len(grid) == 12 and all(r["num_samples"] == sizes["num_samples"] for r in grid)
    assert {b["num_samples"] for b in study["baselines"]} == {
        sizes["num_samples"],
        sizes["num_samples_long"],
        sizes["num_samples_train"],
    }
    assert len(study["precision_pairs"]) == 2 and len(study["bits_per_dim"]["timesteps"]) == len(
        study["bits_per_dim"]["terms_mean"]
    )
