"""The guidance explorer and its static twin (ddpm_lib.widgets): the frame for a (body type, w) position, the Play
button, and a static grid that draws the same panels."""

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ddpm_lib import plotting, widgets  # noqa: E402

NAMES = ("sedan", "pickup", "van")
SCALES = (0.0, 0.5, 2.0, 8.0)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _samples(n=4, size=8):
    """(K, S, N, 3, H, W) uint8: every (class, scale) cell different."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(
        0, 256, (len(NAMES), len(SCALES), n, 3, size, size), dtype=torch.uint8, generator=g
    )


def _decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def test_guidance_explorer_shows_the_frame_for_class_and_scale():
    samples = _samples()
    predicted = torch.zeros(len(NAMES), len(SCALES), 4, dtype=torch.long)
    predicted[2, 3] = 2  # the vans at w = 8: all read as vans
    predicted[1, 1, :3] = 1  # three of the four pickups at w = 0.5
    w = widgets.guidance_explorer(samples, NAMES, SCALES, nrow=2, predicted=predicted)
    assert len(w.frames) == len(NAMES) and all(len(row) == len(SCALES) for row in w.frames)
    assert list(w.dropdown.options) == list(NAMES) and list(w.slider.options) == list(SCALES)
    assert w.slider.continuous_update  # precomputed frames follow the mouse
    assert (w.play.min, w.play.max, w.play.step) == (0, len(SCALES) - 1, 1)
    assert w.play.link.source == (w.play, "value") and w.play.link.target == (w.slider, "index")
    assert any(
        w.play in box.children and w.slider in box.children
        for box in w.children
        if hasattr(box, "children")
    )
    assert w.frame is w.frames[0][0] and "sedan, w = 0</b>" in w.text.value
    for name, scale in [("van", 8.0), ("pickup", 0.5), ("sedan", 2.0)]:
        w.dropdown.value, w.slider.value = name, scale
        k, s = NAMES.index(name), SCALES.index(scale)
        assert w.frame is w.frames[k][s] and w.image.value == w.frames[k][s].png
        assert (
            f"{name}, w = {scale:g}</b>" in w.text.value
            and f"s = w + 1 = {scale + 1:g}" in w.text.value
        )
        assert w.frame.stats["guidance_scale"] == scale and w.frame.t == s
        img = _decode(w.image.value)  # the 2x2 grid of the cell's samples, upscaled to about 256 px
        grid = plotting.to_numpy_image(samples[k, s], nrow=2)
        scale_px = img.shape[0] // grid.shape[0]
        assert scale_px == 256 // grid.shape[0] and np.array_equal(
            img[::scale_px, ::scale_px], grid
        )
    assert (
        w.frames[2][3].stats["accuracy"] == 1.0 and "reads 4 of 4 as van" in w.frames[2][3].caption
    )
    assert (
        w.frames[1][1].stats["accuracy"] == 0.75
        and "reads 3 of 4 as pickup" in w.frames[1][1].caption
    )
    assert max(len(f.png) for row in w.frames for f in row) < 64 * 1024  # PNG bytes, not arrays


def test_guidance_explorer_without_predictions():
    w = widgets.guidance_explorer(
        torch.rand(len(NAMES), len(SCALES), 2, 3, 8, 8) * 2 - 1, NAMES, SCALES
    )
    assert "accuracy" not in w.frame.stats and "classifier" not in w.text.value


def test_guidance_static_draws_the_explorer_panels():
    samples = _samples(n=6)
    fig = widgets.guidance_static(samples, NAMES, SCALES, nrow=3, num_images=3)
    assert len(fig.axes) == len(NAMES) * len(SCALES)
    axes = np.array(fig.axes).reshape(len(NAMES), len(SCALES))
    assert [ax.get_title() for ax in axes[0]] == ["w = 0", "w = 0.5", "w = 2", "w = 8"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == list(NAMES)
    assert np.array_equal(
        axes[1, 2].images[0].get_array(), plotting.to_numpy_image(samples[1, 2, :3], nrow=3)
    )
    explorer = widgets.guidance_explorer(samples[:, :, :3], NAMES, SCALES, nrow=3)
    img = _decode(explorer.frames[1][2].png)
    scale_px = img.shape[0] // axes[1, 2].images[0].get_array().shape[0]
    assert np.array_equal(img[::scale_px, ::scale_px], np.asarray(axes[1, 2].images[0].get_array()))
