"""Interrupts and shared run folders: Ctrl-C stops at a step boundary and resumes bit-identically, and a
run folder is never shared by two trainings at once.
"""

import csv
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddpm_lib import train as train_cli
from ddpm_lib.checkpoints import CHECKPOINT_NAME, LOG_NAME, load_checkpoint
from ddpm_lib.config import TrainConfig
from ddpm_lib.training import Trainer, TrainingInterrupted

ROOT = Path(__file__).resolve().parents[1]
TINY = (
    "--model tiny --image-size 16 --batch-size 8 --num-timesteps 20 --precision fp32 --device cpu "
    "--no-progress --log-every 1 --num-sample-images 1 --sample-steps 1 --num-images 64 --seed 5"
)


def _steps(log: Path) -> list[int]:
    with open(log, newline="") as f:
        return [int(float(r["step"])) for r in csv.DictReader(f)]


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i]), "optimizer"
    assert torch.equal(a["rng"]["cpu"], b["rng"]["cpu"])


@pytest.mark.slow
def test_ctrl_c_saves_at_a_step_boundary_resumes_exactly_and_locks_the_folder(tmp_path, capsys):
    """A CLI run gets SIGINT; meanwhile a second run into its folder is refused; --resume matches a run never stopped."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen(
        [sys.executable, "-m", "ddpm_lib.train", *shlex.split(TINY), "--max-steps", "100000"]
        + ["--out", str(run)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        if (run / LOG_NAME).exists() and len(_steps(run / LOG_NAME)) >= 3:
            break
        time.sleep(0.02)
    assert victim.poll() is None, victim.communicate()[1]

    # a second training into the same folder is refused at once, and changes nothing
    assert train_cli.main(shlex.split(f"{TINY} --max-steps 2 --out {run}")) == 2
    err = capsys.readouterr().err
    assert re.search(
        r"error: the run folder .*run is in use by another training \(process \d+\)", err
    )
    assert "Traceback" not in err and not (run / CHECKPOINT_NAME).exists()

    victim.send_signal(signal.SIGINT)
    _, err = victim.communicate(timeout=120)
    assert victim.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert re.fullmatch(
        r"interrupted by SIGINT at step (\d+); checkpoint saved to .*checkpoint.pt; "
        r"continue with: python -m ddpm_lib.train --out .*run --resume",
        err.strip(),
    ), err
    stopped = load_checkpoint(run / CHECKPOINT_NAME)["step"]
    assert int(re.search(r"step (\d+)", err)[1]) == stopped >= 3
    assert _steps(run / LOG_NAME) == list(range(1, stopped + 1)), (
        "rows of another run, or lost rows"
    )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the interrupted process ran
    try:
        total = f"--max-steps {stopped + 2}"
        assert train_cli.main(shlex.split(f"{TINY} {total} --out {run} --resume")) == 0
        assert train_cli.main(shlex.split(f"{TINY} {total} --out {tmp_path / 'whole'}")) == 0
    finally:
        torch.set_num_threads(threads)
    _assert_same_state(
        load_checkpoint(tmp_path / "whole" / CHECKPOINT_NAME),
        load_checkpoint(run / CHECKPOINT_NAME),
    )
    assert _steps(run / LOG_NAME) == _steps(tmp_path / "whole" / LOG_NAME)


def _tiny_config(**kw) -> TrainConfig:
    return TrainConfig.cpu_demo(
        model="tiny",
        image_size=16,
        num_images=16,
        batch_size=8,
        num_timesteps=20,
        precision="fp32",
        num_sample_images=1,
        sample_steps=1,
        log_every=1,
        **kw,
    )


def test_sigterm_stops_fit_at_a_step_boundary_and_restores_the_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    trainer = Trainer(_tiny_config(max_steps=50), tmp_path, progress=False)

    def terminate(t, row):
        if t.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(
        TrainingInterrupted, match=r"interrupted by SIGTERM at step 2; checkpoint saved"
    ) as info:
        trainer.fit(callback=terminate)
    assert info.value.signum == signal.SIGTERM and info.value.step == 2
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 2
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    resumed = Trainer(_tiny_config(max_steps=3), tmp_path, resume=True, progress=False)
    assert resumed.step == 2


def test_an_interrupt_inside_a_step_saves_nothing(tmp_path, capsys):
    """Mid-step the weights, EMA and optimizer disagree: the last checkpoint is kept instead."""
    trainer = Trainer(_tiny_config(max_steps=50, checkpoint_every=2), tmp_path, progress=False)
    step = trainer.train_step

    def interrupted_step(*a, **k):
        loss = step(*a, **k)
        if trainer.step == 3:  # the optimizer has stepped: raised inside the step
            raise KeyboardInterrupt
        return loss

    trainer.train_step = interrupted_step
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert (
        "interrupted during step 4: not saved; the last checkpoint is kept"
        in capsys.readouterr().out
    )
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 2


def test_two_trainers_of_one_process_share_the_folder(tmp_path):
    """A notebook holds its trainer while it resumes the same folder: the lock is the process's."""
    first = Trainer(_tiny_config(max_steps=1), tmp_path, progress=False)
    first.fit()
    resumed = Trainer(_tiny_config(max_steps=2), tmp_path, resume=True, progress=False)
    assert resumed.step == 1 and first.step == 1
