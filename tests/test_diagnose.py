"""ddpm_lib.diagnose names each failure on a small broken fixture and stays silent on healthy ones.

That the shipped weights pass the whole diagnosis (`--strict`) is checked by notebook 12, which runs it.
"""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ddpm_lib import diagnose as D
from ddpm_lib.build import model_args
from ddpm_lib.checkpoints import append_log_row, save_atomic
from ddpm_lib.config import TrainConfig
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.schedules import make_betas
from ddpm_lib.training import Trainer
from ddpm_lib.unet import build_model

TINY = dict(
    model="tiny",
    image_size=16,
    num_images=64,
    batch_size=8,
    num_timesteps=20,
    precision="fp32",
    ema_decay=0.99,
    num_sample_images=4,
    sample_steps=5,
    log_every=1,
)
FAST = dict(num_samples=8, steps=5, data_images=64, loss_images=4)
MODEL_CHECKS = ("loss_per_noise_level", "sample_colours", "memorisation")


def tiny_config(**kw) -> TrainConfig:
    return TrainConfig.cpu_demo(**{**TINY, **kw})


def tiny_ckpt(step: int = 1000, **kw) -> dict:
    """An exported-weights dict of an untrained tiny U-Net (16 px, cosine, T = 20 unless overridden)."""
    cfg = tiny_config(**kw)
    model = build_model(**model_args(cfg))
    return {
        "config": cfg.to_dict(),
        "model_args": model_args(cfg),
        "ema": model.state_dict(),
        "step": step,
    }


def by_check(findings: list[D.Finding], check: str) -> D.Finding:
    (found,) = [f for f in findings if f.check == check]
    return found


def problems(findings: list[D.Finding]) -> set[str]:
    return {f.check for f in findings if f.severity == "problem"}


@pytest.fixture(scope="module")
def toy16():
    """64 train and 64 test toy cars at 16 px, as float in [-1, 1] (the images diagnose compares with)."""
    data = D._load_data(tiny_config(), FAST["data_images"], None)
    return data.x0, data.held_out


# ------------------------------------------------------------------------------ 1. NaN weights
def test_nan_weights_are_a_problem_and_the_fix_is_not_to_resume():
    state = {"w": torch.tensor([1.0, float("nan")]), "b": torch.zeros(2)}
    (f,) = D.check_finite_weights({"ema": state})
    assert (f.check, f.severity) == ("finite_weights", "problem")
    assert "1 of 2 tensors" in f.what and "earlier checkpoint" in f.fix and "lower --lr" in f.fix
    assert "never resume" in f.fix
    assert D.check_finite_weights({"ema": {"w": torch.ones(2)}})[0].severity == "ok"


def test_nan_ema_skips_the_sample_checks(toy16):  # toy16: the data, rendered once
    ckpt = tiny_ckpt()
    next(v for v in ckpt["ema"].values() if v.is_floating_point()).fill_(float("inf"))
    found = D.diagnose(ckpt, **FAST, skip=("quality_measured",))
    assert "finite_weights" in problems(found)
    for check in MODEL_CHECKS:
        assert by_check(found, check).severity == "info"


# ------------------------------------------------------------------------------ 2. terminal signal
@pytest.mark.parametrize(
    "schedule, T, severity",
    [
        ("linear", 20, "problem"),
        ("linear", 300, "problem"),
        ("cosine", 20, "ok"),
        ("linear", 1000, "ok"),
    ],
)
def test_terminal_signal(schedule, T, severity):
    (f,) = D.check_terminal_signal(make_betas(schedule, T), schedule)
    assert (f.check, f.severity) == ("terminal_signal", severity)
    if severity == "problem":
        assert "grey" in f.what and "cosine" in f.fix and "zero terminal SNR" in f.fix


