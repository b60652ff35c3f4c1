"""labkit.show: library source on the page, read from the installed file."""

from __future__ import annotations

import html
import importlib
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import labkit
from labkit import show
from labkit.intro import axpy
from labkit.listing import Listing, repository

ROOT = Path(__file__).resolve().parents[1]

# A module with known line numbers (line 1 is the comment).
MODULE = textwrap.dedent('''\
    # line 1
    import math


    def area(r: float) -> float:
        """Area of a circle."""
        # show: start body
        squared = r * r
        # show: start inner
        return math.pi * squared
        # show: end inner
        # show: end body


    class Box:
        def volume(self, side: float) -> float:
            return side ** 3 if side < 10 else 0
''')


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``toypkg.geometry`` from MODULE, imported from tmp_path (outside any book checkout)."""
    pkg = tmp_path / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "geometry.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("toypkg", "toypkg.geometry"):
        sys.modules.pop(name, None)
    yield importlib.import_module("toypkg.geometry")
    for name in ("toypkg", "toypkg.geometry"):
        sys.modules.pop(name, None)


def test_a_function_with_its_file_lines(toy) -> None:
    listing = show(toy.area)
    # def at line 5; the four marker lines (7, 9, 11, 12) are left out
    assert [n for n, _ in listing.numbered] == [5, 6, 8, 10]
    assert listing.code == ('def area(r: float) -> float:\n    """Area of a circle."""\n'
                            "    squared = r * r\n    return math.pi * squared\n")
    assert (listing.title, listing.first, listing.last) == ("area", 5, 10)
    # installed outside a book checkout (as from a wheel): package-relative path, no link
    assert listing.path == "toypkg/geometry.py" and listing.url is None
    assert listing.where == "toypkg/geometry.py, lines 5-10"


def test_a_region_is_dedented_and_drops_inner_markers(toy) -> None:
    body = show(toy.area, region="body")
    assert body.numbered == ((8, "squared = r * r"), (10, "return math.pi * squared"))
    assert body.title == "area [body]"
    inner = show(toy, region="inner", title="the return")  # a region of the whole module
    assert inner.numbered == ((10, "return math.pi * squared"),) and inner.title == "the return"


def test_lines_count_from_the_objects_first_line(toy) -> None:
    method = show(toy.Box.volume, lines=(2, 2))
    assert method.numbered == ((17, "return side ** 3 if side < 10 else 0"),)
    assert show(toy.Box).first == 15 and show(toy.Box).title == "Box"
    assert show(toy, lines=(1, 2)).numbered == ((1, "# line 1"), (2, "import math"))


def test_plain_text_form_numbers_every_line(toy) -> None:
    text = repr(show(toy.area))
    assert text.splitlines()[0] == "area (toypkg/geometry.py, lines 5-10)"
    assert text.splitlines()[1:] == [' 5  def area(r: float) -> float:', ' 6      """Area of a circle."""',
                                     " 8      squared = r * r", "10      return math.pi * squared"]
    assert str(show(toy.area)) == text


def test_html_form_is_highlighted_and_holds_the_same_text(toy) -> None:
    listing = show(toy.Box)
    page = listing._repr_html_()
    assert "<pre" in page and "style=" in page and "toypkg/geometry.py" in page
    assert "&lt;" in page and "side < 10" not in page  # source text is escaped
    assert page.count('<span style="color') > len(listing.numbered)  # tokens are coloured
    pre = page[page.index("<pre"):]
    shown = html.unescape(re.sub(r"<[^>]+>", "", pre[pre.index(">") + 1:])).split("\n")
    width = len(str(listing.last))
    assert shown == [f"{n:>{width}}  {t}" for n, t in listing.numbered]


def test_in_the_checkout_it_links_to_the_lines_in_the_repository() -> None:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    listing = show(axpy.scaled_add_reference)
    _, first = inspect.getsourcelines(axpy.scaled_add_reference)
    assert listing.path == "labkit/intro/axpy.py" and listing.first == first
    assert listing.url == (f"{config['url'].rstrip('/')}/blob/{config.get('branch', 'main')}"
                           f"/labkit/intro/axpy.py#L{first}-L{listing.last}")
    assert f'href="{listing.url}"' in listing._repr_html_()
    assert labkit.show is show


def test_repository_reads_config_yml(tmp_path: Path) -> None:
    (tmp_path / "_config.yml").write_text(
        'title: x\nrepository:\n  # the fork\n  url: "https://example.org/me/book"  # here\n'
        "  path_to_book: ''\nlaunch_buttons:\n  branch: nope\n")
    assert repository(tmp_path) == ("https://example.org/me/book", "main")
    (tmp_path / "_config.yml").write_text("repository:\n  branch: dev\n  url: https://x.org/a/b\n")
    assert repository(tmp_path) == ("https://x.org/a/b", "dev")
    (tmp_path / "_config.yml").write_text("title: no repository\n")
    assert repository(tmp_path) == (None, "main")
    assert repository(tmp_path / "missing") == (None, "main")


@pytest.fixture
def kernels_module():
    """labkit.intro._kernels imported here and dropped afterwards (later tests import it interpreted)."""
    name = "labkit.intro._kernels"
    saved = sys.modules.pop(name, None)
    try:
        yield importlib.import_module(name)
    finally:
        sys.modules.pop(name, None)
        if saved is not None:
            sys.modules[name] = saved


def test_a_triton_kernel_shows_its_python_source(kernels_module) -> None:
    listing = show(kernels_module._scaled_add_kernel)
    _, first = inspect.getsourcelines(kernels_module._scaled_add_kernel.fn)
    assert listing.first == first and listing.code.startswith("@triton.jit\ndef _scaled_add_kernel(")
    for word in ("tl.program_id", "tl.arange", "mask = offsets < n_elements", "tl.store"):
        assert word in listing.code
    launch = show(kernels_module.scaled_add_triton, region="launch")
    assert launch.code.startswith("grid = (triton.cdiv(n, block_size),)")
    assert "_scaled_add_kernel[grid](" in launch.code and "show:" not in launch.code


def test_showing_does_not_import_triton() -> None:
    code = ("import sys, labkit\nfrom labkit.intro import axpy\nlabkit.show(axpy.scaled_add_reference)._repr_html_()\n"
            "assert 'triton' not in sys.modules, 'triton was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("obj, kwargs, err, msg", [
    (42, {}, TypeError, "obj must be a function"),
    (len, {}, TypeError, "obj must be a function"),
    ("area", {"lines": (0, 2)}, ValueError, "1 <= first <= last <= 8"),
    ("area", {"lines": (3, 2)}, ValueError, "1 <= first"),
    ("area", {"lines": (1, 9)}, ValueError, "<= 8"),
    ("area", {"lines": [1, 2]}, TypeError, "pair of ints"),
    ("area", {"lines": (1.0, 2)}, TypeError, "pair of ints"),
    ("area", {"lines": (1, 2), "region": "body"}, ValueError, "not both"),
    ("area", {"region": 3}, TypeError, "region must be a string"),
    ("area", {"region": "a b"}, ValueError, "region must be a name"),
    ("area", {"region": "loop"}, ValueError, "region 'loop' not found"),
    ("area", {"lines": (3, 3)}, ValueError, "nothing to show"),
    ("area", {"title": 1}, TypeError, "title must be a string"),
])
def test_bad_arguments(toy, obj, kwargs: dict, err: type, msg: str) -> None:
    target = getattr(toy, obj) if isinstance(obj, str) else obj
    with pytest.raises(err, match=re.escape(msg)):
        show(target, **kwargs)


@pytest.mark.parametrize("source, msg", [
    ("def f():\n    # show: start r\n    return 1\n", "is not closed"),
    ("def f():\n    # show: end r\n    # show: start r\n    return 1\n", "is not closed"),
    ("def f():\n    # show: start r\n    # show: end r\n    # show: start r\n    return 1\n    # show: end r\n",
     "marked more than once"),
])
def test_badly_marked_regions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, msg: str) -> None:
    (tmp_path / "marked_mod.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("marked_mod", None)
    module = importlib.import_module("marked_mod")
    try:
        with pytest.raises(ValueError, match=msg):
            show(module.f, region="r")
    finally:
        sys.modules.pop("marked_mod", None)


def test_listing_is_a_frozen_value(toy) -> None:
    listing = show(toy.area)
    assert isinstance(listing, Listing)
    with pytest.raises(AttributeError):
        listing.path = "elsewhere"  # type: ignore[misc]
