"""Library source on the page: ``show(fn)`` renders the code a section teaches from the installed
file itself, so the page and the library can never disagree.

A notebook ends a cell with ``show(obj)`` and gets a :class:`Listing`: the source of a function,
class, method, module or Triton kernel (``@triton.jit`` objects are unwrapped through ``.fn``),
with its file path, its line numbers in that file and a link to those lines in the repository.
It displays as syntax-highlighted HTML in Jupyter, JupyterLab, Colab and the built book, and as
numbered plain text where only text is kept (papermill's logs, a terminal).

Two ways to show less than the whole object:

- a named region, marked in the library's source by two comment lines, which is what chapters
  use because it moves with the code when lines are added above it::

      # show: start inner-loop
      ...
      # show: end inner-loop

  ``show(fn, region="inner-loop")`` shows the lines between the markers; marker lines of any
  region are left out of every listing (their line numbers are skipped);
- ``lines=(first, last)``, counted from the object's first line (1 = its ``def``, ``class`` or
  first decorator), for a quick look.

The link is ``repository.url`` of the book's ``_config.yml`` + ``/blob/<branch>/<path>#L<a>-L<b>``
when labkit runs from the book's checkout (an editable install); installed from a wheel, the
listing names the path inside the installed package and carries no link.
"""

from __future__ import annotations

import html
import inspect
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["Listing", "show"]

_MARKER = re.compile(r"^\s*#\s*show:\s*(start|end)\s+([A-Za-z0-9_.-]+)\s*$")
_REGION_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Listing:
    """Lines of one source file, ready to display.

    Attributes:
        title: what is shown (the object's qualified name, plus the region if any).
        path: the file, relative to the repository root (or to the installed package's parent).
        numbered: ``(line number in the file, text)`` of each shown line, dedented together.
        url: link to the shown lines in the repository, or ``None`` when it is not known.
    """

    title: str
    path: str
    numbered: tuple[tuple[int, str], ...]
    url: str | None = None

    @property
    def first(self) -> int:
        """Line number of the first shown line."""
        return self.numbered[0][0]

    @property
    def last(self) -> int:
        """Line number of the last shown line."""
        return self.numbered[-1][0]

    @property
    def code(self) -> str:
        """The shown source, without line numbers."""
        return "\n".join(text for _, text in self.numbered) + "\n"

    @property
    def where(self) -> str:
        """``path, lines a-b``."""
        return f"{self.path}, lines {self.first}-{self.last}"

    def text(self) -> str:
        """Plain text: a header line, then each line with its number."""
        width = len(str(self.last))
        body = "\n".join(f"{n:>{width}}  {t}".rstrip() for n, t in self.numbered)
        link = f"\n{self.url}" if self.url else ""
        return f"{self.title} ({self.where}){link}\n{body}"

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython's plain-text form
        printer.text(self.text())

    def _repr_html_(self) -> str:
        width = len(str(self.last))
        rows = []
        for (n, _), line in zip(self.numbered, _highlight(self.code)):
            number = f'<span style="color:#8c959f;user-select:none">{n:>{width}}  </span>'
            rows.append(number + line)
        where = f"<code>{html.escape(self.path)}</code>, lines {self.first}&ndash;{self.last}"
        if self.url:
            where = f'<a href="{html.escape(self.url)}" target="_blank" rel="noopener">{where}</a>'
        return (
            '<div class="labkit-listing" style="margin:0.4em 0">'
            '<div style="font-size:0.85em;color:#57606a;margin-bottom:2px">'
            f"<code>{html.escape(self.title)}</code> &middot; {where}</div>"
            '<pre style="margin:0;padding:0.5em 0.75em;background:#f6f8fa;color:#1f2328;'
            "border:1px solid #d0d7de;border-radius:4px;overflow-x:auto;line-height:1.35;"
            f'font-size:0.85em;white-space:pre">{chr(10).join(rows)}</pre></div>'
        )


def _highlight(code: str) -> list[str]:
    """One HTML string per line of ``code``, highlighted with inline styles (no stylesheet)."""
    lines = code.split("\n")[:-1]
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:  # pragma: no cover - pygments comes with IPython
        return [html.escape(line) for line in lines]
    # nowrap: no <div><pre> around it; HtmlFormatter closes every span at the end of its line,
    # so splitting its output on newlines gives one self-contained fragment per source line
    out = highlight(code, PythonLexer(stripnl=False, ensurenl=False), HtmlFormatter(nowrap=True, noclasses=True))
    parts = out.split("\n")
    if len(parts) < len(lines):
        return [html.escape(line) for line in lines]
    return parts[: len(lines)]


def _unwrap(obj: Any) -> Any:
    """The Python object whose source is shown: Triton's wrappers (``JITFunction``, the
    interpreter's function, ``Autotuner``, ``Heuristics``) hold it in ``.fn``; ``functools.wraps``
    decorators in ``__wrapped__``. Triton is never imported here."""
    for _ in range(8):
        module = type(obj).__module__ or ""
        if module.split(".")[0] == "triton" and hasattr(obj, "fn"):
            obj = obj.fn
        elif callable(obj) and hasattr(obj, "__wrapped__"):
            obj = inspect.unwrap(obj)
        else:
            break
    return obj


def _repo_root(file: Path) -> Path | None:
    """The book checkout that holds ``file`` (the folder with ``_config.yml`` and ``_toc.yml``)."""
    for folder in file.parents:
        if (folder / "_config.yml").is_file() and (folder / "_toc.yml").is_file():
            return folder
    return None


