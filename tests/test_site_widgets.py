"""The explorers' page copies (ddpm_lib.widgets.frames_html): the ``text/html`` a page without a kernel
shows, with the precomputed frames, a range input and an inline script, and nothing loaded from elsewhere;
and what tools/build_site.py changes in its copies of the notebooks and the README."""

import base64
import importlib.util
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

from ddpm_lib import widgets  # noqa: E402
from ddpm_lib.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_lib.schedules import make_betas  # noqa: E402
from ddpm_lib.widgets import Frame  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "build_site", Path(__file__).resolve().parents[1] / "tools" / "build_site.py"
)
build_site = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_site)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _data(page: str) -> dict:
    """The JSON the inline script reads."""
    found = re.findall(r'<script type="application/json">(.*?)</script>', page, re.S)
    assert len(found) == 1
    return json.loads(found[0])


def _range(page: str) -> dict[str, str]:
    tag = re.search(r'<input type="range"[^>]*>', page).group(0)
    return dict(re.findall(r'(\w+)="([^"]*)"', tag))


def _self_contained(page: str) -> None:
    """One inline script besides the data, no external script, stylesheet or picture."""
    assert re.search(r"<script[^>]*\bsrc=", page) is None and "<link" not in page
    assert all(
        src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page)
    )
    assert page.count("<script>") == 1 and "document.currentScript" in page


def _frames(n: int, size: int = 10) -> list[Frame]:
    return [Frame(i, bytes([i]) * size, f"<b>frame {i}</b>") for i in range(n)]


def test_forward_explorer_answers_html_with_every_frame():
    d = GaussianDiffusion(make_betas("linear", 100))
    x0 = torch.zeros(3, 8, 8)
    w = widgets.forward_explorer(d, x0, seed=0, num_frames=6)
    bundle, _ = InteractiveShell.instance().display_formatter.format(w)
    # JupyterLab still gets the ipywidgets view; a static page gets the HTML copy
    assert "application/vnd.jupyter.widget-view+json" in bundle and "text/html" in bundle
    page = bundle["text/html"]
    _self_contained(page)
    data = _data(page)
    assert data["labels"] == [str(t) for t in w.slider.options]
    assert [base64.b64decode(p) for p in data["pngs"][0]] == [f.png for f in w.frames]
    assert data["captions"] == [[f.caption for f in w.frames]]
    assert _range(page)["max"] == str(len(w.frames) - 1) and _range(page)["value"] == "0"
    assert base64.b64encode(w.frames[0].png).decode() in page.split("<script")[0]  # shown first
    assert "without a kernel" in page


def test_trajectory_html_starts_where_the_slider_is():
    g = torch.Generator().manual_seed(0)
    shape = (4, 2, 3, 8, 8)
    traj = {
        "timesteps": torch.tensor([9, 6, 3, 0]),
        "x_t": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g),
        "x0_pred": torch.randint(0, 256, shape, dtype=torch.uint8, generator=g),
    }
    w = widgets.trajectory_explorer(traj)
    page = w._repr_html_()
    assert _range(page)["value"] == "3" and _data(page)["labels"] == ["0", "1", "2", "3"]
    assert "t = 0</b>" in page.split("<script")[0]


def test_frames_are_thinned_evenly_to_the_byte_budget():
    frames = _frames(11, size=100)
    page = widgets.frames_html([frames], [str(i) for i in range(11)], "t", value=4, max_bytes=450)
    data = _data(page)
    assert data["labels"] == ["0", "3", "7", "10"]  # 4 frames fit in 450 bytes, the ends kept
    assert [base64.b64decode(p)[0] for p in data["pngs"][0]] == [0, 3, 7, 10]
    assert _range(page)["max"] == "3" and _range(page)["value"] == "1"  # the kept step nearest 4
    assert "4 of 11 positions" in page
    assert widgets._evenly(3, 10) == [0, 1, 2] and widgets._evenly(100, 1) == [0, 99]


