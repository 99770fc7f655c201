"""The house rules of the library: lines the formatter keeps, imports that only point down the series, thin CLIs."""

import ast
import pathlib
import subprocess
import sys

import pytest

LIB = pathlib.Path(__file__).resolve().parents[1] / "ddpm_lib"
# The series' order: a module may import only modules listed before it.
ORDER = [
    "checks",
    "grading",
    "outputs",
    "schedules",
    "diffusion",
    "samplers",
    "bound",
    "unet",
    "toy2d",
    "toy_cars",
    "data",
    "devices",
    "config",
    "build",
    "checkpoints",
    "model_card",
    "sampling",
    "training",
    "features",
    "metrics",
    "plotting",
    "widgets",
    "train",
    "sample",
    "evaluate",
    "diagnose",
]


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ddpm_lib."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "ddpm_lib":
            names |= {a.name for a in node.names}
    return names


def test_every_module_is_placed_in_the_order():
    modules = {p.stem for p in LIB.glob("*.py")} - {"__init__"}
    assert modules == set(ORDER), f"place new modules in ORDER: {sorted(modules ^ set(ORDER))}"


@pytest.mark.parametrize("name", ORDER)
def test_imports_point_down_the_series(name):
    allowed = set(ORDER[: ORDER.index(name)])
    wrong = _imports(LIB / f"{name}.py") - allowed - {"__init__"}
    assert not wrong, f"ddpm_lib.{name} imports {sorted(wrong)}, which come later in the series"


ROOT = LIB.parent
CODE = [*sorted(LIB.glob("*.py")), *sorted((ROOT / "tests").glob("*.py"))]
CODE += [*sorted((ROOT / "benchmarks").glob("*.py")), *sorted((ROOT / "tools").glob("*.py"))]


@pytest.mark.parametrize("path", CODE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_lines_are_not_packed_past_the_formatter(path):
    """Lines read at a glance: the formatter's width (pyproject) holds, no formatter opt-out packs a line."""
    marker = "fmt: " + "skip"
    packed = [i for i, line in enumerate(path.read_text().splitlines(), 1) if marker in line]
    assert not packed, f"{path.name}: lines {packed} opt out of the formatter; split them instead"


@pytest.mark.slow
def test_sample_cli_does_not_load_the_training_engine():
    code = "import sys, ddpm_lib.sample; print('ddpm_lib.training' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "False"
