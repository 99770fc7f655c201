import math

import pytest
import torch

from ddpm_lib.schedules import (
    SCHEDULES,
    alphas_cumprod_from_betas,
    log_snr,
    make_betas,
    terminal_signal,
)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [1, 10, 1000])
def test_betas_shape_dtype_range(name, T):
    betas = make_betas(name, T)
    assert betas.shape == (T,) and betas.dtype == torch.float64
    assert bool(((betas > 0) & (betas < 1)).all())


def test_linear_matches_paper_endpoints():
    betas = make_betas("linear", 1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(
        betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64)
    )


def test_cosine_follows_nichol_dhariwal():
    T, s = 1000, 0.008
    ac = alphas_cumprod_from_betas(make_betas("cosine", T))
    t = torch.arange(1, T + 1, dtype=torch.float64)
    f = lambda u: torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    expected = f(t) / f(torch.zeros(1, dtype=torch.float64))
    # equal until the 0.999 clip of the last betas makes them differ
    assert torch.allclose(ac[:990], expected[:990], rtol=1e-10)
    assert make_betas("cosine", T).max().item() == pytest.approx(0.999)


def test_monotone_schedules():
    for name in SCHEDULES:
        assert bool((make_betas(name, 500).diff() >= 0).all()), name


def test_terminal_signal_small_T_linear_is_not_noise():
    assert terminal_signal(make_betas("linear", 1000)) < 0.01
    # a fifth of the signal left
    assert terminal_signal(make_betas("linear", 300)) == pytest.approx(0.2192, abs=1e-4)
    assert terminal_signal(make_betas("cosine", 300)) < 0.01


def test_log_snr_decreasing():
    ls = log_snr(make_betas("cosine", 1000))
    assert bool((ls.diff() < 0).all())


@pytest.mark.parametrize(
    "args, match",
    [
        (("nope", 10), "valid choices: linear, cosine, quadratic, sigmoid"),
        (("linear", 0), "num_timesteps"),
        (("linear", 2.5), "num_timesteps"),
        (("linear", 10, {"beta_end": 1.5}), r"outside \(0, 1\)"),
        (("linear", 10, {"beta_start": 0.0}), r"outside \(0, 1\)"),
    ],
)
def test_bad_input(args, match):
    kwargs = args[2] if len(args) == 3 else {}
    with pytest.raises(ValueError, match=match):
        make_betas(args[0], args[1], **kwargs)
