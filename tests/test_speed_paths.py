"""The speed paths keep the maths: fused Adam, channels-last sampling, and the benchmark's helpers."""

import importlib.util
from pathlib import Path

import pytest
import torch
from tiny import TINY as SHARED_TINY

from ddpm_lib.checkpoints import load_ema_model
from ddpm_lib.config import TrainConfig
from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.sampling import generate, trajectory
from ddpm_lib.schedules import make_betas
from ddpm_lib.training import Trainer
from ddpm_lib.unet import build_model

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(SHARED_TINY, precision="fp32")
CL = torch.channels_last


def _bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _conv_weights(model):
    return [p for p in model.parameters() if p.dim() == 4]


def test_cpu_trainer_uses_fused_adam_with_the_same_update():
    trainer = Trainer(TrainConfig.cpu_demo(**TINY), None, progress=False)
    assert trainer.optimizer.defaults["fused"] is True, (
        "on a CPU the engine steps Adam with the fused kernel"
    )
    # the fused kernel takes the step plain Adam takes, on the same weights and gradients
    reference = build_model("tiny", image_size=16)
    reference.load_state_dict(trainer.model.state_dict())
    # the engine's layout: the same convolutions, only Adam's kernel differs
    reference = reference.to(memory_format=CL)
    plain = torch.optim.Adam(reference.parameters(), lr=trainer.lr_at(0), foreach=False)
    x0 = trainer.get_batch(0)
    rng = torch.get_rng_state()
    trainer.train_step(x0)
    torch.set_rng_state(rng)
    loss = trainer.diffusion.training_loss(reference, x0, snr_gamma=trainer.config.snr_gamma)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), trainer.config.grad_clip)
    plain.step()
    for (name, p), q in zip(trainer.model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(
            p, q, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name} after one step: {m}"
        )


def test_load_ema_model_is_channels_last_and_computes_the_same():
    model, diffusion, cfg = load_ema_model()
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert all(p.is_contiguous(memory_format=CL) for p in _conv_weights(model)), (
        "conv weights channels-last"
    )
    nchw = load_ema_model()[0].to(memory_format=torch.contiguous_format)
    x, t = torch.randn(2, 3, cfg.image_size, cfg.image_size), torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), nchw(x, t), rtol=1e-4, atol=1e-5)


@pytest.fixture
def tiny_model():
    return build_model("tiny", image_size=16).eval()


def test_generate_draws_the_noise_sample_draws(tiny_model):
    """generate makes x_T channels-last itself, from the draw diffusion.sample would make: a seed gives the same images."""
    d = GaussianDiffusion(make_betas("linear", 100))
    out = generate(tiny_model, d, 3, 16, num_steps=4, eta=1.0, seed=7, precision="fp32").images
    direct = d.sample(
        tiny_model, (3, 3, 16, 16), "ddim", 4, 1.0, generator=torch.Generator().manual_seed(7)
    )
    torch.testing.assert_close(out, direct, rtol=1e-4, atol=1e-5)
    cl_model = build_model("tiny", image_size=16).eval()
    cl_model.load_state_dict(tiny_model.state_dict())
    cl_model = cl_model.to(memory_format=CL)
    torch.testing.assert_close(
        generate(cl_model, d, 3, 16, num_steps=4, eta=1.0, seed=7, precision="fp32").images,
        out,
        rtol=1e-4,
        atol=1e-5,
    )
    # batches: batch i seeded with seed + i, as documented
    two = generate(
        tiny_model, d, 3, 16, num_steps=4, eta=1.0, seed=7, batch_size=2, precision="fp32"
    ).images
    for i, part in enumerate((two[:2], two[2:])):
        seeded = torch.Generator().manual_seed(7 + i)
        torch.testing.assert_close(
            part,
            d.sample(tiny_model, (len(part), 3, 16, 16), "ddim", 4, 1.0, generator=seeded),
            rtol=1e-4,
            atol=1e-5,
        )
    # a given x_T, in either layout, gives the same images
    x_T = torch.randn(3, 3, 16, 16)
    a = generate(tiny_model, d, 3, 16, num_steps=4, eta=0.0, x_T=x_T, precision="fp32").images
    b = generate(
        tiny_model,
        d,
        3,
        16,
        num_steps=4,
        eta=0.0,
        x_T=x_T.contiguous(memory_format=CL),
        precision="fp32",
    ).images
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not tiny_model.training and all(p.is_contiguous() for p in _conv_weights(tiny_model)), (
        "the caller's model is left as it was"
    )


def test_trajectory_ends_where_generate_does(tiny_model):
    d = GaussianDiffusion(make_betas("linear", 100))
    traj = trajectory(
        tiny_model, d, 2, 16, sampler="ddim", num_steps=5, eta=1.0, seed=3, precision="fp32"
    )
    images = generate(
        tiny_model, d, 2, 16, sampler="ddim", num_steps=5, eta=1.0, seed=3, precision="fp32"
    ).images
    torch.testing.assert_close(traj["samples"], images, rtol=1e-4, atol=1e-5)
    assert traj["x_t"].shape == (5, 2, 3, 16, 16) and traj["x_t"].dtype == torch.uint8


def test_bench_profile_table_and_interleaving():
    bench = _bench()
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    rows = bench.profile_table(lambda: (a @ b).relu_(), steps=2, top=3)
    assert 1 <= len(rows) <= 3 and {"op", "self_ms", "pct"} == set(rows[0])
    assert all(r["self_ms"] >= 0 for r in rows) and sum(r["pct"] for r in rows) <= 100.0 + 1e-6
    assert [r["self_ms"] for r in rows] == sorted((r["self_ms"] for r in rows), reverse=True)
    order = []
    times = bench.interleaved(
        {"A": lambda: order.append("A"), "B": lambda: order.append("B")}, rounds=2, warmup=1
    )
    assert order == ["A", "B", "A", "B", "A", "B"] and [len(v) for v in times.values()] == [2, 2]
    assert bench.spread_pct([1.0, 1.1, 0.9]) == pytest.approx(20.0)


@pytest.mark.slow
def test_bench_peer_has_our_shape_and_trains_by_the_engine_step():
    diffusers = pytest.importorskip("diffusers")
    bench = _bench()
    peer = bench.DiffusersEps(diffusers.UNet2DModel(**bench.PEER_ARGS))
    ours = build_model("small", image_size=32)
    assert sum(p.numel() for p in peer.parameters()) == sum(p.numel() for p in ours.parameters())
    assert (
        bench.attention_sizes(peer, ("Attention",))
        == bench.attention_sizes(ours, ("AttentionBlock",))
        == [16, 16, 8, 16, 16, 16]
    )
    trainer = bench.engine_with_model(
        TrainConfig.cpu_demo(**{**TINY, "image_size": 32}), _tiny_cars32(), peer
    )
    before = [p.detach().clone() for p in peer.parameters()]
    loss = trainer.train_step()
    assert trainer.model is peer and trainer.optimizer.defaults["fused"] is True and loss > 0.1
    assert any(not torch.equal(p, q) for p, q in zip(peer.parameters(), before)), (
        "the peer's weights moved"
    )


def _tiny_cars32():
    from ddpm_lib.data import load_dataset

    return load_dataset("toy_cars", image_size=32, num_images=16)