# ------------------------------------------------------------------------------ 3. sampling plan
def test_sampling_schedule_mismatch_is_a_problem():
    cfg = tiny_config(schedule="cosine")
    for plan in (
        D.SamplingPlan(schedule="linear"),
        D.SamplingPlan(num_timesteps=1000),
        D.SamplingPlan(prediction_type="epsilon"),
        D.SamplingPlan(num_steps=50),
        D.SamplingPlan.from_diffusion(GaussianDiffusion(make_betas("linear", 20))),
    ):
        (f,) = D.check_sampling_schedule(cfg, plan)
        assert (f.check, f.severity) == ("sampling_schedule", "problem"), plan
        assert "never a smaller T" in f.fix
    same = GaussianDiffusion(make_betas("cosine", 20), prediction_type="v_prediction")
    for plan in (D.SamplingPlan(), D.SamplingPlan("cosine", 20, "v_prediction", 10)):
        assert D.check_sampling_schedule(cfg, plan)[0].severity == "ok"
    assert D.check_sampling_schedule(cfg, D.SamplingPlan.from_diffusion(same))[0].severity == "ok"


# ------------------------------------------------------------------------------ 4. data range
def test_data_outside_minus_one_one_is_a_problem(toy16):
    train, _ = toy16
    pixels = (train + 1) * 127.5  # 0 .. 255, the classic slip
    (f,) = D.check_data_range(D.data_statistics(pixels))
    assert (f.check, f.severity) == ("data_range", "problem") and "127.5" in f.fix
    (f,) = D.check_data_range(D.data_statistics((train + 1) / 2))  # [0, 1]
    assert f.severity == "problem" and "[0, 1]" in f.what
    assert D.check_data_range(D.data_statistics(train))[0].severity == "ok"
    assert D.check_data_range(None)[0].severity == "info"


def test_recorded_data_stats_are_read_from_the_checkpoint():
    ckpt = tiny_ckpt()
    ckpt["data_stats"] = {"min": 0.0, "max": 255.0, "mean": [120.0] * 3, "std": [60.0] * 3}
    found = D.diagnose(ckpt, **FAST, skip=MODEL_CHECKS)
    f = by_check(found, "data_range")
    assert f.severity == "problem" and "recorded" in f.what and "255" in f.what


# ------------------------------------------------------------------------------ 5. loss per t
class ZeroNet(nn.Module):
    """Predicts zero noise everywhere: what an untrained or stuck network does."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return self.scale * x


class OneImageNet(ZeroNet):
    """The exact noise predictor for a dataset of one image ``x0``: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""

    def __init__(self, diffusion, x0):
        super().__init__()
        self.ab, self.x0 = diffusion.alphas_cumprod.float(), x0

    def forward(self, x, t):
        ab = self.ab[t].view(-1, 1, 1, 1)
        return (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()


def test_loss_per_band_flags_a_network_that_predicts_nothing(toy16):
    train, _ = toy16
    diffusion = GaussianDiffusion(make_betas("cosine", 20))
    rows = D.loss_per_band(ZeroNet(), diffusion, train[:8], num_bands=5)
    assert [r["band"] for r in rows] == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 20)]
    assert all(abs(r["loss"] / r["trivial"] - 1) < 1e-6 for r in rows)
    (f,) = D.check_loss_bands(rows)
    assert (f.check, f.severity) == ("loss_per_noise_level", "problem") and "train longer" in f.fix
    x0 = train[:1].expand(8, -1, -1, -1)
    rows = D.loss_per_band(OneImageNet(diffusion, train[:1]), diffusion, x0, num_bands=5)
    assert max(r["loss"] for r in rows) < 1e-4
    assert D.check_loss_bands(rows)[0].severity == "ok"


