"""The course website in a real browser: every page of ``build/site`` in headless Chromium (Playwright).

Run by ``make site-test`` (which builds the site first when it is missing); skipped elsewhere, so that
``make test`` stays fast: it needs ``DDPM_SITE_TEST=1``, a built site (``DDPM_SITE``, default
``build/site``), the ``playwright`` package and a Chromium (``CHROMIUM``, else ``chromium`` on the
PATH, else Playwright's own). Each page is opened from disk, as a reader who opens
``build/site/index.html`` does, and must show: no console error or uncaught exception, no failed
request, no request to another host, math typeset (no ``$$``, ``\\(`` or ``$...\\cmd...$`` left in
the prose), every picture loaded, every link inside the site pointing at a file (and an anchor) that
exists. On each page with an explorer, dragging its slider must change the picture.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("DDPM_SITE", ROOT / "build" / "site")).resolve()

if os.environ.get("DDPM_SITE_TEST") != "1":
    pytest.skip("the website's browser test runs under `make site-test`", allow_module_level=True)
if not (SITE / "index.html").is_file():
    pytest.skip(f"no site at {SITE}: `make site` builds it", allow_module_level=True)


def pages() -> list[Path]:
    """Every page of the site (search and index pages included), relative to the site."""
    skip = ("_static", "_sources", "_images", "_downloads")
    return sorted(
        p.relative_to(SITE)
        for p in SITE.rglob("*.html")
        if p.relative_to(SITE).parts[0] not in skip
    )


def explorer_pages() -> list[Path]:
    """Pages whose notebook shows an explorer: as a page copy, or saved without one (plain text)."""
    return [p for p in pages() if re.search(r"ddpm-explorer|VBox\(children=", read(SITE / p))]


@functools.cache
def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    return frozenset(re.findall(r'\b(?:id|name)="([^"]+)"', read(path)))


def chromium_path() -> str | None:
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[site]'")
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        except sync_api.Error as error:
            pytest.skip(f"no Chromium to run (apt-get install chromium): {str(error)[:200]}")
        yield browser
        browser.close()


class Visit:
    """A page opened in the browser, with what it asked for and what went wrong while loading."""

    def __init__(self, browser, page: Path):
        self.page = browser.new_page()
        self.requests: list[str] = []
        self.problems: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on(
            "requestfailed", lambda r: self.problems.append(f"failed {r.url}: {r.failure}")
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"exception: {e}"))
        self.page.on(
            "console",
            lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None,
        )
        self.page.goto((SITE / page).as_uri(), wait_until="load")
        self.page.evaluate(  # every picture decoded or failed
            """() => Promise.all([...document.images].map(i => i.complete ? 0 :
                new Promise(r => { i.onload = i.onerror = r; })))"""
        )
        if self.page.evaluate("document.querySelector('script[src*=\"MathJax.js\"]') !== null"):
            self.page.wait_for_function("window.MathJax && MathJax.isReady", timeout=30_000)
            self.page.evaluate("() => new Promise(r => MathJax.Hub.Queue(r))")  # typeset done
        self.page.wait_for_load_state("networkidle")  # and the fonts it asked for

    def prose(self) -> str:
        """The page's visible text without code, outputs printed as text, and typeset math."""
        return self.page.evaluate(
            """() => { const body = document.body.cloneNode(true);
                body.querySelectorAll('pre, code, script, style, .MathJax, .MathJax_Display, '
                    + '.MathJax_Preview, .ddpm-explorer').forEach(e => e.remove());
                return body.innerText; }"""
        )


def check_explorer(page, explorer) -> None:
    """Drag the explorer's slider by the mouse to the other half: its picture and label change; so
    does the picture when another entry of its select (if any) is chosen."""
    slider, picture, label = (explorer.locator(s) for s in ("input[type=range]", "img", "output"))
    before = (picture.get_attribute("src"), label.inner_text())
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    value, top = int(slider.input_value()), int(slider.get_attribute("max"))
    start = box["x"] + 8 + (box["width"] - 16) * value / max(1, top)  # the thumb
    end = box["x"] + box["width"] * (0.75 if value <= top / 2 else 0.25)
    y = box["y"] + box["height"] / 2
    page.mouse.move(start, y)
    page.mouse.down()
    page.mouse.move(end, y, steps=8)
    page.mouse.up()
    after = (picture.get_attribute("src"), label.inner_text())
    assert int(slider.input_value()) != value, "the drag did not move the slider"
    assert after[0] != before[0] and after[1] != before[1]
    select = explorer.locator("select")
    if select.count():  # the guidance explorer: another body type, another picture
        select.select_option(index=(select.evaluate("s => s.selectedIndex") + 1) % 2)
        assert picture.get_attribute("src") != after[0]


@pytest.mark.parametrize("page", pages(), ids=str)
def test_page_loads_offline_with_math_pictures_and_links(browser, page):
    visit = Visit(browser, page)
    try:
        elsewhere = [u for u in visit.requests if urlsplit(u).scheme not in ("file", "data")]
        assert elsewhere == [], "requests to another host"
        prose = visit.prose()
        raw = re.findall(r"\$\$|\\\(|\\\[|\\begin\{|\$[^$\n]*\\[A-Za-z]+[^$\n]*\$", prose)
        assert raw == [], "math left untypeset"
        broken = visit.page.evaluate(
            "[...document.images].filter(i => !(i.naturalWidth > 0)).map(i => i.src.slice(0, 80))"
        )
        assert broken == [], "pictures that did not load"
        hrefs = visit.page.evaluate("[...document.querySelectorAll('a[href]')].map(a => a.href)")
        assert visit.problems == []
    finally:
        visit.page.close()
    dead = []
    for href in set(hrefs):
        url = urlsplit(href)
        if url.scheme != "file":
            continue  # links out of the site (papers, datasets) are not followed offline
        target = Path(unquote(url.path))
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            dead.append(href)
        elif (
            url.fragment
            and target.suffix == ".html"
            and unquote(url.fragment) not in anchors(target)
        ):
            dead.append(href)
    assert sorted(dead) == [], "links inside the site that lead nowhere"


@pytest.mark.parametrize("page", explorer_pages(), ids=str)
def test_dragging_an_explorer_slider_changes_the_picture(browser, page):
    if "ddpm-explorer" not in read(SITE / page):
        pytest.skip(
            f"{page}: its notebook's stored output has no page copy of the explorer yet"
            " (re-execute the notebook so that the output carries text/html)"
        )
    visit = Visit(browser, page)
    try:
        ranges = visit.page.locator(".ddpm-explorer input[type=range]")
        if ranges.count() == 0:
            pytest.skip(f"{page}: its explorer redraws on demand and needs a kernel (no slider)")
        for n in range(ranges.count()):
            explorer = visit.page.locator(".ddpm-explorer:has(input[type=range])").nth(n)
            check_explorer(visit.page, explorer)
        assert visit.problems == []
    finally:
        visit.page.close()


def test_guidance_page_copy_moves_by_scale_and_body_type(browser):
    """The same script on a two-control explorer (select + range), whatever the notebooks hold."""
    import torch

    from ddpm_lib import widgets

    samples = torch.randint(0, 256, (2, 3, 1, 3, 8, 8), dtype=torch.uint8)
    explorer = widgets.guidance_explorer(samples, ("sedan", "van"), (0.0, 1.0, 4.0))
    page = browser.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.set_content(f"<!DOCTYPE html><html><body>{explorer._repr_html_()}</body></html>")
        check_explorer(page, page.locator(".ddpm-explorer"))
        assert problems == []
    finally:
        page.close()
