"""A chapter live in JupyterLab: the server `tools/lab.py lab` starts, its kernel, a widget that recomputes.

The test starts ``jupyter lab`` from .venv the way ``python3 tools/lab.py lab`` does (the same
command line, environment and kernel spec, taken from tools/lab.py) on 127.0.0.1, a free port and
a token, rooted in a temporary folder that holds a copy of chapter 00's notebook with its
parameters set to the ``ci`` tier; settings, workspaces, runtime files and IPython's history live
there too, so nothing in the checkout or the home folder changes. Debian's chromium, driven by
Playwright, opens the notebook, runs every cell from the Run menu, then moves the ``BLOCK_SIZE``
slider of the section's interactive control with the keyboard and checks that the kernel
recomputed the report beside it (the launch grid of the new block size, computed here with
labkit, and the time the notebook measured for it). JupyterLab serves all its assets itself:
any request that leaves the server is aborted and fails the test.

A screenshot goes to ``<repo>/_build/screenshots/jupyterlab__00_how_this_book_runs.png``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests import _book
from tests.book.test_browser import CHROMIUM, SCREENSHOTS

pytestmark = pytest.mark.book

NOTEBOOK = _book.ROOT / "chapters" / "00_how_this_book_runs" / "01_how_this_book_runs.ipynb"
SERVER_START_S = 60
SERVER_STOP_S = 15
LOAD_TIMEOUT_MS = 90_000  # JupyterLab's first load and its kernel's start, on a busy machine
RUN_TIMEOUT_MS = 90_000  # every cell of the ci tier
WIDGET_TIMEOUT_MS = 15_000  # the kernel's answer to one slider move
# Settings of the temporary JupyterLab: every cell in the DOM (the control is near the end), no news.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}


def _lab_tool():
    """tools/lab.py, loaded by path (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("labbook_lab_tool", _book.ROOT / "tools" / "lab.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ci_copy(folder: Path) -> Path:
    """Chapter 00's notebook in ``folder`` with ``tier = "ci"`` in its parameters cell."""
    nb = json.loads(NOTEBOOK.read_text())
    params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "chapter 00 has one cell tagged parameters"
    source, n = re.subn(r'^tier = "\w+"', 'tier = "ci"', "".join(params[0]["source"]), flags=re.M)
    assert n == 1, f"no `tier = ...` line in the parameters cell: {source!r}"
    params[0]["source"] = source
    out = folder / NOTEBOOK.name
    out.write_text(json.dumps(nb, indent=1))
    return out


@dataclass
class LabServer:
    url: str  # ends with /
    token: str
    root: Path
    log: Path

    def api(self, path: str, method: str = "GET") -> object:
        req = urllib.request.Request(f"{self.url}api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def wait_for_kernel(self, page, timeout_s: float = LOAD_TIMEOUT_MS / 1000) -> None:
        """Until a kernel is idle with a client connected: the page can run cells (before, Run All
        finds no kernel and only moves the selection to the last cell). It waits with the page's
        own timer: Playwright's sync API serves the page's routed requests only inside its calls."""
        deadline = time.monotonic() + timeout_s
        while not any(k["execution_state"] == "idle" and k["connections"] > 0 for k in self.api("kernels")):
            if time.monotonic() > deadline:
                pytest.fail(f"no kernel connected within {timeout_s:.0f} s: {self.api('kernels')}\n"
                            f"{self.log.read_text()[-4000:]}")
            page.wait_for_timeout(250)


def _stop(proc: subprocess.Popen, server: LabServer) -> None:
    """Shut the server down (its kernels with it), then kill what is left of its process group."""
    if proc.poll() is None:
        try:
            server.api("shutdown", method="POST")
            proc.wait(timeout=SERVER_STOP_S)
        except (OSError, urllib.error.URLError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=SERVER_STOP_S)


@pytest.fixture
def lab_server(tmp_path: Path) -> Iterator[LabServer]:
    """`tools/lab.py lab`'s server on 127.0.0.1, rooted in tmp_path/root (its own process group)."""
    tool = _lab_tool()
    tool.ensure_kernelspec()  # what `lab` does first (rewrites the spec only when it differs)
    root = tmp_path / "root"
    root.mkdir()
    env = tool.lab_env()
    for name, folder in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"),
                         ("JUPYTERLAB_SETTINGS_DIR", "settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                         ("IPYTHONDIR", "ipython"), ("LABKIT_RECORDS_DIR", "records")):
        env[name] = str(tmp_path / folder)
    for rel, settings in LAB_SETTINGS.items():
        path = tmp_path / "settings" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    port, token = _free_port(), os.urandom(16).hex()
    cmd = tool.jupyter_lab_command([
        "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ])
    log = tmp_path / "jupyter-lab.log"
    server = LabServer(f"http://127.0.0.1:{port}/", token, root, log)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                server.api("status")
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer within {SERVER_START_S} s:\n{log.read_text()[-4000:]}")
                time.sleep(0.5)
        yield server
    finally:
        _stop(proc, server)


# --------------------------------------------------------------------------- the page

_CELLS_DONE_JS = """() => {
  const prompts = Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'));
  const errors = document.querySelectorAll('.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]');
  const failed = Array.from(errors).some(e => /Traceback/.test(e.textContent));
  return failed || (prompts.length > 0 && prompts.every(p => /^\\[\\d+\\]:?$/.test(p.textContent.trim())));
}"""

_REPORT_JS = """() => {
  const html = Array.from(document.querySelectorAll('.jp-Notebook .widget-html-content'))
    .map(e => e.textContent).filter(t => t.includes('BLOCK_SIZE='));
  const readout = document.querySelector('.jp-Notebook .widget-hslider .widget-readout');
  return {report: html.length === 1 ? html[0] : null, count: html.length,
          readout: readout ? (readout.value ?? readout.textContent).trim() : null};
}"""


def _report(page) -> dict:
    return page.evaluate(_REPORT_JS)


def _expected_programs(report: str, block: int) -> int:
    """Programs of the launch grid the report describes, computed here with labkit."""
    from labkit.intro import launch_grid

    m = re.search(r"([\d,]+) elements", report)
    assert m, f"no element count in the report {report!r}"
    return launch_grid(int(m.group(1).replace(",", "")), block_size=block).programs


MEASURED = re.compile(r"measured [\d.]+ (?:s|ms|µs|ns) per call")


def _drive(page, server: LabServer, notebook: Path, t0: float) -> tuple[dict, dict, dict[str, float]]:
    """Open the notebook, run every cell, move the slider: the report before and after, and times."""
    times = {}
    page.goto(f"{server.url}lab/tree/{notebook.name}?token={server.token}", wait_until="load")
    server.wait_for_kernel(page)
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
    times["opened"] = time.monotonic() - t0

    page.click('.lm-MenuBar-itemLabel:text-is("Run")')
    page.click('.lm-Menu-item[data-command="runmenu:run-all"]')
    page.wait_for_function(_CELLS_DONE_JS, timeout=RUN_TIMEOUT_MS)
    stderr = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    errors = [t for t in stderr.all_inner_texts() if "Traceback" in t]
    assert not errors, "a cell failed:\n" + "\n".join(errors)
    times["cells ran"] = time.monotonic() - t0

    handle = page.locator(".jp-Notebook .widget-hslider .noUi-handle")
    handle.wait_for(state="visible", timeout=WIDGET_TIMEOUT_MS)
    assert handle.count() == 1, "chapter 00 shows one slider"
    page.wait_for_function("() => { const r = (" + _REPORT_JS + ")(); return r.report && r.readout; }",
                           timeout=WIDGET_TIMEOUT_MS)
    before = _report(page)
    # a figure drawn by JupyterLab's own plotly renderer (no CDN): lab_env drops PLOTLY_RENDERER
    page.wait_for_selector(".jp-Notebook .js-plotly-plot .main-svg", state="attached", timeout=WIDGET_TIMEOUT_MS)

    handle.scroll_into_view_if_needed()
    handle.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("(old) => { const r = (" + _REPORT_JS + ")(); return r.report && r.report !== old; }",
                           arg=before["report"], timeout=WIDGET_TIMEOUT_MS)
    after = _report(page)
    times["slider answered"] = time.monotonic() - t0
    return before, after, times


def test_widget_recomputes_live_in_jupyterlab(lab_server: LabServer, chromium) -> None:
    t0 = time.monotonic()
    server = lab_server
    spec = server.api("kernelspecs")["kernelspecs"]["python3"]["spec"]
    assert spec["argv"][0] == str(_book.ROOT / ".venv" / "bin" / "python"), \
        f"the python3 kernel must run .venv's python: {spec['argv']}"
    notebook = _ci_copy(server.root)
    assert CHROMIUM.exists(), f"{CHROMIUM} is not installed (python3 tools/lab.py test installs it)"

    origin = urlsplit(server.url)
    left_server: list[str] = []
    page_errors: list[str] = []

    def only_the_server(route, request) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "blob", "about") or (parts.hostname, parts.port) == (origin.hostname, origin.port):
            route.continue_()
        else:
            left_server.append(f"{request.resource_type}: {request.url}")
            route.abort("blockedbyclient")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "jupyterlab__00_how_this_book_runs.png"
    context = chromium.new_context(viewport={"width": 1400, "height": 1000}, service_workers="block")
    try:
        page = context.new_page()
        page.set_default_timeout(LOAD_TIMEOUT_MS)
        page.on("pageerror", lambda exc: page_errors.append(f"{exc.name}: {exc.message}"))
        page.route("**/*", only_the_server)
        try:
            before, after, times = _drive(page, server, notebook, t0)
        finally:  # the state reached, also when a step failed
            page.screenshot(path=str(shot))
    finally:
        context.close()

    moved = int(after["readout"])
    block = int(before["readout"])
    print("JupyterLab: " + ", ".join(f"{k} at {v:.1f} s" for k, v in times.items())
          + f"; {before['report']!r} -> {after['report']!r}; screenshot {shot}")
    assert f"BLOCK_SIZE={block}" in before["report"], before
    assert f"{_expected_programs(before['report'], block)} programs" in before["report"], before
    assert MEASURED.search(before["report"]), before
    assert moved > block, f"ArrowRight moved the slider from {block} to {moved}"
    assert f"BLOCK_SIZE={moved}" in after["report"], after
    assert f"{_expected_programs(after['report'], moved)} programs" in after["report"], after
    assert MEASURED.search(after["report"]), after
    assert not page_errors, f"JavaScript errors in JupyterLab: {page_errors}"
    assert not left_server, f"requests that left the JupyterLab server (blocked): {left_server}"
