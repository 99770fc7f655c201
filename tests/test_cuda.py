"""The GPU path, end to end: run by `make gpu-check` on a machine with a CUDA GPU; skipped (with the reason) elsewhere."""

import os
import subprocess
import sys

import pytest
import torch
from tiny import TINY as SHARED_TINY

from ddpm_lib.checkpoints import load_checkpoint, load_ema_model
from ddpm_lib.config import TrainConfig
from ddpm_lib.devices import resolve_precision
from ddpm_lib.sampling import generate
from ddpm_lib.training import Trainer

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run `make gpu-check` on one)"
)
TINY = dict(SHARED_TINY)


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_training_on_cuda_learns_and_resumes_exactly(tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    # deterministic: cuDNN's autotuner may pick other (equally valid) kernels in the resumed run, changing the last bits
    cfg = TrainConfig.cpu_demo(
        **{**TINY, "checkpoint_every": 5}, max_steps=12, precision=precision, deterministic=True
    )
    full = Trainer(cfg, tmp_path / "full", device="cuda", progress=False)
    assert full.scaler.is_enabled() == (precision == "fp16")
    assert full.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    full.fit()
    part = Trainer(cfg, tmp_path / "part", device="cuda", progress=False)
    part.fit(max_steps=7)
    resumed = Trainer(cfg, tmp_path / "part", resume=True, device="cuda", progress=False)
    resumed.fit()
    for a, b in [(full.model, resumed.model), (full.ema, resumed.ema)]:
        pa, pb = _params(a), _params(b)
        assert all(torch.equal(pa[k], pb[k]) for k in pa), "resume on CUDA is not exact"
    assert "cuda" in load_checkpoint(tmp_path / "full/checkpoint.pt")["rng"]


def test_auto_precision_on_cuda():
    choice = resolve_precision("auto", "cuda")
    assert (
        choice.name == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
        and choice.source == "device"
    )


def test_sampling_on_cuda_matches_cpu_in_fp32(tmp_path):
    model, diffusion, cfg = load_ema_model(device="cuda")
    x_T = torch.randn(
        4, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0)
    )
    gpu = generate(
        model, diffusion, 4, cfg.image_size, num_steps=10, eta=0.0, x_T=x_T, precision="fp32"
    ).images
    cpu_model, _, _ = load_ema_model(device="cpu")
    cpu = generate(
        cpu_model, diffusion, 4, cfg.image_size, num_steps=10, eta=0.0, x_T=x_T, precision="fp32"
    ).images
    assert (gpu - cpu).abs().max() < 2e-2
    fast = generate(model, diffusion, 64, cfg.image_size, num_steps=50, precision="auto")
    assert torch.isfinite(fast.images).all()
    print(
        f"DDIM-50 of 64 images on {torch.cuda.get_device_name()}: {fast.seconds:.2f} s ({fast.precision.name})"
    )


def test_compile_on_cuda(tmp_path):
    trainer = Trainer(
        TrainConfig.cpu_demo(**TINY, max_steps=3, compile=True), None, device="cuda", progress=False
    )
    losses = [trainer.train_step() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_torchrun_one_process_nccl(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "ddpm_lib.train",
        "--model",
        "tiny",
        "--image-size",
        "16",
        "--num-images",
        "64",
        "--batch-size",
        "8",
        "--num-timesteps",
        "100",
        "--no-progress",
        "--max-steps",
        "4",
        "--checkpoint-every",
        "2",
        "--out",
        str(tmp_path / "ddp"),
    ]
    result = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(DDP, nccl)" in result.stdout
    assert load_checkpoint(tmp_path / "ddp/checkpoint.pt")["step"] == 4


def test_class_conditional_training_and_guided_sampling_on_cuda(tmp_path):
    """Label dropout, the class embedding and one batched guided pass under bf16/fp16 autocast and channels-last on CUDA."""
    cfg = TrainConfig.cpu_demo(
        **{**TINY, "checkpoint_every": 2}, max_steps=4, class_cond=True, deterministic=True
    )
    Trainer(cfg, tmp_path / "cond", device="cuda", progress=False).fit()
    part = Trainer(cfg, tmp_path / "part", device="cuda", progress=False)
    part.fit(max_steps=2)
    resumed = Trainer(cfg, tmp_path / "part", resume=True, device="cuda", progress=False)
    resumed.fit()
    full = load_checkpoint(tmp_path / "cond" / "checkpoint.pt")["model"]
    assert all(
        torch.equal(full[k].cpu(), v.cpu()) for k, v in resumed.model.state_dict().items()
    ), "class-conditional resume on CUDA is not exact"
    model, diffusion, cfg = load_ema_model(tmp_path / "cond" / "checkpoint.pt", device="cuda")
    labels = torch.arange(8) % cfg.num_classes
    x_T = torch.randn(
        8, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0)
    )
    plain = generate(
        model,
        diffusion,
        8,
        cfg.image_size,
        num_steps=5,
        eta=0.0,
        x_T=x_T,
        labels=labels,
        precision="fp32",
    ).images
    cpu_model, _, _ = load_ema_model(tmp_path / "cond" / "checkpoint.pt", device="cpu")
    cpu = generate(
        cpu_model,
        diffusion,
        8,
        cfg.image_size,
        num_steps=5,
        eta=0.0,
        x_T=x_T,
        labels=labels,
        precision="fp32",
    ).images
    assert (plain - cpu).abs().max() < 2e-2
    guided = generate(
        model,
        diffusion,
        8,
        cfg.image_size,
        num_steps=5,
        labels=labels,
        guidance_scale=3.0,
        precision="auto",
    )
    assert torch.isfinite(guided.images).all() and guided.precision.name in ("bf16", "fp16")
