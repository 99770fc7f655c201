"""The conda environment, pyproject and Makefile must agree: a newcomer's commands depend on it."""

import pathlib
import re
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name where they differ


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_covers_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = set(), set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip |= {_name(p) for p in dep["pip"] if not p.startswith("-e")}
            assert "-e .[dev,classroom]" in dep["pip"], (
                "environment.yml must install the project itself with its dev and classroom extras"
            )
        else:
            conda.add(_name(dep))
    for dep in project["dependencies"]:
        name = _name(dep)
        assert CONDA_NAMES.get(name, name) in conda | pip, (
            f"{name} is in pyproject.toml but not in environment.yml"
        )
    assert "python" in conda and "pip" in conda
    assert "conda-forge" in env["channels"]


def test_torch_capped_at_known_release():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_dep = next(d for d in deps if _name(d) == "torch")
    assert "<=2.14.1" in torch_dep


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci/run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo:", "test:", "lab:"):
        assert target in makefile
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_shipped_weights_are_package_data():
    """A non-editable install must find the pretrained model and the feature network inside the package."""
    from ddpm_lib.checkpoints import PRETRAINED, WEIGHTS_DIR

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["ddpm_lib"]
    assert "weights/*.pt" in package_data
    assert PRETRAINED.parent == WEIGHTS_DIR == ROOT / "ddpm_lib" / "weights"
    assert PRETRAINED.is_file() and (WEIGHTS_DIR / "toy_cars_classifier.pt").is_file()
