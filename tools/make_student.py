"""Student versions of the notebooks, made by nbgrader: solutions removed, outputs cleared, tests locked.

Each notebook ``notebooks/NN_name.ipynb`` becomes the nbgrader assignment ``NN_name`` of a course directory
(a temporary one unless ``--course`` names one to keep): ``source/NN_name/NN_name.ipynb`` goes through
``nbgrader generate_assignment`` (the ``GenerateAssignment`` converter: ClearSolutions, ClearOutput, LockCells,
ComputeChecksums, SaveCells into the course's gradebook) to ``release/NN_name/NN_name.ipynb``, which is copied to
``OUT/notebooks/``. The files the notebooks read through ``..`` (``assets/``, the measurements in ``benchmarks/``)
are copied beside them, so that a student version runs from ``OUT/notebooks`` as the originals run from ``notebooks/``.

    python tools/make_student.py                      # every notebook -> student/
    python tools/make_student.py 03_objective --out /tmp/student --course ~/ddpm-course
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
# What the notebooks read relative to their folder: ``../assets`` and the measurements in ``../benchmarks/*.json``.
SUPPORT_FILES = ("assets", "benchmarks/*.json")
COURSE_ID = "ddpm-from-scratch"
# Written into a course directory that is kept (--course), unless one is there: the `nbgrader` commands read it.
NBGRADER_CONFIG = f"""c = get_config()
c.CourseDirectory.course_id = "{COURSE_ID}"
# `nbgrader autograde` executes every cell of a submission; run it with DDPM_FAST=1 (the notebooks' fast mode)
c.Execute.timeout = 600  # seconds per cell
"""


def all_notebooks(folder: Path = ROOT / "notebooks") -> list[Path]:
    """The series' notebooks, in order."""
    return sorted(folder.glob(NOTEBOOK_GLOB))


def resolve_notebooks(names: Sequence[str], folder: Path = ROOT / "notebooks") -> list[Path]:
    """Notebook paths from names such as ``03``, ``03_objective`` or ``notebooks/03_objective.ipynb``; all of them if none."""
    available = all_notebooks(folder)
    if not names:
        return available
    chosen = []
    for name in names:
        stem = Path(name).name.removesuffix(".ipynb").removesuffix(".py")
        matches = [p for p in available if p.stem == stem or p.stem.startswith(stem + "_")]
        if len(matches) != 1:
            raise SystemExit(
                f"error: {name!r} matches {len(matches)} notebooks; choose from {', '.join(p.stem for p in available)}"
            )
        chosen.append(matches[0])
    return chosen


@contextlib.contextmanager
def _alembic_on_path() -> Iterator[None]:
    """nbgrader creates a gradebook by running the ``alembic`` command: find it beside this interpreter."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), old])
    try:
        yield
    finally:
        os.environ["PATH"] = old


def _logger() -> logging.Logger:
    log = logging.getLogger("make_student")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("nbgrader %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)
        log.propagate = False
    return log


def generate_assignments(notebooks: Sequence[Path], course: Path) -> list[Path]:
    """Run ``nbgrader generate_assignment`` on each notebook in the course directory ``course``: released paths.

    Each notebook is its own assignment, named after it; the gradebook is ``course/gradebook.db``, so that
    ``nbgrader autograde`` can grade the submissions later in the same course.
    """
    from nbconvert.preprocessors import ClearMetadataPreprocessor

    # the classroom extra: pip install -e ".[classroom]"
    from nbgrader.converters import (
        GenerateAssignment,
    )
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config

    course = course.resolve()
    course.mkdir(parents=True, exist_ok=True)
    if not (course / "nbgrader_config.py").exists():
        (course / "nbgrader_config.py").write_text(NBGRADER_CONFIG)
    released = []
    with _alembic_on_path():
        for notebook in notebooks:
            assignment = notebook.stem
            source = course / "source" / assignment
            source.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(notebook, source / notebook.name)
            config = Config()
            config.CourseDirectory.root = str(course)
            config.CourseDirectory.course_id = COURSE_ID
            config.CourseDirectory.assignment_id = assignment
            config.CourseDirectory.notebook_id = notebook.stem
            # first drop what the teacher's run left in the metadata (widget state, execution times, the jupytext
            # pairing), keeping the cell metadata nbgrader reads; then nbgrader's own preprocessors
            config.ClearMetadataPreprocessor.enabled = True
            config.ClearMetadataPreprocessor.preserve_nb_metadata_mask = {
                ("kernelspec",),
                ("language_info",),
            }
            config.ClearMetadataPreprocessor.preserve_cell_metadata_mask = {
                ("nbgrader",),
                ("tags",),
            }
            converter = GenerateAssignment(coursedir=CourseDirectory(config=config), config=config)
            converter.log = _logger()
            converter.preprocessors = [ClearMetadataPreprocessor, *converter.preprocessors]
            converter.force = True
            converter.create_assignment = True
            converter.start()  # raises NbGraderException (after logging why) when a notebook breaks nbgrader's rules
            released.append(course / "release" / assignment / notebook.name)
    return released


def make_student(notebooks: Sequence[Path], out: Path, course: Path | None = None) -> list[Path]:
    """Write the student version of each notebook to ``out/notebooks/`` with the files they read: the paths written.

    ``course``: the nbgrader course directory to generate in (and keep); a temporary one if None.
    """
    out = Path(out)
    with contextlib.ExitStack() as stack:
        if course is None:
            course = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="nbgrader_course_"))
            )
        released = generate_assignments(notebooks, Path(course))
        (out / "notebooks").mkdir(parents=True, exist_ok=True)
        written = []
        for path in released:
            target = out / "notebooks" / path.name
            shutil.copyfile(path, target)
            written.append(target)
    return written + copy_support_files(out)


def copy_support_files(out: Path) -> list[Path]:
    """Copy what the notebooks read through ``..`` into ``out``, so that notebooks in ``out/notebooks`` find it: the paths."""
    copied = []
    for source in (path for pattern in SUPPORT_FILES for path in sorted(ROOT.glob(pattern))):
        target = Path(out) / source.relative_to(ROOT)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        copied.append(target)
    return copied


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write student versions of the notebooks with nbgrader (solutions removed, outputs cleared, tests locked).",
        epilog="Hand out OUT/ as it is: the notebooks run from OUT/notebooks with ddpm_lib installed.",
    )
    parser.add_argument(
        "notebooks",
        nargs="*",
        help="notebook names, e.g. 03 or 03_objective (default: every notebooks/NN_*.ipynb)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "student",
        help="output folder (default: student/ in the repository)",
    )
    parser.add_argument(
        "--course",
        type=Path,
        default=None,
        help="nbgrader course directory to generate in and keep, with source/, release/ and gradebook.db, "
        "for `nbgrader autograde` later (default: a temporary one)",
    )
    args = parser.parse_args(argv)
    notebooks = resolve_notebooks(args.notebooks)
    if not notebooks:
        parser.error(f"no notebook matches {ROOT / 'notebooks' / NOTEBOOK_GLOB}")
    try:
        written = make_student(notebooks, args.out, args.course)
    except ImportError as error:
        print(
            f'error: {error}; install nbgrader with `pip install -e ".[classroom]"`',
            file=sys.stderr,
        )
        return 1
    except Exception as error:  # nbgrader has logged the cell and the rule it broke
        print(f"error: nbgrader could not generate the student versions: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {os.path.relpath(path)}{'/' if path.is_dir() else ''}")
    if args.course is not None:
        print(
            f"nbgrader course kept in {os.path.relpath(args.course)} (nbgrader_config.py, source/, release/, gradebook.db)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
