"""Session-wide fixtures: executed notebooks, the built book, Triton's interpreter."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests import _book

# Whatever executes notebooks for the book needs these (not the notebooks: Colab keeps its own).
os.environ.setdefault("PLOTLY_RENDERER", "notebook_connected")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("LABKIT_RECORDS_DIR", str(_book.BUILD / "records"))


def _import_triton_for_the_interpreter() -> None:
    """On a machine without CUDA, import Triton once with TRITON_INTERPRET=1, then unset it.

    triton.language jits its own helpers (tl.cdiv, tl.sum, ...) when it is first imported, and
    the interpreter can only call them if that import happened under TRITON_INTERPRET=1. Torch's
    optimizers import Triton on their first step, so without this the kernel tests would fail
    whenever a test that trains a model ran first (e.g. one test file run alone).
    """
    import torch

    if torch.cuda.is_available() or "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        importlib.import_module("triton.language")
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


_import_triton_for_the_interpreter()


def unmarked_kernel_tests(items: list[pytest.Item]) -> list[str]:
    """Node ids of the tests that use the ``triton_kernels`` fixture but lack the ``gpu`` marker."""
    return [item.nodeid for item in items
            if "triton_kernels" in getattr(item, "fixturenames", ()) and item.get_closest_marker("gpu") is None]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse kernel tests without the ``gpu`` marker (``tools/gpu_run.py`` selects them with
    ``-m gpu``); run the notebooks before the book build and the browser, which reuse their outputs."""
    unmarked = unmarked_kernel_tests(items)
    if unmarked:
        raise pytest.UsageError("tests using the triton_kernels fixture must carry @pytest.mark.gpu: "
                                + ", ".join(unmarked))

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("book"):
            return 2
        if item.get_closest_marker("notebook"):
            return 1
        return 0

    items.sort(key=rank)  # stable: keeps file order within each group


class NotebookRuns:
    """Executes each notebook at most once per session and remembers the result."""

    def __init__(self) -> None:
        self.done: dict[Path, _book.Execution] = {}

    def __call__(self, notebook: Path) -> _book.Execution:
        if notebook not in self.done:
            self.done[notebook] = _book.execute_ci(notebook)
        return self.done[notebook]


@pytest.fixture(scope="session")
def notebook_runs() -> NotebookRuns:
    return NotebookRuns()


@pytest.fixture(scope="session")
def built_book(notebook_runs: NotebookRuns) -> Path:
    """The book built with -W from the notebooks executed at the ci tier (no second execution)."""
    from tests.book.build import build_from_executed

    executed = {nb: notebook_runs(nb).output for nb in _book.toc_notebooks()}
    return build_from_executed(executed)


@pytest.fixture(scope="session")
def built_book_html(request: pytest.FixtureRequest) -> Path:
    """The html folder of the book: $LABBOOK_HTML when set (the book command's own build,
    checked by the browser test), else the -W build of the ci-executed notebooks."""
    if os.environ.get("LABBOOK_HTML"):
        return Path(os.environ["LABBOOK_HTML"])
    return request.getfixturevalue("built_book") / "html"


@pytest.fixture(scope="session")
def browser_assets() -> Path:
    path = Path(os.environ.get("LABBOOK_ASSETS") or _book.ROOT / ".venv" / "labbook-assets")
    if not (path / "manifest.json").exists():
        pytest.fail(f"browser assets missing in {path}: run `python3 tools/lab.py test` "
                    "(it runs tools/browser_assets.py) or set LABBOOK_ASSETS")
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a test module whose models are tiny: a second thread only adds
    synchronisation, and stalls on a machine whose cores are busy. The setting is restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def device() -> str:
    """Where kernel parity tests run: natively on a GPU when there is one, else on CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def triton_kernels(monkeypatch: pytest.MonkeyPatch, device: str) -> Iterator[Callable[[str], ModuleType]]:
    """Import a Triton kernel module afresh: compiled on a GPU, else under TRITON_INTERPRET=1.

    The interpreter flag is read when kernels are defined, so the module is re-imported here and
    dropped again afterwards (later tests must not see interpreted kernels).
    """
    if device == "cpu":
        # before triton is first imported: triton.language's own helpers (tl.sum, ...) are jitted
        # at import time and must be interpreted functions too
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    import triton  # noqa: F401  (pinned in requirements.txt: its absence is an error, not a skip)

    loaded: list[str] = []

    def load(name: str) -> ModuleType:
        sys.modules.pop(name, None)
        loaded.append(name)
        return importlib.import_module(name)

    yield load
    for name in loaded:
        sys.modules.pop(name, None)
