"""Every exercise checker can fail: it passes on the teacher's notebook and fails on the student version.

For each notebook with nbgrader cells (new ones are picked up by themselves):

- the exercises follow the convention: a ``## Exercises`` heading, a plain setup cell, then 3 to 6 exercises, each a
  task in markdown, a solution cell (``### BEGIN SOLUTION`` / ``### END SOLUTION``) and a locked, graded test cell;
- the student version, made by ``tools/make_student.py`` with nbgrader's ``generate_assignment``, holds no line of
  any solution and no output, and shows the test cells unchanged;
- run on its own (the section's code cells, ``exec``-ed in order in a fresh namespace, ``DDPM_FAST=1``, matplotlib
  Agg), the teacher's section passes every test cell, and each test cell fails when only its own solution is
  missing; the student's section raises ``NotImplementedError`` in every solution cell and fails every test cell.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import tempfile
import time
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

pytestmark = pytest.mark.slow  # each test runs nbgrader or a notebook's exercise cells

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_student", ROOT / "tools" / "make_student.py")
make_student = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_student)

SOLUTION_METADATA = {
    "grade": False,
    "locked": False,
    "schema_version": 3,
    "solution": True,
    "task": False,
}
TEST_METADATA = {
    "grade": True,
    "locked": True,
    "points": 1,
    "schema_version": 3,
    "solution": False,
    "task": False,
}
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
SECTION_SECONDS = 60  # the convention asks for ~15 s on one core; this only catches a section that trains or samples


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _nbgrader(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _has_nbgrader_cells(path: Path) -> bool:
    return any(_nbgrader(c) for c in json.loads(path.read_text())["cells"])


GRADED = [p for p in make_student.all_notebooks(ROOT / "notebooks") if _has_nbgrader_cells(p)]


def exercise_cells(nb: dict) -> list[dict]:
    """The cells after the markdown cell with the ``## Exercises`` heading."""
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown" and re.search(
            r"^##\s+Exercises\s*$", _source(cell), re.MULTILINE
        ):
            return nb["cells"][i + 1 :]
    pytest.fail("no markdown cell with the heading '## Exercises'")


def solution_lines(source: str) -> list[str]:
    """The stripped, non-blank lines between BEGIN and END SOLUTION."""
    lines, inside = [], False
    for line in source.splitlines():
        if line.strip() == BEGIN:
            inside = True
        elif line.strip() == END:
            inside = False
        elif inside and line.strip():
            lines.append(line.strip())
    return lines


def _label(cell: dict, index: int) -> str:
    return _nbgrader(cell).get("grade_id") or (
        "setup cell" if index == 0 else f"code cell {index} of the section"
    )


def _exec(cell: dict, index: int, namespace: dict, name: str) -> None:
    exec(compile(_source(cell), f"<{name}: {_label(cell, index)}>", "exec"), namespace)


