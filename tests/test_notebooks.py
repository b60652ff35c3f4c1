"""Every notebook of the book, executed by papermill at the ci tier: one test each.

A failing cell, a failed claim (``ClaimLog.check`` raises) or a run above the time limit fails
the test. Each wall time is written to book/_data/runtimes.json for the run-time table.
"""

from __future__ import annotations

import json

import pytest

from tests import _book

NOTEBOOKS = _book.toc_notebooks()


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[_book.docname(nb) for nb in NOTEBOOKS])
def test_notebook_runs_at_ci_tier(notebook, notebook_runs) -> None:
    run = notebook_runs(notebook)
    print(f"{_book.docname(notebook)}: {run.seconds:.1f} s at tier ci (budget {_book.CI_BUDGET_S} s)")
    assert run.seconds <= _book.CI_FAIL_S, f"{run.seconds:.1f} s is above the ci limit of {_book.CI_FAIL_S} s"

    record = _book.claims_record(notebook, "ci")
    assert record.exists(), f"the notebook recorded no claims under its own name ({record})"
    claims = json.loads(record.read_text())["claims"]
    assert claims, "every section asserts at least one claim with ClaimLog.check"
    assert all(c["passed"] for c in claims)


def test_book_has_notebooks() -> None:
    assert NOTEBOOKS, "_toc.yml lists no notebook"
