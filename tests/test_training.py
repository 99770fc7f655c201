import csv
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY as SHARED_TINY

from ddpm_lib import sample as sample_cli
from ddpm_lib import train as train_cli
from ddpm_lib.checkpoints import export_weights, load_checkpoint, load_ema_model, save_atomic
from ddpm_lib.config import TrainConfig
from ddpm_lib.devices import resolve_precision
from ddpm_lib.training import Trainer, TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(SHARED_TINY)
TINY_ARGS = shlex.split(
    "--model tiny --image-size 16 --num-images 64 --batch-size 8 --num-timesteps 100 "
    "--log-every 5 --no-progress --precision fp32 --num-sample-images 4 --sample-steps 5"
)


def tiny_config(**kw) -> TrainConfig:
    return TrainConfig.cpu_demo(**{**TINY, **kw})


def _params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
def test_loss_falls_when_overfitting(tmp_path):
    trainer = Trainer(
        tiny_config(num_images=8, batch_size=8, max_steps=40, lr=3e-3), tmp_path, progress=False
    )
    # 40 steps on 8 images: the last 10 steps' loss is 0.3-0.5 of the first 10's
    history = trainer.fit()
    first = np.mean([r["loss"] for r in history[:5]])
    last = np.mean([r["loss"] for r in history[-5:]])
    assert last < 0.7 * first
    assert (tmp_path / "loss.csv").exists() and (tmp_path / "samples/step_000040.png").exists()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 40


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.slow
def test_resume_in_process_is_exact(tmp_path, precision):
    cfg = tiny_config(max_steps=5, precision=precision, checkpoint_every=2)
    full = Trainer(cfg, tmp_path / "full", progress=False)
    full.fit()
    part = Trainer(cfg, tmp_path / "part", progress=False)
    part.fit(max_steps=3)  # checkpoint at 2 and at the end (3)
    resumed = Trainer(cfg, tmp_path / "part", resume=True, progress=False)
    assert resumed.step == 3
    resumed.fit()
    for a, b in [(full.model, resumed.model), (full.ema, resumed.ema)]:
        pa, pb = _params(a), _params(b)
        assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, one_thread):
    """A CLI run killed with SIGKILL and resumed ends with the same weights as an uninterrupted run."""
    args = [*TINY_ARGS, "--max-steps", "16", "--checkpoint-every", "4", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ddpm_lib.train"]
    quiet = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim = subprocess.Popen([*cmd, *args, "--out", str(tmp_path / "killed")], **quiet)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = load_checkpoint(ckpt)["step"]
    assert 4 <= killed_at < 16, "the run was not killed mid-way; the test proves nothing"
    # the uninterrupted run and the resumed one: the same command line, in this process (one thread, as
    # the victim); only the kill needs a process of its own
    assert train_cli.main([*args, "--out", str(tmp_path / "full")]) == 0
    assert train_cli.main([*args, "--out", str(tmp_path / "killed"), "--resume"]) == 0

    a, b = load_checkpoint(tmp_path / "full/checkpoint.pt"), load_checkpoint(ckpt)
    assert a["step"] == b["step"] == 16
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    steps = [int(float(r["step"])) for r in csv.DictReader(open(tmp_path / "killed/loss.csv"))]
    assert steps == [
        int(float(r["step"])) for r in csv.DictReader(open(tmp_path / "full/loss.csv"))
    ]


def test_checkpoint_is_weights_only_and_refuses_pickles(tmp_path):
    trainer = Trainer(tiny_config(max_steps=2), tmp_path, progress=False)
    trainer.fit()
    torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # must not raise
    bad = tmp_path / "evil.pt"
    torch.save({"ema": {}, "config": {}, "payload": Path("/etc/passwd")}, bad)
    with pytest.raises(ValueError, match="refusing to load"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_atomic_save_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_atomic({"step": 1}, path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_atomic({"step": 2}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(max_steps=4, checkpoint_every=2), tmp_path, progress=False)
    trainer.fit(max_steps=2)
    monkeypatch.setattr(
        trainer.diffusion,
        "_training_loss",
        lambda *a, **k: torch.tensor(float("nan"), requires_grad=True),
    )
    with pytest.raises(
        TrainingDiverged, match=r"checkpoint .* \(step 2\) is kept; continue with --resume"
    ):
        trainer.fit()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2


def test_keyboard_interrupt_saves_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(max_steps=50, log_every=1), tmp_path, progress=False)

    def interrupt(t, row):
        if t.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(callback=interrupt)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


def test_resume_with_other_model_is_refused(tmp_path):
    Trainer(tiny_config(max_steps=1), tmp_path, progress=False).fit()
    with pytest.raises(ValueError, match="ema_decay: checkpoint 0.99 vs now 0.5"):
        Trainer(tiny_config(max_steps=1, ema_decay=0.5), tmp_path, resume=True, progress=False)
    # max_steps may change
    resumed = Trainer(tiny_config(max_steps=5), tmp_path, resume=True, progress=False)
    assert resumed.config.max_steps == 5


def test_new_run_refuses_to_overwrite_a_run(tmp_path):
    Trainer(tiny_config(max_steps=1), tmp_path, progress=False).fit()
    with pytest.raises(ValueError, match="already holds a training run"):
        Trainer(tiny_config(max_steps=1), tmp_path, progress=False)


def test_ema_warmup_formula(tmp_path):
    trainer = Trainer(tiny_config(ema_decay=0.999), tmp_path, progress=False)
    before = _params(trainer.ema.module)
    trainer.train_step()
    after_model = _params(trainer.model)
    # the first update copies the model (n_averaged = 0); the second uses decay min(0.999, 2/11)
    assert all(
        torch.equal(trainer.ema.module.state_dict()[k], after_model[k])
        for k in after_model
        if "num_batches" not in k
    )
    ema1 = _params(trainer.ema.module)
    trainer.train_step()
    m2 = _params(trainer.model)
    d = 2 / 11
    k = "conv_in.weight"
    assert torch.allclose(
        trainer.ema.module.state_dict()[k], d * ema1[k] + (1 - d) * m2[k], atol=1e-7
    )
    assert not torch.equal(before[k], ema1[k])


def test_batches_cover_the_dataset_each_epoch(tmp_path):
    trainer = Trainer(tiny_config(), tmp_path, progress=False)
    idx = torch.cat([trainer.batch_indices(s) for s in range(trainer.steps_per_epoch)])
    assert sorted(idx.tolist()) == list(range(64))
    # reshuffled
    assert not torch.equal(trainer.batch_indices(0), trainer.batch_indices(trainer.steps_per_epoch))
    x = trainer.get_batch(0)
    assert x.shape == (8, 3, 16, 16) and -1 <= x.min() and x.max() <= 1


def test_lr_warmup():
    trainer = Trainer(tiny_config(warmup_steps=10, lr=1e-3), None, progress=False)
    assert (
        trainer.lr_at(0) == pytest.approx(1e-4)
        and trainer.lr_at(9) == pytest.approx(1e-3)
        and trainer.lr_at(500) == 1e-3
    )


def test_precision_choices():
    assert resolve_precision("bf16", torch.device("cpu")).dtype == torch.bfloat16
    assert resolve_precision("fp32", torch.device("cpu")).dtype == torch.float32
    with pytest.raises(ValueError, match="is for GPUs"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="valid choices: auto, bf16, fp16, fp32"):
        TrainConfig(precision="int8")
    with pytest.raises(ValueError, match="valid choices"):
        TrainConfig(model="giant")


@pytest.mark.slow
def test_v_prediction_with_min_snr_trains_and_its_checkpoint_samples_as_v(tmp_path):
    args = train_cli.build_parser().parse_args(
        ["--out", str(tmp_path), "--prediction-type", "v_prediction", "--snr-gamma", "5"]
    )
    cfg = train_cli.config_from_args(args)
    assert cfg.prediction_type == "v_prediction" and cfg.snr_gamma == 5.0
    trainer = Trainer(
        tiny_config(
            num_images=8,
            batch_size=8,
            max_steps=40,
            lr=3e-3,
            prediction_type="v_prediction",
            snr_gamma=5.0,
        ),
        tmp_path / "run",
        progress=False,
    )
    history = trainer.fit()
    assert np.mean([r["loss"] for r in history[-5:]]) < 0.7 * np.mean(
        [r["loss"] for r in history[:5]]
    )
    model, diffusion, cfg = load_ema_model(tmp_path / "run/checkpoint.pt")
    assert diffusion.prediction_type == "v_prediction" and cfg.snr_gamma == 5.0
    assert (
        sample_cli.main(
            [
                "--checkpoint",
                str(tmp_path / "run/checkpoint.pt"),
                "--num-samples",
                "2",
                "--steps",
                "3",
                "--out",
                str(tmp_path / "s.npz"),
            ]
        )
        == 0
    )
    with pytest.raises(ValueError, match="snr_gamma"):
        tiny_config(snr_gamma=-1.0)


@pytest.mark.slow
def test_width_depth_and_attention_overrides_reach_the_network_and_its_checkpoint(tmp_path):
    args = train_cli.build_parser().parse_args(
        ["--out", "x", "--base-channels", "24", "--num-res-blocks", "1", "--attention-resolutions"]
    )
    cfg = train_cli.config_from_args(args)
    assert (cfg.base_channels, cfg.num_res_blocks, cfg.attention_resolutions) == (24, 1, ())
    trainer = Trainer(
        tiny_config(base_channels=8, num_res_blocks=2, attention_resolutions=[8], max_steps=2),
        tmp_path,
        progress=False,
    )
    trainer.fit()
    net = trainer.ema.module
    assert (
        net.config.base_channels == 8
        and net.config.num_res_blocks == 2
        and net.config.attention_resolutions == (8,)
    )
    model, _, cfg = load_ema_model(tmp_path / "checkpoint.pt")
    assert cfg.attention_resolutions == (8,) and sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in net.parameters()
    )
    with pytest.raises(ValueError, match="fixed shape"):
        tiny_config(model="simple", base_channels=8)
    with pytest.raises(ValueError, match="num_res_blocks"):
        tiny_config(num_res_blocks=0)


@pytest.mark.slow
def test_export_weights_and_sample_cli(tmp_path):
    Trainer(tiny_config(max_steps=3), tmp_path / "run", progress=False).fit()
    size = export_weights(tmp_path / "run/checkpoint.pt", tmp_path / "w.pt")
    assert size < (tmp_path / "run/checkpoint.pt").stat().st_size / 3
    model, diffusion, cfg = load_ema_model(tmp_path / "w.pt")
    assert cfg.model == "tiny" and diffusion.num_timesteps == 100 and not model.training
    assert (
        sample_cli.main(
            [
                "--checkpoint",
                str(tmp_path / "w.pt"),
                "--num-samples",
                "5",
                "--batch-size",
                "2",
                "--steps",
                "3",
                "--out",
                str(tmp_path / "s.npz"),
            ]
        )
        == 0
    )
    arr = np.load(tmp_path / "s.npz")["arr_0"]
    assert arr.shape == (5, 16, 16, 3) and arr.dtype == np.uint8
    assert (
        sample_cli.main(
            [
                "--checkpoint",
                str(tmp_path / "run/checkpoint.pt"),
                "--num-samples",
                "4",
                "--sampler",
                "ddpm",
                "--out",
                str(tmp_path / "s.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "s.png").stat().st_size > 100
    assert (
        sample_cli.main(["--checkpoint", str(tmp_path / "w.pt"), "--out", str(tmp_path / "s.jpg")])
        == 2
    )
    assert (
        sample_cli.main(
            ["--checkpoint", str(tmp_path / "nothing.pt"), "--out", str(tmp_path / "s.png")]
        )
        == 2
    )


def test_train_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train_cli.main(["--help"])
    assert info.value.code == 0 and "--max-steps" in capsys.readouterr().out
    assert train_cli.main(["--out", str(tmp_path), "--dataset", "folder", "--no-progress"]) == 2
    assert "needs data_root" in capsys.readouterr().err
    assert train_cli.main(["--out", str(tmp_path / "none"), "--resume", "--no-progress"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_gloo_processes_resume_exactly(tmp_path):
    """The training engine under torchrun: DDP with gloo on the CPU, rank 0 writes the checkpoint, and 6 steps
    then a resume to 8 end with the weights of 8 steps uninterrupted (tests/torchrun_resume.py runs the three)."""
    resumed, whole = tmp_path / "resumed", tmp_path / "whole"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(Path(__file__).with_name("torchrun_resume.py")),
        str(resumed),
        str(whole),
        *TINY_ARGS,
        "--checkpoint-every",
        "3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a session of its own, so that a hang takes torchrun's worker processes down with it
    with subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as launch:
        try:
            stdout, stderr = launch.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(launch.pid, signal.SIGKILL)
            stdout, stderr = launch.communicate()
            pytest.fail(f"torchrun did not finish in 300 s: {stderr[-3000:]}")
    assert launch.returncode == 0, stderr[-3000:]
    assert "on 2 process(es) (DDP, gloo)" in stdout and "resumed at step 6" in stdout, stdout
    a, b = load_checkpoint(resumed / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    assert a["step"] == b["step"] == 8 and a["world_size"] == 2
    rng = a["rng"]["cpu"]  # each rank's generator, restored per rank on resume
    assert (
        rng.shape[0] == 2 and not torch.equal(rng[0], rng[1]) and torch.equal(rng, b["rng"]["cpu"])
    )
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