def test_guidance_html_has_a_class_select_and_a_scale_slider():
    samples = torch.randint(0, 256, (3, 4, 2, 3, 8, 8), dtype=torch.uint8)
    names, scales = ("sedan", "pickup", "van"), (0.0, 0.5, 2.0, 8.0)
    w = widgets.guidance_explorer(samples, names, scales, nrow=2)
    w.dropdown.value, w.slider.value = "pickup", 2.0
    page = w._repr_html_()
    _self_contained(page)
    data = _data(page)
    assert data["labels"] == ["0", "0.5", "2", "8"] and data["interval"] == 700
    assert [[base64.b64decode(p) for p in row] for row in data["pngs"]] == [
        [f.png for f in row] for row in w.frames
    ]
    assert re.findall(r"<option( selected)?>(\w+)</option>", page) == [
        ("", "sedan"),
        (" selected", "pickup"),
        ("", "van"),
    ]
    assert _range(page)["value"] == "2" and "<b>pickup, w = 2</b>" in page.split("<script")[0]


@pytest.mark.slow
def test_schedule_html_says_it_needs_a_kernel():
    w = widgets.schedule_explorer(num_timesteps=100)
    page = w._repr_html_()
    assert "needs a running kernel" in page and "<input" not in page and "<script" not in page
    assert f"data:image/png;base64,{base64.b64encode(w.image.value).decode()}" in page


def test_a_caption_cannot_close_the_data_script():
    frames = [Frame(0, b"png", "</script><b>x</b>"), Frame(1, b"png", "y")]
    page = widgets.frames_html([frames], ["0", "1"], "t", value=1)
    data_script = page.split('<script type="application/json">')[1].split("</script>")[0]
    assert json.loads(data_script)["captions"][0][0] == "</script><b>x</b>"


def _tqdm_state(done: float, total: float) -> dict:
    """The widget state tqdm leaves in a notebook: an HBox of HTML, FloatProgress, HTML."""
    models = {
        "box": ("HBoxModel", {"children": ["IPY_MODEL_a", "IPY_MODEL_b", "IPY_MODEL_c"]}),
        "a": ("HTMLModel", {"value": "training:\u2007100%"}),
        "b": ("FloatProgressModel", {"value": done, "max": total}),
        "c": ("HTMLModel", {"value": "\u200710/10\u2007[00:05&lt;00:00]"}),
        "other": ("VBoxModel", {"children": []}),
    }
    return {k: {"model_name": name, "state": state} for k, (name, state) in models.items()}


def test_site_notebook_folds_code_and_shows_saved_progress_bars():
    view = "application/vnd.jupyter.widget-view+json"
    notebook = {
        "metadata": {
            "widgets": {"application/vnd.jupyter.widget-state+json": {"state": _tqdm_state(10, 10)}}
        },
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# title"},
            {
                "cell_type": "code",
                "metadata": {"tags": ["nbval-check-output"]},
                "outputs": [
                    {"output_type": "display_data", "data": {view: {"model_id": "box"}}},
                    {"output_type": "display_data", "data": {view: {"model_id": "other"}}},
                ],
            },
        ],
    }
    site = build_site.site_notebook(notebook)
    assert "tags" not in site["cells"][0]["metadata"]
    code = site["cells"][1]
    assert code["metadata"]["tags"] == ["nbval-check-output", "hide-input"]
    bar = code["outputs"][0]["data"]["text/html"]
    assert '<progress value="10" max="10">' in bar and "training:\u2007100%" in bar
    assert "10/10\u2007[00:05&lt;00:00]" in bar
    assert "text/html" not in code["outputs"][1]["data"]  # not a progress bar: left as it was
    assert build_site.site_notebook(site) == site  # idempotent: the tag is not added twice


def test_index_page_lists_the_notebooks_in_order_then_the_teachers_pages():
    page = build_site.index_page("# course\n", ["01_a.ipynb", "02_b.ipynb"])
    assert page.startswith("# course\n\n```{toctree}\n:hidden:")
    assert page.index("notebooks/01_a\nnotebooks/02_b") < page.index("TEACHING\nNOTATION")
