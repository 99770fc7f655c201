"""Sphinx configuration of the course website: `make site` (tools/build_site.py) lays out the sources.

Sphinx + myst-nb + sphinx-book-theme, built offline: notebooks are shown with their stored outputs
(never executed), math is typeset by the MathJax 2.7 of the jupyter-server-mathjax package (copied
into ``_static/mathjax``), and no page loads anything from another host.
"""

import shutil
from pathlib import Path

try:
    import jupyter_server_mathjax
except ImportError as error:
    raise ImportError(
        "the site needs its extra: pip install -e '.[site]' (or `make site`)"
    ) from error

MATHJAX = Path(jupyter_server_mathjax.__file__).parent / "static"

project = "ddpm-from-scratch"
html_title = "DDPM from scratch"
author = "the ddpm-from-scratch authors"
extensions = ["myst_nb"]
root_doc = "index"
exclude_patterns = ["**/.ipynb_checkpoints"]
html_theme = "sphinx_book_theme"
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_js_files = ["course.js"]
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": True,  # the notebook (.ipynb) and the page's source
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
    "navbar_persistent": [],  # the search box sits in the sidebar: no header bar above the page
}
html_context = {"default_mode": "auto"}  # light or dark as the reader's system says

# ---------------------------------------------------------------- notebooks: stored outputs only
nb_execution_mode = "off"
nb_merge_streams = True
# The explorers answer an ipywidgets view (JupyterLab) and a self-contained text/html copy (here):
# the view needs a kernel or the widget manager's scripts from a CDN, so the page shows the HTML.
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
nb_ipywidgets_js = {}  # no require.js / html-manager from a CDN
nb_code_prompt_show = "Show code"
nb_code_prompt_hide = "Hide code"

# ---------------------------------------------------------------- Markdown and math
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_dmath_double_inline = True  # $$...$$ inside a paragraph, as the notebooks write it
myst_heading_anchors = 3
myst_update_mathjax = False  # its settings are for MathJax 3+; MathJax 2 is configured here
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
mathjax2_config = {
    # only what Sphinx marked as math: \( \) inline and \[ \] display; code is skipped (pre, code)
    "tex2jax": {
        "inlineMath": [["\\(", "\\)"]],
        "displayMath": [["\\[", "\\]"]],
        "processEscapes": False,
    },
    "HTML-CSS": {
        "availableFonts": [],
        "webFont": "STIX-Web",
        "imageFont": None,
        # MathJax's placeholder font is url('about:blank'), a request that fails on file:// pages
        "styles": {"@font-face": {"font-family": "MathJax_Blank", "src": "local('MathJax_Blank')"}},
    },
    "messageStyle": "none",
    "menuSettings": {"zoom": "None"},
}


def copy_mathjax(app, exception) -> None:
    """MathJax beside the pages (12 MB, copied once per output folder)."""
    target = Path(app.outdir) / "_static" / "mathjax"
    if exception is None and app.builder.format == "html" and not (target / "MathJax.js").exists():
        shutil.copytree(MATHJAX, target, dirs_exist_ok=True)


def setup(app):
    # MathJax on every page: the navigation shows titles with math (notebook 03) on search pages too
    app.set_html_assets_policy("always")
    app.connect("build-finished", copy_mathjax)
