import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ddpm_lib import plotting, widgets  # noqa: E402
from ddpm_lib.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_lib.schedules import make_betas  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_to_numpy_image_grid():
    x = torch.zeros(4, 3, 8, 8)
    x[0] = 1.0
    img = plotting.to_numpy_image(x, nrow=2, padding=1)
    assert img.shape == (19, 19, 3) and img.dtype == np.uint8
    assert (img[1:9, 1:9] == 255).all() and (img[1:9, 10:18] == 128).all()


def _decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def _check_play(w, max_value, step=1):
    """The Play button sits beside the slider, spans the same positions and is jslinked to it."""
    assert any(
        w.play in box.children and w.slider in box.children
        for box in w.children
        if hasattr(box, "children")
    )
    assert (w.play.min, w.play.max, w.play.step) == (
        0 if hasattr(w.slider, "index") else w.slider.min,
        max_value,
        step,
    )
    assert w.play.link.source == (w.play, "value")
    assert w.play.link.target == (w.slider, "index" if hasattr(w.slider, "index") else "value")


@pytest.mark.slow
def test_schedule_explorer_slider_changes_result():
    w = widgets.schedule_explorer()
    assert "T=1000" in w.text.value and "T=1000" in w.figure._suptitle.get_text()
    _check_play(w, 2000, step=50)
    assert not w.slider.continuous_update  # a matplotlib redraw is too slow to follow the mouse
    first = w.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    w.slider.value = 300  # the T slider
    assert "T=300" in w.figure._suptitle.get_text() and "0.2192" in w.text.value  # ~0.22 left
    assert w.image.value != first
    w.dropdown.value = "cosine"
    assert (
        w.figure._suptitle.get_text().startswith("cosine, T=300")
        and "cosine, T=300" in w.text.value
    )
    w.dropdown.value, w.slider.value = "linear", 1000
    assert w.image.value == first  # a revisited position comes from the cache


def test_schedule_static_rows_match_the_explorer():
    fig = widgets.schedule_static([("linear", 300), ("cosine", 1000)])
    titles = [sub._suptitle.get_text() for sub in fig.subfigs]
    assert titles == [
        widgets.schedule_view("linear", 300)._suptitle.get_text(),
        widgets.schedule_view("cosine", 1000)._suptitle.get_text(),
    ]
    assert "0.2192" in titles[0] and len(fig.axes) == 8


def test_forward_timesteps_are_round_and_end_at_T_minus_1():
    ts = widgets.forward_timesteps(1000)
    assert ts[:3] == [0, 10, 20] and ts[-2:] == [990, 999] and len(ts) == 101
    assert widgets.forward_timesteps(50) == list(range(50))


def test_forward_explorer_shows_the_precomputed_frame_for_t():
    d = GaussianDiffusion(make_betas("linear", 1000))
    x0 = torch.ones(3, 16, 16) * 0.8
    x0[0] = -0.5
    w = widgets.forward_explorer(d, x0, seed=3, num_frames=12)
    ts = list(w.slider.options)
    assert ts[0] == 0 and ts[-1] == 999 and len(w.frames) == len(ts) == 12
    assert w.slider.continuous_update
    _check_play(w, len(ts) - 1)
    assert max(len(f.png) for f in w.frames) < 64 * 1024  # PNG bytes, not float arrays
    # the explorer's noise for seed=3
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    for t in [999, 0, ts[5]]:
        w.slider.value = t
        assert w.frame.t == t and w.image.value == w.frames[ts.index(t)].png
        ab = d.alphas_cumprod[t].item()
        assert (
            f"t = {t}</b>" in w.text.value
            and f"{ab**0.5:.3f}" in w.text.value
            and f"{(1 - ab) ** 0.5:.3f}" in w.text.value
        )
        x_t = d.q_sample(x0[None], torch.tensor([t]), noise[None])[0]
        assert (
            w.frame.stats["std"] == pytest.approx(x_t.std().item())
            and f"{x_t.std().item():.3f}" in w.text.value
        )
        # panels: x_0 | noise | x_t | histogram, 16 px upscaled 8 times, 8 px gaps
        img = _decode(w.image.value)
        assert img.shape[0] == 128
        panel = img[:, 2 * (128 + 8) : 2 * (128 + 8) + 128][::8, ::8]
        assert np.array_equal(panel, plotting.to_numpy_image(x_t.clamp(-1, 1)))
    assert w.frames[-1].stats["std"] == pytest.approx(1.0, abs=0.1)  # pure noise at the last step
    # x_0 barely changed at t=0
    assert w.frames[0].stats["std"] == pytest.approx(x0.std().item(), abs=0.02)


