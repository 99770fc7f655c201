"""The precision choice: measured, cached, overridden, refused; and the device choice."""

import json

import pytest
import torch

from ddpm_lib import devices
from ddpm_lib.devices import (
    MIN_SPEEDUP,
    PrecisionChoice,
    cache_path,
    resolve_precision,
    select_device,
)
from ddpm_lib.unet import build_model


class FakeTimer:
    """Seconds per step by dtype; counts the calls so a test can see whether anything was measured."""

    def __init__(self, fp32: float, bf16: float):
        self.seconds = {torch.float32: fp32, torch.bfloat16: bf16}
        self.calls = 0

    def __call__(self, dtype):
        self.calls += 1
        return self.seconds[dtype]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path


def test_slow_bf16_gives_fp32(cache):
    # an AVX2-only CPU: bf16 emulated
    choice = resolve_precision("auto", "cpu", timer=FakeTimer(fp32=0.3, bf16=5.3))
    assert choice.name == "fp32" and choice.dtype == torch.float32 and choice.source == "measured"
    assert choice.speedup == pytest.approx(0.3 / 5.3)
    assert "bf16 measured 17.7x slower than fp32" in str(choice)


def test_fast_bf16_gives_bf16(cache):
    choice = resolve_precision("auto", "cpu", kind="train", timer=FakeTimer(fp32=1.0, bf16=0.4))
    assert (
        choice.name == "bf16" and choice.dtype == torch.bfloat16 and "2.50x faster" in str(choice)
    )


def test_marginal_gain_keeps_fp32(cache):
    """bf16 rounds more; below MIN_SPEEDUP the gain is not worth it."""
    choice = resolve_precision(
        "auto", "cpu", timer=FakeTimer(fp32=1.0, bf16=1.0 / (MIN_SPEEDUP - 0.05))
    )
    assert choice.name == "fp32"


def test_cache_is_hit_the_second_time(cache):
    first = FakeTimer(fp32=1.0, bf16=0.25)
    assert resolve_precision("auto", "cpu", timer=first).source == "measured" and first.calls == 2
    second = FakeTimer(fp32=1.0, bf16=9.0)  # would say fp32 if it were asked
    again = resolve_precision("auto", "cpu", timer=second)
    assert second.calls == 0 and again.source == "cached" and again.name == "bf16"
    stored = json.loads(cache_path().read_text())
    assert str(cache) in str(cache_path()) and len(stored) == 1
    (key,) = stored
    assert torch.__version__ in key and f"{torch.get_num_threads()} threads" in key
    # train and sample are separate measurements
    assert resolve_precision("auto", "cpu", kind="train", timer=FakeTimer(1.0, 9.0)).name == "fp32"


def test_overrides_win(cache, monkeypatch):
    timer = FakeTimer(fp32=1.0, bf16=0.1)
    assert resolve_precision("fp32", "cpu", timer=timer).name == "fp32" and timer.calls == 0
    monkeypatch.setenv("DDPM_PRECISION", "fp32")
    choice = resolve_precision("auto", "cpu", timer=timer)
    assert choice.name == "fp32" and choice.source == "environment" and timer.calls == 0
    # an explicit argument beats the environment
    assert resolve_precision("bf16", "cpu", timer=timer).name == "bf16"


@pytest.mark.parametrize(
    "precision, env, match",
    [
        ("int8", None, "unknown precision 'int8'; valid choices: auto, bf16, fp16, fp32"),
        ("auto", "half", r"unknown precision in \$DDPM_PRECISION 'half'"),
        ("fp16", None, "'fp16' is for GPUs"),
        ("auto", None, "pass model="),
    ],
)
def test_bad_values_are_refused(cache, monkeypatch, precision, env, match):
    if env:
        monkeypatch.setenv("DDPM_PRECISION", env)
    with pytest.raises(ValueError, match=match):
        resolve_precision(precision, "cpu")


def test_real_measurement_on_this_machine(cache):
    """One real timing of a small U-Net: a ratio is measured, the choice follows it, the model is left as it was."""
    model = build_model("tiny", image_size=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    rng = torch.get_rng_state()
    choice = resolve_precision("auto", "cpu", model, "train", (3, 16, 16))
    assert (
        isinstance(choice, PrecisionChoice) and choice.source == "measured" and choice.speedup > 0
    )
    assert choice.name == ("bf16" if choice.speedup >= MIN_SPEEDUP else "fp32")
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)  # exact resume depends on it
    assert resolve_precision("auto", "cpu", model, "train", (3, 16, 16)).source == "cached"


def test_autocast_context():
    x = torch.randn(4, 4)
    with PrecisionChoice("bf16", "cpu", "argument").autocast():
        assert (x @ x).dtype == torch.bfloat16
    with PrecisionChoice("fp32", "cpu", "argument").autocast():
        assert (x @ x).dtype == torch.float32


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            select_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("gpu0")
    assert "threads" in devices.device_report(
        torch.device("cpu"), PrecisionChoice("fp32", "cpu", "argument")
    )
