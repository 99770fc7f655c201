"""Each notebook is paired with a jupytext py:percent file for readable diffs; the two must hold the same cells."""

import json
import pathlib

import jupytext
import pytest

NOTEBOOKS = sorted(
    (pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb")
)


SERIES = [
    "01_noise_schedules",
    "02_forward_diffusion",
    "03_objective",
    "04_unet",
    "05_training",
    "06_sampling",
    "07_evaluation",
    "08_improving_the_recipe",
    "09_guidance",
    "10_continuous_time",
    "11_flow_matching",
    "12_debugging",
]


def test_the_series_is_in_order():
    """The notebooks are the series' first lessons, numbered in order, with no gap and no stray name."""
    names = [p.stem for p in NOTEBOOKS]
    assert len(names) >= 6 and names == SERIES[: len(names)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_ipynb_and_py_in_sync(path):
    nb = jupytext.read(path)
    py = jupytext.read(path.with_suffix(".py"))
    assert [(c.cell_type, c.source) for c in nb.cells] == [
        (c.cell_type, c.source) for c in py.cells
    ], f"{path.name} and {path.with_suffix('.py').name} differ: run `jupytext --sync {path}`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_and_markers(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] is not None for c in code), (
        "store the notebook executed (make demo)"
    )
    assert not any(o.get("output_type") == "error" for c in code for o in c["outputs"])
    checked = [c for c in code if "nbval-check-output" in c["metadata"].get("tags", [])]
    assert len(checked) >= 3, "mark at least 3 deterministic cells with nbval-check-output"
    for c in checked:
        assert "# NBVAL_CHECK_OUTPUT" in "".join(c["source"]), (
            "mark with the tag and the comment alike"
        )
    markdown = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "## Summary" in markdown and "## Exercises" in markdown
