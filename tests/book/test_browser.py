"""The built book in a real browser: plotly figures draw, ipywidgets render, no JavaScript errors.

Debian's chromium (``/usr/bin/chromium``), driven by Playwright, opens each chapter page of the
built HTML book, served from 127.0.0.1. The test never touches the network: requests for the CDN
files the pages load (require.js, the ipywidgets HTML manager, plotly.js, MathJax) are answered
from the local copies that ``tools/browser_assets.py`` prepared (its ``manifest.json``); every
other external request is aborted and recorded. The SRI ``integrity`` attributes are stripped from
the HTML documents on the way, since the local copies need not be byte-identical to the CDN files
(require.js comes unminified from npm, for instance).

Fixtures it needs (defined in ``tests/conftest.py``):

* ``built_book_html``: ``Path`` of the built book's html folder (the one holding index.html);
* ``browser_assets``: ``Path`` of the folder ``tools/browser_assets.py`` filled.

Which pages: the page of every notebook listed in ``_toc.yml``. Each section has at least one
control or figure (the chapter contract), so a page that shows neither fails too.

A full-page screenshot of each page goes to ``<repo>/_build/screenshots/<page>.png``.
"""
from __future__ import annotations

import functools
import http.server
import importlib.util
import mimetypes
import os
import re
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests import _book

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
SCREENSHOTS = REPO / "_build" / "screenshots"
RENDER_TIMEOUT_MS = 20_000
# A blocked request of one of these kinds means a CDN asset the page needs has no local copy.
ESSENTIAL_RESOURCE_TYPES = {"script", "stylesheet", "font", "xhr", "fetch"}

PLOTLY_MARKERS = ("plotly-graph-div", "Plotly.newPlot", "js-plotly-plot")
WIDGET_MARKERS = ("application/vnd.jupyter.widget-view+json",)

_INTEGRITY_ATTR = re.compile(r"""\s+integrity\s*=\s*(?:"[^"]*"|'[^']*')""", re.I)
_EXTRA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".css": "text/css",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".eot": "application/vnd.ms-fontobject",
    ".svg": "image/svg+xml",
}