def test_forward_static_draws_the_explorer_frames():
    d = GaussianDiffusion(make_betas("linear", 1000))
    x0 = torch.linspace(-1, 1, 3 * 8 * 8).reshape(3, 8, 8)
    frames = widgets.forward_frames(
        d, x0, [0, 500, 999], torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    )
    fig = widgets.forward_static(d, x0, [0, 500, 999], seed=0)
    assert len(fig.axes) == 12
    for row, frame in enumerate(frames):
        axes = fig.axes[4 * row : 4 * row + 4]
        assert [ax.get_title() for ax in axes[:3]] == [
            "$x_0$",
            r"noise $\epsilon$",
            f"$x_t$, t={frame.t}",
        ]
        for key in [
            "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod",
            "std",
        ]:  # same noise, same numbers
            assert f"{frame.stats[key]:.3f}" in axes[3].get_title()


def _toy_trajectory(steps=3, batch=2):
    g = torch.Generator().manual_seed(0)
    shape = (steps, batch, 3, 8, 8)
    return {
        "timesteps": torch.linspace(9, 0, steps).round().long(),
        "x_t": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g),
        "x0_pred": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g),
    }


def test_trajectory_explorer_shows_the_frame_for_the_step():
    traj = _toy_trajectory()
    w = widgets.trajectory_explorer(traj)
    assert w.slider.value == 2 and w.frame.t == 0 and "t = 0</b>" in w.text.value
    assert w.slider.continuous_update
    _check_play(w, 2)
    w.slider.value = 0
    assert (
        w.frame.t == 9
        and "t = 9</b> (step 0 of 2)" in w.text.value
        and w.image.value == w.frames[0].png
    )
    img = _decode(w.image.value)
    left = plotting.to_numpy_image(traj["x_t"][0])  # the x_t grid, upscaled to about 256 px
    scale = img.shape[0] // left.shape[0]
    assert scale == 256 // left.shape[0] and np.array_equal(
        img[::scale, ::scale][:, : left.shape[1]], left
    )
    right = plotting.to_numpy_image(traj["x0_pred"][0])
    assert np.array_equal(img[::scale, ::scale][:, -right.shape[1] :], right)
    assert len(widgets.trajectory_explorer(traj, num_images=1).frames[0].png) < len(w.frames[0].png)


def test_trajectory_static_titles_match_the_slider():
    traj = _toy_trajectory(steps=4)
    fig = widgets.trajectory_static(traj, [0, 3])  # one column per step: x_t on top, hat-x_0 below
    top, bottom = [ax.get_title() for ax in fig.axes[:2]], [ax.get_title() for ax in fig.axes[2:]]
    assert top == ["$x_t$ at t=9", "$x_t$ at t=0"] and bottom == [
        r"predicted $\hat x_0$ at t=9",
        r"predicted $\hat x_0$ at t=0",
    ]
    view = widgets.trajectory_view(traj, 3)
    assert [ax.get_title() for ax in view.axes] == [top[1], bottom[1]]
    assert np.array_equal(
        fig.axes[1].images[0].get_array(), plotting.to_numpy_image(traj["x_t"][3])
    )


def test_forward_strip_and_loss_plot(tmp_path):
    d = GaussianDiffusion(make_betas("linear", 100))
    fig = plotting.forward_strip(d, torch.zeros(2, 3, 8, 8), [0, 50, 99])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["t=0", "t=50", "t=99"]
    csv_path = tmp_path / "loss.csv"
    csv_path.write_text("step,loss\n" + "\n".join(f"{i},{1 / i}" for i in range(1, 30)))
    fig = plotting.plot_loss(csv_path)
    assert len(fig.axes[0].lines) == 2


def test_denoising_animation(tmp_path):
    traj = {
        "timesteps": torch.arange(9, -1, -1),
        "x_t": torch.rand(10, 4, 3, 8, 8) * 2 - 1,
        "x0_pred": torch.rand(10, 4, 3, 8, 8) * 2 - 1,
    }
    path = plotting.save_denoising_animation(traj, tmp_path / "a.gif", frames=5, nrow=2)
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.is_animated
