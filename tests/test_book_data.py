"""Consistency checks for the book's data files (book/_data/*.yml).

Runs offline and reads only files inside the repository.
"""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "book" / "_data"
ROMAN = ["I", "II", "III", "IV", "V", "VI", "VII"]


def _load(name):
    with open(DATA / name, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def chapters():
    return _load("chapters.yml")


@pytest.fixture(scope="module")
def papers():
    return _load("papers.yml")


def test_chapters_shape(chapters):
    assert isinstance(chapters, list)
    assert len(chapters) == 18
    numbers = [c["number"] for c in chapters]
    assert all(isinstance(n, str) for n in numbers), "numbers must be quoted strings"
    assert numbers == [f"{i:02d}" for i in range(1, 19)]
    slugs = [c["slug"] for c in chapters]
    assert len(set(slugs)) == 18
    for c in chapters:
        assert set(c) >= {"number", "slug", "title", "part", "part_title", "topic"}
        assert c["slug"].replace("_", "").isalnum() and c["slug"] == c["slug"].lower()
        assert c["title"].strip() and c["part_title"].strip() and c["topic"].strip()


def test_chapter_parts(chapters):
    parts = [c["part"] for c in chapters]
    assert all(p in ROMAN for p in parts)
    assert sorted(set(parts), key=ROMAN.index) == ROMAN
    # parts appear in order and each part has one title
    assert [ROMAN.index(p) for p in parts] == sorted(ROMAN.index(p) for p in parts)
    titles = {}
    for c in chapters:
        titles.setdefault(c["part"], set()).add(c["part_title"])
    assert all(len(t) == 1 for t in titles.values())


def test_papers_shape(papers):
    assert isinstance(papers, list)
    assert len(papers) == 82
    ids = [p["id"] for p in papers]
    titles = [p["title"] for p in papers]
    assert len(set(ids)) == 82, "duplicate paper id"
    assert len(set(titles)) == 82, "duplicate paper title"
    for p in papers:
        assert set(p) >= {"id", "title", "short", "chapter", "section", "headline"}
        assert p["id"].replace("_", "").isalnum() and p["id"] == p["id"].lower()
        assert isinstance(p["title"], str) and p["title"].strip() == p["title"] and p["title"]
        assert isinstance(p["short"], str) and p["short"].strip()


def test_paper_chapters_exist(papers, chapters):
    numbers = {c["number"] for c in chapters}
    for p in papers:
        assert p["chapter"] in numbers, (p["id"], p["chapter"])
    # every chapter teaches at least one paper, and papers are listed in chapter order
    assert {p["chapter"] for p in papers} == numbers
    order = [p["chapter"] for p in papers]
    assert order == sorted(order)


def test_sections_exist(papers):
    for p in papers:
        section = p["section"]
        if section is None:
            continue
        assert isinstance(section, str), p["id"]
        path = ROOT / section
        assert path.suffix == ".ipynb", (p["id"], section)
        assert path.is_file(), (p["id"], section)


def test_headlines(papers):
    for p in papers:
        h = p["headline"]
        assert isinstance(h, str) and h.strip(), p["id"]
        assert "\n" not in h and "\r" not in h, p["id"]
        assert len(h) < 200, p["id"]
