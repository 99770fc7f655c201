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


def test_schedule_explorer_slider_changes_result():
    w = widgets.schedule_explorer()
    assert "T=1000" in w.result._suptitle.get_text()
    w.children[1].value = 300  # the T slider
    assert "T=300" in w.result._suptitle.get_text() and "0.2192" in w.result._suptitle.get_text()  # ~0.22 left
    w.children[0].value = "cosine"
    assert w.result._suptitle.get_text().startswith("cosine, T=300")


def test_forward_explorer_histogram_tracks_t():
    d = GaussianDiffusion(make_betas("linear", 1000))
    x0 = torch.ones(3, 16, 16) * 0.8
    w = widgets.forward_explorer(d, x0)
    w.children[0].value = 999
    ax = w.result.axes[3]
    heights = [p.get_height() for p in ax.patches]
    centres = [p.get_x() + p.get_width() / 2 for p in ax.patches]
    mean = np.average(centres, weights=heights)
    assert abs(mean) < 0.3  # near N(0, 1) at the last step
    w.children[0].value = 0
    heights = [p.get_height() for p in w.result.axes[3].patches]
    centres = [p.get_x() + p.get_width() / 2 for p in w.result.axes[3].patches]
    assert np.average(centres, weights=heights) == pytest.approx(0.8, abs=0.05)  # x_0 barely changed at t=0


def test_trajectory_explorer_titles():
    traj = {"timesteps": torch.tensor([9, 5, 0]), "x_t": torch.zeros(3, 2, 3, 8, 8), "x0_pred": torch.zeros(3, 2, 3, 8, 8)}
    w = widgets.trajectory_explorer(traj)
    assert w.result.axes[0].get_title() == "$x_t$ at t=0"
    w.children[0].value = 0
    assert w.result.axes[0].get_title() == "$x_t$ at t=9"


def test_forward_strip_and_loss_plot(tmp_path):
    d = GaussianDiffusion(make_betas("linear", 100))
    fig = plotting.forward_strip(d, torch.zeros(2, 3, 8, 8), [0, 50, 99])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["t=0", "t=50", "t=99"]
    csv_path = tmp_path / "loss.csv"
    csv_path.write_text("step,loss\n" + "\n".join(f"{i},{1 / i}" for i in range(1, 30)))
    fig = plotting.plot_loss(csv_path)
    assert len(fig.axes[0].lines) == 2


def test_denoising_animation(tmp_path):
    traj = {"timesteps": torch.arange(9, -1, -1), "x_t": torch.rand(10, 4, 3, 8, 8) * 2 - 1, "x0_pred": torch.rand(10, 4, 3, 8, 8) * 2 - 1}
    path = plotting.save_denoising_animation(traj, tmp_path / "a.gif", frames=5, nrow=2)
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.is_animated