def test_loss_log_of_a_run_folder(tmp_path):
    save_atomic(tiny_ckpt(step=2), tmp_path / "checkpoint.pt")
    for step, loss in ((1, 1.1), (2, 0.9)):  # the trainer's writer and columns
        row = {"step": step, "loss": loss, "lr": 1e-3, "img_per_s": 10.0, "elapsed_s": step}
        append_log_row(tmp_path / "loss.csv", row)
    rows, bands = D.read_loss_log(tmp_path / "loss.csv")
    assert len(rows) == 2 and bands == []
    assert D.check_loss_log(rows)[0].severity == "ok"
    rows[-1]["loss"] = float("nan")
    (f,) = D.check_loss_log(rows)
    assert f.severity == "problem" and "step 2" in f.what
    header = "step,loss,eps_mse_t0_9,eps_mse_t10_19\n"
    (tmp_path / "loss.csv").write_text(header + "1,0.9,0.95,0.2\n")
    rows, bands = D.read_loss_log(tmp_path / "loss.csv")
    assert [b["band"] for b in bands] == [(0, 10), (10, 20)]
    found = D.diagnose(tmp_path, **FAST, skip=("sample_colours", "memorisation"))
    (f,) = [f for f in found if f.severity == "problem"]
    assert f.check == "loss_per_noise_level" and "t 0-9" in f.what and "loss.csv" in f.what


# ------------------------------------------------------------------------------ 6. EMA age
def _trainer_ema_weights(decay: float, warmup: bool, steps: int) -> torch.Tensor:
    """The weight of each step's model in the trainer's EMA: step j's weights are the j-th unit vector."""
    fake = SimpleNamespace(config=SimpleNamespace(ema_decay=decay, ema_warmup=warmup))
    model = nn.Linear(steps, 1, bias=False)
    ema = AveragedModel(model, multi_avg_fn=lambda e, p, n: Trainer._ema_update(fake, e, p, n))
    for j in range(steps):
        with torch.no_grad():
            model.weight.copy_(torch.eye(steps)[j])
        ema.update_parameters(model)
    return ema.module.weight.detach().double().flatten()


@pytest.mark.parametrize("decay, warmup", [(0.9, True), (0.99, False), (0.9999, True)])
def test_ema_step_weights_follow_the_trainers_rule(decay, warmup):
    expected = _trainer_ema_weights(decay, warmup, 30)
    got = D.ema_step_weights(decay, warmup, 30)
    assert torch.allclose(got, expected, atol=1e-6) and math.isclose(got.sum().item(), 1.0)


def test_young_ema_is_a_problem():
    (f,) = D.check_ema_age(0.9999, False, 5)
    assert (f.check, f.severity) == ("ema_age", "problem")
    assert "100.0% of its weight" in f.what and "raw weights" in f.fix and "--ema-decay" in f.fix
    # the trainer's warm-up makes the same decay safe: the EMA follows the last steps
    assert D.check_ema_age(0.9999, True, 5)[0].severity == "ok"
    assert D.check_ema_age(0.999, True, 3600)[0].severity == "ok"  # the shipped recipe
    assert D.check_ema_age(0.9999, False, 10_000)[0].severity == "warning"
    assert D.check_ema_age(0.999, False, 0)[0].severity == "problem"


def test_young_ema_through_diagnose_of_a_checkpoint():
    found = D.diagnose(
        tiny_ckpt(step=5, ema_decay=0.9999, ema_warmup=False), **FAST, skip=MODEL_CHECKS
    )
    assert problems(found) == {"ema_age"}


# ------------------------------------------------------------------------------ 7. colours
def test_grey_samples_are_a_problem(toy16):
    train, test = toy16
    grey = torch.full_like(test, 0.1)
    (f,) = D.check_sample_colours(grey, train)
    assert (f.check, f.severity) == ("sample_colours", "problem") and "grey" in f.what
    assert "terminal signal" in f.fix
    assert D.check_sample_colours(grey, None)[0].severity == "problem"
    assert D.check_sample_colours(test, train)[0].severity == "ok"
    assert D.check_sample_colours(test, None)[0].severity == "ok"


def test_shifted_and_oversaturated_colours_are_warnings(toy16):
    train, test = toy16
    shifted = test.clone()
    shifted[:, 0] = (shifted[:, 0] + 0.4).clamp(-1, 1)
    (f,) = D.check_sample_colours(shifted, train)
    assert f.severity == "warning" and "shift" in f.what
    (f,) = D.check_sample_colours((test * 3).clamp(-1, 1), train)
    assert f.severity == "warning" and "channel std" in f.what


