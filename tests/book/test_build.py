"""The book builds with -W from the ci-executed notebooks, and its generated pages are filled."""

from __future__ import annotations

import html
import json
import re

import pytest

from tests import _book

pytestmark = pytest.mark.book


def text_of(html_file) -> str:
    """Visible text of a page, with Sphinx's curly quotes straightened."""
    text = html.unescape(re.sub(r"<[^>]+>", " ", html_file.read_text()))
    return re.sub(r"\s+", " ", text).replace("\u2018", "'").replace("\u2019", "'")


def test_every_toc_page_is_built(built_book_html) -> None:
    assert (built_book_html / "index.html").exists()
    for f in _book.toc_files():
        assert (built_book_html / f"{f}.html").exists(), f"{f}.html missing from the built book"


def test_claims_page_lists_this_runs_claims(built_book_html) -> None:
    page = text_of(built_book_html / "book" / "claims.html")
    for nb in _book.toc_notebooks():
        for claim in json.loads(_book.claims_record(nb, "ci").read_text())["claims"]:
            assert claim["claim"] in page, claim["claim"]
    assert "'ci' tier" in page


def test_runtime_table_lists_every_notebook(built_book_html) -> None:
    page = text_of(built_book_html / "book" / "runtimes.html")
    times = json.loads(_book.RUNTIMES.read_text())
    for nb in _book.toc_notebooks():
        ci = times[_book.docname(nb)]["ci"]["seconds"]
        assert f"{ci:.1f} s" in page


def test_papers_page_lists_all_papers(built_book_html) -> None:
    page = text_of(built_book_html / "book" / "papers.html")
    assert "82 papers" in page
    links = set(re.findall(r'href="references\.html#(cite-[\w-]+)"',
                           (built_book_html / "book" / "papers.html").read_text()))
    anchors = set(re.findall(r'id="(cite-[\w-]+)"', (built_book_html / "book" / "references.html").read_text()))
    assert len(links) == 82 and links <= anchors, sorted(links - anchors)


def test_claims_page_lists_sanity_checks_apart(built_book_html) -> None:
    page = text_of(built_book_html / "book" / "claims.html")
    kinds = {c.get("kind", "paper") for nb in _book.toc_notebooks()
             for c in json.loads(_book.claims_record(nb, "ci").read_text())["claims"]}
    assert "sanity" in kinds, "chapter 00 records a sanity check"
    assert re.search(r"Sanity checks \(\d+\)", page) and re.search(r"Claims \(\d+\)", page)


def test_exercises_are_numbered_and_solutions_folded(built_book_html) -> None:
    html_text = (built_book_html / "chapters" / "00_how_this_book_runs" / "01_how_this_book_runs.html").read_text()
    assert len(re.findall(r'<div class="exercise admonition"', html_text)) >= 2
    assert len(re.findall(r'<div class="solution dropdown admonition"', html_text)) >= 2


def test_executed_outputs_are_in_the_pages(built_book_html) -> None:
    for nb in _book.toc_notebooks():
        html = (built_book_html / f"{_book.docname(nb)}.html").read_text()
        assert "[PASS]" in html, "the claim's printed check should appear in the page"
