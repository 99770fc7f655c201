"""The course as a static website: every notebook with its stored outputs, README, TEACHING and NOTATION.

Sphinx with myst-nb and sphinx-book-theme (the engine of Jupyter Book 1), configured in ``site/conf.py``.
Nothing is executed and nothing is fetched: math is typeset by the MathJax 2.7 that the
``jupyter-server-mathjax`` package ships, copied into the site. Steps:

1. lay out a source tree in ``build/site-src/``: README.md as ``index.md`` with the table of contents
   (notebooks in order, then TEACHING and NOTATION), the notebooks and ``assets/``;
   only files whose content changed are rewritten, so a second build re-reads only those;
2. in the notebook copies: every code cell gets the ``hide-input`` tag (collapsible on the page,
   shown open by ``site/_static/course.js``), and a tqdm progress bar saved as an ipywidgets view
   gets a ``text/html`` copy of its last state from the widget state stored in the notebook;
3. ``sphinx-build -b html`` into ``build/site/`` (start page ``build/site/index.html``).

    python tools/build_site.py                                 # -> build/site/
    python tools/build_site.py --notebooks build/check --out build/site-check
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
PAGES = ("TEACHING.md", "NOTATION.md")  # after the notebooks in the navigation
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless ``path`` holds it already (Sphinx re-reads files by modification time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def index_page(readme: str, notebooks: list[str]) -> str:
    """README.md with the hidden tables of contents that give the site its navigation, in order."""
    chapters = "\n".join(f"notebooks/{Path(name).stem}" for name in notebooks)
    pages = "\n".join(Path(name).stem for name in PAGES)
    return (
        f"{readme.rstrip()}\n\n"
        f"```{{toctree}}\n:hidden:\n:caption: The notebooks\n\n{chapters}\n```\n\n"
        f"```{{toctree}}\n:hidden:\n:caption: For teachers\n\n{pages}\n```\n"
    )


def progress_html(model_id: str, state: dict) -> str | None:
    """tqdm's notebook bar (an HBox of HTML, FloatProgress, HTML) at its last state, or None for another widget."""
    box = state.get(model_id, {})
    children = [c.removeprefix("IPY_MODEL_") for c in box.get("state", {}).get("children", [])]
    names = [state.get(c, {}).get("model_name") for c in children]
    if box.get("model_name") != "HBoxModel" or names != [
        "HTMLModel",
        "FloatProgressModel",
        "HTMLModel",
    ]:
        return None
    left, bar, right = (state[c]["state"] for c in children)
    return (
        f'<div class="ddpm-progress">{left.get("value", "")} '
        f'<progress value="{float(bar.get("value", 0)):g}" max="{float(bar.get("max", 1)):g}"></progress>'
        f" {right.get('value', '')}</div>"
    )


def site_notebook(notebook: dict) -> dict:
    """The notebook as the site shows it: code cells collapsible, saved progress bars as HTML."""
    state = notebook.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "hide-input" not in tags:
            tags.append("hide-input")
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data and "text/html" not in data:
                bar = progress_html(data[WIDGET_VIEW].get("model_id", ""), state)
                if bar is not None:
                    data["text/html"] = bar
    return notebook


def lay_out(src: Path, notebooks: list[Path]) -> None:
    """The Sphinx source tree in ``src``: pages, notebook copies and assets."""
    write_if_changed(
        src / "index.md",
        index_page((ROOT / "README.md").read_text(encoding="utf-8"), [p.name for p in notebooks]),
    )
    for name in PAGES:
        write_if_changed(src / name, (ROOT / name).read_text(encoding="utf-8"))
    wanted = {p.name for p in notebooks}
    for old in (src / "notebooks").glob("*.ipynb"):
        if old.name not in wanted:  # a notebook renamed or dropped since the last build
            old.unlink()
    for path in notebooks:
        notebook = site_notebook(json.loads(path.read_text(encoding="utf-8")))
        write_if_changed(src / "notebooks" / path.name, json.dumps(notebook, indent=1) + "\n")
    shutil.copytree(ROOT / "assets", src / "assets", dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--notebooks",
        type=Path,
        default=ROOT / "notebooks",
        help="folder of the NN_*.ipynb to publish (default: notebooks/)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site", help="the site")
    parser.add_argument(
        "--src", type=Path, help="where the source tree is laid out (default: OUT-src)"
    )
    args = parser.parse_args(argv)
    notebooks = sorted(args.notebooks.glob(NOTEBOOK_GLOB))
    if not notebooks:
        sys.exit(
            f"no {NOTEBOOK_GLOB} in {args.notebooks}: give --notebooks the folder that holds them"
        )
    src = args.src or args.out.with_name(args.out.name + "-src")
    start = time.perf_counter()
    lay_out(src, notebooks)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-c", str(ROOT / "site")]
    done = subprocess.run([*command, str(src), str(args.out)], check=False)
    if done.returncode:
        return done.returncode
    seconds = time.perf_counter() - start
    print(f"site: {args.out / 'index.html'} ({len(notebooks)} notebooks, {seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
