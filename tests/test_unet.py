import pytest
import torch

from ddpm_lib.diffusion import GaussianDiffusion
from ddpm_lib.schedules import make_betas
from ddpm_lib.unet import (
    MODEL_PRESETS,
    UNET_PRESETS,
    UNet,
    UNetConfig,
    build_model,
    count_parameters,
    timestep_embedding,
)


def test_paper_cifar10_parameter_count():
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = UNet(UNetConfig())
    # Ho et al. 2020 report 35.7M parameters for their CIFAR-10 model
    assert count_parameters(model) == 35_746_307


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_output_shape_every_preset(preset):
    """Every preset maps (B, 3, H, W) to (B, 3, H, W); the paper-sized ones on the meta device.

    A meta tensor carries shapes and dtypes but no values, so the 35.7M-parameter networks are
    checked without seconds of convolutions; the smaller presets run for real and must be finite.
    """
    size = 64 if preset == "ddpm-64" else 32
    device = "meta" if preset.startswith("ddpm") else "cpu"
    with torch.device(device):
        model = build_model(preset, image_size=size).eval()
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    assert device == "meta" or torch.isfinite(out).all()


def test_small_preset_size_and_channels_last_bf16():
    model = build_model("small")
    assert 1.5e6 < count_parameters(model) < 1.7e6
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, torch.tensor([1, 2]))
    assert out.shape == x.shape


def test_time_embedding_values():
    emb = timestep_embedding(torch.tensor([0, 1, 500]), 8)
    assert emb.shape == (3, 8)
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # the first frequency is 1, the last is 1/10000
    assert emb[1, 0].item() == pytest.approx(torch.sin(torch.tensor(1.0)).item())
    assert emb[2, 3].item() == pytest.approx(torch.sin(torch.tensor(0.05)).item(), abs=1e-6)


def test_time_conditioning_changes_output():
    model = build_model("tiny").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x, torch.tensor([0])), model(x, torch.tensor([500])))


def test_seeded_regression_tiny_model():
    """A fixed expected value: catches any silent change in initialisation, architecture or sampler."""
    torch.manual_seed(1234)
    model = build_model("tiny", image_size=8)
    d = GaussianDiffusion(make_betas("linear", 10))
    g = torch.Generator().manual_seed(0)
    x = d.sample(model, (2, 3, 8, 8), generator=g)
    assert x.shape == (2, 3, 8, 8)
    assert x.mean().item() == pytest.approx(EXPECTED_MEAN, abs=1e-4)
    assert x.abs().sum().item() == pytest.approx(EXPECTED_ABS_SUM, rel=1e-4)


EXPECTED_MEAN = 0.011370591819286346
EXPECTED_ABS_SUM = 248.4598388671875


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=30), "cannot be halved"),
        (dict(image_size=32, channel_mults=(1, 2, 2, 2, 2, 2, 2)), "cannot be halved"),
        (dict(base_channels=24, num_groups=32), "GroupNorm cannot split 24"),
        (dict(attention_resolutions=(12,)), "never occur"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(UNetConfig(**kwargs))


def test_bad_preset_and_sizes():
    with pytest.raises(ValueError, match="valid choices"):
        build_model("huge")
    with pytest.raises(ValueError, match="divisible by 32"):
        build_model("resnet18", image_size=48)
    with pytest.raises(ValueError, match="divisible by 16"):
        build_model("simple", image_size=40)


def test_presets_are_valid():
    assert set(UNET_PRESETS) <= set(MODEL_PRESETS)