def repository(root: Path) -> tuple[str | None, str]:
    """``(url, branch)`` of ``repository:`` in ``root/_config.yml`` (url ``None`` when absent)."""
    config = root / "_config.yml"
    if not config.is_file():
        return None, "main"
    block = re.search(r"^repository:[^\n]*\n((?:[ \t]+[^\n]*\n?|[ \t]*\n)*)", config.read_text(), re.M)
    if not block:
        return None, "main"

    def value(key: str) -> str | None:
        m = re.search(rf"^[ \t]+{key}:[ \t]*[\"']?([^\"'\s#]+)", block.group(1), re.M)
        return m.group(1) if m else None

    return value("url"), value("branch") or "main"


def _relative(file: Path, obj: Any) -> tuple[str, str | None]:
    """The path to print and the repository link's base (``url/blob/branch/path``) if known."""
    root = _repo_root(file)
    if root is not None:
        rel = file.relative_to(root).as_posix()
        url, branch = repository(root)
        return rel, (f"{url.rstrip('/')}/blob/{branch}/{rel}" if url else None)
    module = inspect.getmodule(obj)
    top = sys.modules.get((module.__name__ if module else "").split(".")[0])
    top_file = getattr(top, "__file__", None)
    if top_file:
        base = Path(top_file).resolve().parent.parent
        try:
            return file.relative_to(base).as_posix(), None
        except ValueError:
            pass
    return file.name, None


def _title(obj: Any) -> str:
    if isinstance(obj, ModuleType):
        return obj.__name__
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__


def _region(numbered: list[tuple[int, str]], name: str, path: str) -> list[tuple[int, str]]:
    starts = [i for i, (_, t) in enumerate(numbered) if (m := _MARKER.match(t)) and m.groups() == ("start", name)]
    ends = [i for i, (_, t) in enumerate(numbered) if (m := _MARKER.match(t)) and m.groups() == ("end", name)]
    if not starts:
        raise ValueError(f"show: region {name!r} not found: no '# show: start {name}' line in {path}")
    if len(starts) > 1 or len(ends) > 1:
        raise ValueError(f"show: region {name!r} is marked more than once in {path}")
    if not ends or ends[0] < starts[0]:
        raise ValueError(f"show: region {name!r} is not closed: add '# show: end {name}' after its start in {path}")
    return numbered[starts[0] + 1 : ends[0]]


def show(obj: Any, lines: tuple[int, int] | None = None, *, region: str | None = None,
         title: str | None = None) -> Listing:
    """The source of ``obj`` (or part of it) as a :class:`Listing` that notebooks display.

    Args:
        obj: a function, class, method, module, or a Triton kernel (``@triton.jit``), defined in
            a Python source file.
        lines: ``(first, last)``, 1-based and inclusive, counted from the object's first line.
        region: the name of a region marked ``# show: start NAME`` / ``# show: end NAME`` inside
            the object's source (see the module docstring). Not together with ``lines``.
        title: the header's name (default: the object's qualified name and the region).

    Returns:
        The listing; its HTML form is highlighted and links to the lines in the repository.

    Raises:
        TypeError: ``obj`` has no Python source, or an argument has the wrong type.
        ValueError: ``lines`` out of range or reversed, ``region`` missing, repeated or unclosed,
            or both ``lines`` and ``region`` given.
    """
    target = _unwrap(obj)
    try:
        file = inspect.getsourcefile(target)
        source, start = inspect.getsourcelines(target)
    except (TypeError, OSError) as exc:
        raise TypeError(
            "show: obj must be a function, class, method, module or Triton kernel defined in a Python "
            f"source file, got {type(obj).__name__} ({exc})") from None
    if file is None:  # pragma: no cover - getsourcelines found lines, so there is a file
        raise TypeError(f"show: no source file for {type(obj).__name__}")
    start = max(start, 1)  # a module's lines start at 0
    numbered = [(start + i, text.rstrip("\n").rstrip()) for i, text in enumerate(source)]
    path, base = _relative(Path(file).resolve(), target)

    if lines is not None and region is not None:
        raise ValueError("show: give lines or region, not both")
    if lines is not None:
        if (not isinstance(lines, tuple) or len(lines) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in lines)):
            raise TypeError(f"show: lines must be a pair of ints (first, last), got {lines!r}")
        first, last = lines
        if not 1 <= first <= last <= len(numbered):
            raise ValueError(f"show: lines must satisfy 1 <= first <= last <= {len(numbered)} "
                             f"(the object's length), got {lines!r}")
        numbered = numbered[first - 1 : last]
    if region is not None:
        if not isinstance(region, str):
            raise TypeError(f"show: region must be a string, got {type(region).__name__}")
        if not _REGION_NAME.match(region):
            raise ValueError(f"show: region must be a name of letters, digits, '_', '-' or '.', got {region!r}")
        numbered = _region(numbered, region, path)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"show: title must be a string, got {type(title).__name__}")

    numbered = [(n, t) for n, t in numbered if not _MARKER.match(t)]
    while numbered and not numbered[0][1].strip():
        numbered.pop(0)
    while numbered and not numbered[-1][1].strip():
        numbered.pop()
    if not numbered:
        raise ValueError(f"show: nothing to show in {path} (the selection holds only blank or marker lines)")
    dedented = textwrap.dedent("\n".join(t for _, t in numbered)).split("\n")
    numbered = [(n, t) for (n, _), t in zip(numbered, dedented)]

    name = title or (_title(target) + (f" [{region}]" if region else ""))
    url = f"{base}#L{numbered[0][0]}-L{numbered[-1][0]}" if base else None
    return Listing(title=name, path=path, numbered=tuple(numbered), url=url)
