"""Consistency checks for the book's data files (book/_data/*.yml).

Runs offline and reads only files inside the repository.
"""
import importlib.util
import re
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


# -- the bibliography (book/references.bib) ---------------------------------------------------------

BIBFILE = ROOT / "book" / "references.bib"
ARXIV_ID = r"\d{4}\.\d{4,5}"


@pytest.fixture(scope="module")
def bib_entries():
    from pybtex.database import parse_file  # installed with sphinxcontrib-bibtex

    return parse_file(str(BIBFILE)).entries


def _plain(field: str) -> str:
    """A BibTeX field without its case-protecting braces."""
    return field.replace("{", "").replace("}", "")


def test_every_paper_has_an_entry_with_its_exact_title(papers, bib_entries):
    missing = [p["id"] for p in papers if p["id"] not in bib_entries]
    assert not missing, f"no entry in book/references.bib for {missing}"
    wrong = [(p["id"], _plain(bib_entries[p["id"]].fields["title"])) for p in papers
             if _plain(bib_entries[p["id"]].fields["title"]) != p["title"]]
    assert not wrong, f"titles differ from papers.yml: {wrong}"


def test_arxiv_fields_agree(papers, bib_entries):
    for p in papers:
        fields = bib_entries[p["id"]].fields
        if "eprint" not in fields:
            assert "url" not in fields and "year" not in fields, f"{p['id']}: url/year without an arXiv id"
            continue
        eprint = fields["eprint"]
        assert re.fullmatch(ARXIV_ID, eprint), (p["id"], eprint)
        assert fields["archiveprefix"] == "arXiv", p["id"]
        assert fields["url"] == f"https://arxiv.org/abs/{eprint}", p["id"]
        assert fields["year"] == str(2000 + int(eprint[:2])), f"{p['id']}: year is the arXiv submission's"
    ids = [bib_entries[p["id"]].fields.get("eprint") for p in papers]
    dupes = {i for i in ids if i and ids.count(i) > 1}
    assert not dupes, f"one arXiv id for several papers: {dupes}"


@pytest.fixture(scope="module")
def labbook():
    """book/_ext/labbook.py, the extension that generates the book's tables (loaded by path)."""
    spec = importlib.util.spec_from_file_location("labbook_ext", ROOT / "book" / "_ext" / "labbook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_papers_page_anchors_match_the_bibliography_config(labbook):
    """The Papers page links to references.html#cite-<id>: the id template of _config.yml, and a
    References page that lists every entry (not only the cited ones), must agree with it."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    assert config["config"]["bibtex_cite_id"] == "cite-{key}"
    assert labbook.citation_anchor("topological_concentration") == "cite-topological-concentration"
    assert "sphinx_exercise" in config["extra_extensions"]
    references = (ROOT / "book" / "references.md").read_text()
    assert re.search(r"```\{bibliography\}\n:all:\n```", references), "the References page lists every entry"


def test_runtime_table_counts_exercises(labbook, tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# P\n\n:::{exercise}\n:label: a\n:::\n\n```{exercise-start}\n:label: b\n```\n"
                    "```{exercise-end}\n```\n\n```{solution} a\n```\n")
    assert labbook.exercise_count(page) == 2
    assert labbook.exercise_count(tmp_path / "missing.ipynb") == 0
    chapter00 = ROOT / "chapters" / "00_how_this_book_runs" / "01_how_this_book_runs.ipynb"
    assert 2 <= labbook.exercise_count(chapter00) <= 4  # the contract of a section