@pytest.fixture
def section_env(monkeypatch):
    """What a student's fast run has: DDPM_FAST=1, no progress bars, matplotlib without a display."""
    monkeypatch.setenv("DDPM_FAST", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    yield monkeypatch
    plt.close("all")


@pytest.fixture(scope="module")
def scratch_notebooks(tmp_path_factory) -> Path:
    """A notebooks/ folder beside copies of what the notebooks read: the teacher's exercises run there, not in the repository."""
    root = tmp_path_factory.mktemp("teacher")
    make_student.copy_support_files(root)
    (root / "notebooks").mkdir()
    return root / "notebooks"


@pytest.fixture(scope="module")
def student_versions(tmp_path_factory) -> dict[str, Path | Exception]:
    """Student versions of the graded notebooks, one nbgrader course for all; a notebook nbgrader refuses maps to the error."""
    pytest.importorskip(
        "nbgrader",
        reason="student versions need the classroom extra: pip install -e '.[classroom]'",
    )
    out = tmp_path_factory.mktemp("student")
    # the gradebook commits every cell it saves: in memory (/dev/shm) where there is one, twice as fast as on disk
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(
        prefix="course_", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    ) as course:
        built: dict[str, Path | Exception] = {}
        for path in GRADED:
            try:
                built[path.stem] = make_student.make_student([path], out, course=Path(course))[0]
            except Exception as error:  # nbgrader logged which cell broke which rule
                built[path.stem] = error
    return built


def _student(student_versions: dict, path: Path) -> Path:
    built = student_versions[path.stem]
    if isinstance(built, Exception):
        pytest.fail(f"nbgrader could not generate the student version of {path.name}: {built!r}")
    return built


@pytest.mark.parametrize("path", GRADED, ids=lambda p: p.stem)
def test_exercises_follow_the_convention(path):
    nb = json.loads(path.read_text())
    cells = exercise_cells(nb)
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and not _nbgrader(code[0]), (
        "the first code cell after '## Exercises' is a plain setup cell, without nbgrader metadata"
    )
    for cell in code:
        magics = [
            line for line in _source(cell).splitlines() if line.lstrip().startswith(("%", "!"))
        ]
        assert not magics, f"the exercises run as plain Python: no IPython magics ({magics})"
    solutions = [i for i, c in enumerate(cells) if _nbgrader(c).get("solution")]
    assert 3 <= len(solutions) <= 6, f"3 to 6 exercises per notebook, found {len(solutions)}"
    grade_ids = [_nbgrader(c)["grade_id"] for c in nb["cells"] if _nbgrader(c)]
    assert len(grade_ids) == len(set(grade_ids)), f"grade ids must be unique: {grade_ids}"
    for i in solutions:
        cell = cells[i]
        meta = _nbgrader(cell)
        grade_id = meta.get("grade_id", "?")
        assert cell["cell_type"] == "code", f"{grade_id}: a solution is a code cell"
        assert {k: v for k, v in meta.items() if k != "grade_id"} == SOLUTION_METADATA, (
            f"{grade_id}: solution metadata {meta}"
        )
        assert cells[i - 1]["cell_type"] == "markdown", (
            f"{grade_id}: a markdown cell states the task before the solution"
        )
        lines = [line.strip() for line in _source(cell).splitlines()]
        assert BEGIN in lines and END in lines and lines.index(BEGIN) < lines.index(END), (
            f"{grade_id}: no {BEGIN} ... {END} region"
        )
        assert solution_lines(_source(cell)), f"{grade_id}: the solution region is empty"
        following = next((c for c in cells[i + 1 :] if c["cell_type"] == "code"), None)
        assert following is not None and _nbgrader(following).get("grade"), (
            f"{grade_id}: the next code cell must be a graded test cell"
        )
        test_meta = _nbgrader(following)
        assert {k: v for k, v in test_meta.items() if k != "grade_id"} == TEST_METADATA, (
            f"{test_meta.get('grade_id')}: test metadata {test_meta}"
        )
        assert "assert" in _source(following), (
            f"{test_meta['grade_id']}: a test cell checks the answer with asserts"
        )


@pytest.mark.parametrize("path", GRADED, ids=lambda p: p.stem)
def test_student_version_has_no_solution_and_no_output(path, student_versions):
    teacher = json.loads(path.read_text())
    student = json.loads(_student(student_versions, path).read_text())
    for cell in student["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, (
                f"an output survived in {_source(cell)[:80]!r}"
            )
        assert BEGIN not in _source(cell) and END not in _source(cell), "a solution marker survived"
    # every solution line that is not also written elsewhere in the teacher's notebook must be gone
    elsewhere = {
        line.strip()
        for c in teacher["cells"]
        if not _nbgrader(c).get("solution")
        for line in _source(c).splitlines()
    }
    for c in teacher["cells"]:
        if _nbgrader(c).get("solution"):
            region = set(solution_lines(_source(c)))
            elsewhere |= {line.strip() for line in _source(c).splitlines()} - region
    secret = {
        line
        for c in teacher["cells"]
        if _nbgrader(c).get("solution")
        for line in solution_lines(_source(c))
    } - elsewhere
    student_lines = {line.strip() for c in student["cells"] for line in _source(c).splitlines()}
    assert not secret & student_lines, (
        f"solution lines in the student version: {sorted(secret & student_lines)}"
    )
    by_id = {_nbgrader(c)["grade_id"]: c for c in student["cells"] if _nbgrader(c)}
    for c in teacher["cells"]:
        meta = _nbgrader(c)
        if meta.get("grade"):
            assert _source(by_id[meta["grade_id"]]) == _source(c), (
                f"{meta['grade_id']}: the student sees the teacher's test cell"
            )
            assert by_id[meta["grade_id"]]["metadata"].get("editable") is False, (
                f"{meta['grade_id']}: test cells are locked"
            )
        elif meta.get("solution"):
            assert "raise NotImplementedError()" in _source(by_id[meta["grade_id"]]), (
                f"{meta['grade_id']}: not cleared by nbgrader"
            )


@pytest.mark.parametrize("path", GRADED, ids=lambda p: p.stem)
def test_teacher_exercises_pass_and_each_test_needs_its_solution(
    path, scratch_notebooks, section_env
):
    """The section runs on its own; a test cell run without its solution (the namespace just before it) fails."""
    code = [c for c in exercise_cells(json.loads(path.read_text())) if c["cell_type"] == "code"]
    section_env.chdir(scratch_notebooks)
    namespace: dict = {"__name__": "__main__"}
    before_solution: dict[str, dict] = {}
    start = time.perf_counter()
    for index, cell in enumerate(code):
        meta = _nbgrader(cell)
        if meta.get("solution"):
            before_solution[meta["grade_id"]] = dict(namespace)
        try:
            _exec(cell, index, namespace, path.stem)
        except Exception as error:
            pytest.fail(
                f"{path.stem}, {_label(cell, index)} fails on the teacher's version: {error!r}"
            )
    elapsed = time.perf_counter() - start
    assert elapsed < SECTION_SECONDS, (
        f"the exercises of {path.stem} took {elapsed:.0f} s in fast mode; keep them to ~15 s"
    )
    passing = []
    for index, cell in enumerate(code):
        if not _nbgrader(cell).get("solution"):
            continue
        test_index = next(j for j in range(index + 1, len(code)) if _nbgrader(code[j]).get("grade"))
        try:
            _exec(
                code[test_index],
                test_index,
                dict(before_solution[_nbgrader(cell)["grade_id"]]),
                path.stem,
            )
        except Exception:
            continue
        passing.append(_nbgrader(code[test_index])["grade_id"])
    assert not passing, (
        f"{passing} pass without their solution: a test must use the names only its solution defines"
    )


@pytest.mark.parametrize("path", GRADED, ids=lambda p: p.stem)
def test_student_exercises_fail_every_test(path, student_versions, section_env):
    student = _student(student_versions, path)
    code = [c for c in exercise_cells(json.loads(student.read_text())) if c["cell_type"] == "code"]
    section_env.chdir(student.parent)  # beside the copied assets, as a student runs it
    namespace: dict = {"__name__": "__main__"}
    passing, wrong_error = [], []
    for index, cell in enumerate(code):
        meta = _nbgrader(cell)
        try:
            _exec(cell, index, namespace, student.stem)
            error = None
        except Exception as caught:
            error = caught
        if meta.get("solution") and not isinstance(error, NotImplementedError):
            wrong_error.append(f"{meta['grade_id']}: {error!r}")
        elif meta.get("grade") and error is None:
            passing.append(meta["grade_id"])
        elif index == 0 and error is not None:
            pytest.fail(f"the setup cell of the student's {student.name} fails: {error!r}")
    assert not wrong_error, (
        f"solution cells must raise NotImplementedError in the student version: {wrong_error}"
    )
    assert not passing, f"test cells that pass with the solutions removed: {passing}"