def _load_browser_assets_module():
    """tools/browser_assets.py, loaded by path (tools/ is not a package); it knows the manifest's routes."""
    path = REPO / "tools" / "browser_assets.py"
    spec = importlib.util.spec_from_file_location("labbook_browser_assets", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- which pages


def _page_kinds(html: str) -> tuple[bool, bool]:
    return any(m in html for m in PLOTLY_MARKERS), any(m in html for m in WIDGET_MARKERS)


def _candidate_pages() -> list[str]:
    return [f"{_book.docname(nb)}.html" for nb in _book.toc_notebooks()]


PAGES = _candidate_pages()


def _screenshot_name(page_rel: str) -> str:
    rel = Path(page_rel)
    if rel.parts and rel.parts[0] == "chapters":
        rel = Path(*rel.parts[1:])
    return "__".join(rel.with_suffix("").parts) + ".png"


# --------------------------------------------------------------------------- fixtures


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        pass


@pytest.fixture
def book_server(built_book_html):
    """Serves the built html folder on 127.0.0.1 (a free port, in a thread); yields the base URL."""
    root = Path(built_book_html)
    assert (root / "index.html").is_file(), f"no index.html in {root}"
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="book-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def asset_routes(browser_assets):
    root = Path(browser_assets)
    assert (root / "manifest.json").is_file(), f"no manifest.json in {root}: run tools/browser_assets.py {root}"
    module = _load_browser_assets_module()
    routes = module.load_routes(root)
    assert routes, f"{root}/manifest.json has no routes"
    return routes, module.lookup


class PageVisit:
    """What happened while a page loaded: page errors, console errors, served and blocked requests."""

    def __init__(self):
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.served: list[str] = []
        self.blocked: list[tuple[str, str]] = []  # (resource type, url)
        self.failed: list[tuple[str, str]] = []  # (url, failure) of local or served requests
        self.http_errors: list[tuple[str, str, int]] = []  # (resource type, url, status) from the book server

    def report(self) -> str:
        lines = []
        for title, items in (
            ("page errors", self.page_errors),
            ("console errors", self.console_errors),
            ("blocked external requests", [f"{t}: {u}" for t, u in self.blocked]),
            ("failed requests", [f"{u}: {f}" for u, f in self.failed]),
            ("HTTP errors from the book server", [f"{s} {t}: {u}" for t, u, s in self.http_errors]),
            ("served from local assets", self.served),
        ):
            if items:
                lines.append(f"{title}:")
                lines += [f"  {x}" for x in items]
        return "\n".join(lines)


@pytest.fixture
def book_page(request, chromium, book_server, built_book_html, asset_routes):
    """(page, visit, page_rel, page_html): the chapter page ``request.param`` loaded offline in chromium."""
    page_rel = request.param
    html_file = Path(built_book_html) / page_rel
    assert html_file.is_file(), f"{page_rel} is not in the built book"
    page_html = html_file.read_text(encoding="utf-8", errors="replace")
    assert any(_page_kinds(page_html)), f"{page_rel} shows no plotly figure and no widget"

    routes, lookup = asset_routes
    origin = urlsplit(book_server)
    visit = PageVisit()

    def handle(route, req):
        url = req.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about"):
            route.continue_()
            return
        if parts.hostname == origin.hostname and parts.port == origin.port:
            if req.resource_type == "document":
                # Strip SRI hashes: the local asset copies need not be byte-identical to the CDN files.
                response = route.fetch()
                ctype = response.headers.get("content-type", "")
                if "html" in ctype or url.split("?", 1)[0].endswith((".html", "/")):
                    route.fulfill(response=response, body=_INTEGRITY_ATTR.sub("", response.text()))
                else:
                    route.fulfill(response=response)
            else:
                route.continue_()
            return
        local = lookup(routes, url)
        if local is not None:
            visit.served.append(url)
            ctype = _EXTRA_TYPES.get(local.suffix) or mimetypes.guess_type(local.name)[0] or "application/octet-stream"
            route.fulfill(
                status=200,
                path=str(local),
                headers={
                    "content-type": ctype,
                    "access-control-allow-origin": "*",
                    "cache-control": "no-store",
                },
            )
            return
        visit.blocked.append((req.resource_type, url))
        route.abort("blockedbyclient")

    context = chromium.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    page = context.new_page()
    page.on("pageerror", lambda exc: visit.page_errors.append(exc.stack or f"{exc.name}: {exc.message}"))
    page.on("console", lambda msg: visit.console_errors.append(msg.text) if msg.type == "error" else None)
    page.on(
        "requestfailed",
        lambda req: visit.failed.append((req.url, req.failure or ""))
        if (req.resource_type, req.url) not in visit.blocked
        else None,
    )
    page.on(
        "response",
        lambda resp: visit.http_errors.append((resp.request.resource_type, resp.url, resp.status))
        if resp.status >= 400 and urlsplit(resp.url).port == origin.port
        else None,
    )
    page.route("**/*", handle)
    try:
        page.goto(book_server + page_rel, wait_until="load", timeout=60_000)
        yield page, visit, page_rel, page_html
    finally:
        context.close()


# --------------------------------------------------------------------------- tests

_PLOTLY_STATE_JS = """() => {
  const declared = document.querySelectorAll('.plotly-graph-div').length;
  const plots = Array.from(document.querySelectorAll('.js-plotly-plot'));
  return {
    declared: declared,
    plots: plots.length,
    traces: plots.map(el => Array.isArray(el.data) ? el.data.length : -1),
    drawn: plots.map(el => el.querySelectorAll('.main-svg').length > 0),
    titles: plots.map(el => (el.layout && el.layout.title && (el.layout.title.text || el.layout.title)) || null),
  };
}"""

_ALL_PLOTS_DRAWN_JS = """() => {
  const declared = document.querySelectorAll('.plotly-graph-div').length;
  const plots = Array.from(document.querySelectorAll('.js-plotly-plot'));
  return plots.length >= Math.max(1, declared) &&
         plots.every(el => Array.isArray(el.data) && el.querySelector('.main-svg'));
}"""

_WIDGET_STATE_JS = """() => {
  const views = Array.from(document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]'));
  const out = views.map(s => {
    const area = s.previousElementSibling;
    const rendered = !!(area && area.classList.contains('widget-subarea') && area.querySelector('.jupyter-widgets'));
    let model = null;
    try { model = JSON.parse(s.textContent).model_id; } catch (e) {}
    return {
      model: model,
      rendered: rendered,
      error: !!(area && area.querySelector('.jupyter-widgets-error-widget')),
      classes: rendered ? area.querySelector('.jupyter-widgets').className : null,
    };
  });
  const controls = document.querySelectorAll(
    '.widget-subarea .jupyter-widgets :is(input, select, button, textarea, [role="slider"], .widget-readout, ' +
    '.widget-progress, progress)');  // progress bars (tqdm) count: a rendered, visible widget
  return {views: out, controls: controls.length,
          sliders: document.querySelectorAll('.widget-subarea .widget-slider').length};
}"""

_ALL_WIDGETS_RENDERED_JS = """() => {
  const views = Array.from(document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]'));
  return views.length > 0 && views.every(s => {
    const area = s.previousElementSibling;
    return area && area.classList.contains('widget-subarea') && area.querySelector('.jupyter-widgets');
  });
}"""


@pytest.mark.parametrize("book_page", PAGES, indirect=True)
def test_page_renders_offline(book_page):
    page, visit, page_rel, page_html = book_page
    has_plotly, has_widgets = _page_kinds(page_html)
    problems: list[str] = []

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    # Wait for rendering (explicit timeouts); what is missing is reported from the page state below.
    waits = []
    if has_plotly:
        waits += [(".js-plotly-plot", _ALL_PLOTS_DRAWN_JS)]
    if has_widgets:
        waits += [(".widget-subarea .jupyter-widgets", _ALL_WIDGETS_RENDERED_JS)]
    for selector, done in waits:
        try:
            page.wait_for_selector(selector, state="attached", timeout=RENDER_TIMEOUT_MS)
            page.wait_for_function(done, timeout=RENDER_TIMEOUT_MS)
        except PlaywrightTimeout:
            pass
    try:  # let MathJax, fonts and late scripts settle before the screenshot and the error check
        page.wait_for_load_state("networkidle", timeout=RENDER_TIMEOUT_MS)
    except PlaywrightTimeout:
        pass

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / _screenshot_name(page_rel)
    page.screenshot(path=str(shot), full_page=True)

    if has_plotly:
        state = page.evaluate(_PLOTLY_STATE_JS)
        if not any(n >= 1 for n in state["traces"]):
            problems.append(f"plotly: no figure with at least one trace after {RENDER_TIMEOUT_MS / 1000:.0f} s ({state})")
        elif state["plots"] < state["declared"] or not all(n >= 0 for n in state["traces"]) or not all(state["drawn"]):
            problems.append(f"plotly: some figures were not drawn ({state})")
    if has_widgets:
        state = page.evaluate(_WIDGET_STATE_JS)
        bad = [v for v in state["views"] if not v["rendered"] or v["error"]]
        if bad:
            problems.append(
                f"widgets: {len(bad)} of {len(state['views'])} views not rendered (or rendered as errors) "
                f"after {RENDER_TIMEOUT_MS / 1000:.0f} s: {bad}"
            )
        if state["controls"] < 1:
            problems.append(f"widgets: no rendered control (input/slider/button/progress bar) found ({state})")
    if visit.page_errors:
        problems.append(f"{len(visit.page_errors)} JavaScript page error(s)")
    missing = [(t, u) for t, u in visit.blocked if t in ESSENTIAL_RESOURCE_TYPES]
    if missing:
        problems.append(
            "external scripts/styles/fonts with no local copy were blocked "
            "(add them to tools/browser_assets.py): " + ", ".join(u for _, u in missing)
        )
    broken = [(t, u, st) for t, u, st in visit.http_errors if t in ("document", "script", "stylesheet")]
    if broken:
        problems.append("the built book lacks files its pages load: " + ", ".join(f"{st} {u}" for _, u, st in broken))

    print(f"{page_rel}: screenshot {shot}\n{visit.report()}")  # shown with -s / -rP
    assert not problems, f"{page_rel} (screenshot: {shot}):\n- " + "\n- ".join(problems) + "\n" + visit.report()