# ------------------------------------------------------------------------------ 8. memorisation
def test_nearest_distances_see_mirrored_copies(toy16):
    train, _ = toy16
    d = D.nearest_distances(train[:4].flip(-1), train)
    assert d.max().item() < 1e-3  # cdist by matrix products: float32 rounding
    loo = D.nearest_distances(train[:8], train[:8], exclude_self=True)
    assert loo.min().item() > 0


def test_copies_of_training_images_are_a_problem(toy16):
    train, test = toy16
    few = train[:8]  # a model overfit on 8 images returns them
    copies = torch.cat([few, few.flip(-1)]) + 0.01 * torch.randn(16, 3, 16, 16)
    (f,) = D.check_memorisation(copies, few, test)
    assert (f.check, f.severity) == ("memorisation", "problem")
    assert "copies its training images" in f.what and "more training data" in f.fix
    assert D.check_memorisation(copies, few)[0].severity == "problem"  # scale from the training set
    assert D.check_memorisation(test[:16], train, test[16:])[0].severity == "ok"
    assert D.check_memorisation(test[:16], train)[0].severity == "ok"


# ------------------------------------------------------------------------------ 9. quality
def test_quality_not_measured_is_a_note_with_the_command(tmp_path):
    (f,) = D.check_quality_measured(None, [], "python -m ddpm_lib.evaluate --checkpoint x.pt")
    assert f.severity == "info" and "python -m ddpm_lib.evaluate" in f.fix
    card = {"metrics": [{"name": "FID", "value": 2.5}]}
    assert D.check_quality_measured(card, [], "")[0].severity == "ok"
    result = tmp_path / "x.eval.json"
    result.write_text(json.dumps({"fid": 3.0, "num_samples": 1000}))
    (f,) = D.check_quality_measured({"metrics": []}, [result], "")
    assert f.severity == "ok" and "FID 3" in f.what


# ------------------------------------------------------------------------------ the CLI
def test_cli_exit_codes(tmp_path, capsys):
    healthy, broken = tmp_path / "healthy.pt", tmp_path / "broken.pt"
    save_atomic(tiny_ckpt(), healthy)
    save_atomic(tiny_ckpt(schedule="linear"), broken)
    skip = ["--skip", *MODEL_CHECKS]
    assert D.main([str(healthy), *skip]) == 0
    out = capsys.readouterr().out
    assert "no problem found" in out and "info [quality_measured]" in out
    assert D.main([str(broken), *skip, "--json", str(tmp_path / "f.json")]) == 1
    assert "problem [terminal_signal]" in capsys.readouterr().out
    doc = json.loads((tmp_path / "f.json").read_text())
    assert doc["problems"] == 1 and {f["check"] for f in doc["findings"]} >= {"terminal_signal"}
    assert D.main([str(healthy), *skip, "--num-timesteps", "1000"]) == 1
    assert "problem [sampling_schedule]" in capsys.readouterr().out
    assert D.main([str(healthy), *skip, "--strict"]) == 0
    assert D.main([str(healthy), *skip, "-v"]) == 0
    assert "ok [ema_age]" in capsys.readouterr().out
    (tmp_path / "notes.txt").write_text("not weights")
    for bad in ("missing.pt", "notes.txt", "."):
        assert D.main([str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert D.main([str(healthy), "--num-samples", "1"]) == 2


def test_cli_help_documents_every_check(capsys):
    with pytest.raises(SystemExit):
        D.main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in D.CHECKS)


def test_diagnose_samples_a_tiny_model_end_to_end():
    found = D.diagnose(tiny_ckpt(), **FAST)
    assert [f.check for f in found] == list(D.CHECKS)
    assert "loss_per_noise_level" in problems(found)  # an untrained network predicts nothing
