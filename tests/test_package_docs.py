"""Package and module docstrings: each topic package maps its papers to modules, and each module
links back to the section that teaches it once, in its module docstring, not per function."""

from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LABKIT = ROOT / "labkit"
LINK = re.compile(r"^\s*Section:|Taught in chapter")  # the current spelling, and the old one anywhere in a line
# Packages of the chapters' topics and the lab animals: every public module there has a back-link.
LINKED_PACKAGES = ("comm", "diffusion", "federated", "graphs", "inference", "infocomm", "intro", "lm", "moe",
                   "mpc", "quant", "security", "spatial", "llmtools", "sequence")


def _data(name: str) -> list[dict]:
    return yaml.safe_load((ROOT / "book" / "_data" / name).read_text())


def _section_titles() -> dict[str, list[str]]:
    """Chapter number -> the titles of its section notebooks (the first cell's heading)."""
    titles: dict[str, list[str]] = {}
    for nb in sorted((ROOT / "chapters").glob("*/*.ipynb")):
        first = "".join(json.loads(nb.read_text())["cells"][0]["source"]).splitlines()[0]
        titles.setdefault(nb.parent.name[:2], []).append(first.lstrip("# ").strip())
    return titles


def _modules() -> list[Path]:
    return sorted(p for p in LABKIT.rglob("*.py") if "__pycache__" not in p.parts)


def _docstrings(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """The module docstring and ``(name, docstring)`` of every function and class in ``path``."""
    tree = ast.parse(path.read_text())
    inner = [(node.name, ast.get_docstring(node) or "") for node in ast.walk(tree)
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return ast.get_docstring(tree) or "", inner


def _links(doc: str) -> list[str]:
    return [line.strip() for line in doc.splitlines() if LINK.search(line)]


def test_each_package_docstring_names_the_papers_of_its_chapters() -> None:
    topic = {c["number"]: c["topic"] for c in _data("chapters.yml")}
    missing = []
    taught = [p for p in _data("papers.yml") if p["section"]]
    assert taught, "papers.yml maps no paper to a section"
    for paper in taught:
        package = importlib.import_module(f"labkit.{topic[paper['chapter']]}")
        if not re.search(rf"(?<!\w){re.escape(paper['id'])}(?!\w)", package.__doc__ or "", re.IGNORECASE):
            missing.append(f"{package.__name__} does not name {paper['id']} ({paper['section']})")
    assert not missing, "\n".join(missing)


def test_back_links_are_per_module_not_per_function() -> None:
    per_function = [f"{path.relative_to(ROOT)}: {name}: {link}" for path in _modules()
                    for name, doc in _docstrings(path)[1] for link in _links(doc)]
    assert not per_function, "move these back-links to the module docstring:\n" + "\n".join(per_function)


def test_every_module_has_at_most_one_back_link_and_linked_packages_exactly_one() -> None:
    wrong = []
    for path in _modules():
        links = _links(_docstrings(path)[0])
        package = path.parent.name
        public = not path.name.startswith("_")
        expected = (1,) if package in LINKED_PACKAGES and public else (0, 1)
        if len(links) not in expected:
            wrong.append(f"{path.relative_to(ROOT)}: {len(links)} back-link lines {links}")
    assert not wrong, "\n".join(wrong)


def _check_link(link: str, titles: dict[str, list[str]]) -> list[str]:
    """Problems of one ``Section: chapter NN, "Title" ...`` line: each quoted title must begin the
    title of a section notebook of the chapter named before it."""
    problems, chapter = [], None
    for match in re.finditer(r'chapter (\d\d)\b|"([^"]+)"', link):
        if match.group(1):
            chapter = match.group(1)
            if chapter not in titles:
                problems.append(f"no chapter {chapter} in chapters/: {link}")
        elif chapter is None:
            problems.append(f"a title before any chapter number: {link}")
        elif not any(t.startswith(match.group(2)) for t in titles.get(chapter, [])):
            problems.append(f'"{match.group(2)}" is no section of chapter {chapter}: {link}')
    if chapter is None:
        problems.append(f"names no chapter: {link}")
    return problems


def test_back_links_name_real_sections() -> None:
    titles = _section_titles()
    problems = [f"{path.relative_to(ROOT)}: {p}" for path in _modules() for link in _links(_docstrings(path)[0])
                if link.startswith("Section:") for p in _check_link(link, titles)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("link, ok", [
    ('Section: chapter 09, "Where sampling time goes".', True),
    ('Section: chapter 01, "UltraGCN" and "GraphHash".', True),  # title prefixes
    ('Section: chapter 01, "Message passing is a sparse matrix product"; chapter 09, "Where sampling".', True),
    ('Section: chapter 09, "Sampling time".', False),  # not the start of a section title
    ('Section: chapter 01, "Where sampling time goes".', False),  # a section of another chapter
    ('Section: chapter 42, "Anything".', False),
    ('Section: "Where sampling time goes".', False),
])
def test_the_link_check_itself(link: str, ok: bool) -> None:
    titles = {"01": ["Message passing is a sparse matrix product", "UltraGCN: learning the limit",
                     "GraphHash: sharing rows"], "09": ["Where sampling time goes"]}
    assert (not _check_link(link, titles)) == ok
