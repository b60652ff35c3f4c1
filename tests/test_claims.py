"""labkit.claims: checks print, record and fail loudly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.claims import CLAIM_KINDS, ClaimFailed, ClaimLog, records_dir


@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LABKIT_RECORDS_DIR", str(tmp_path))
    return tmp_path


def read(records: Path) -> dict:
    return json.loads((records / "ci" / "01_x" / "02_y.json").read_text())


def test_passing_claim_is_printed_and_recorded(records: Path, capsys: pytest.CaptureFixture) -> None:
    log = ClaimLog("01_x", "02_y", "ci")
    assert read(records)["claims"] == []  # creating the log starts an empty record
    log.check("error is small", torch.tensor(1e-7), "<=", 1e-6, unit="", paper="ultragcn")
    log.check("speed-up", np.float64(2.5), ">=", 1.2, unit="x")
    out = capsys.readouterr().out
    assert "[PASS] error is small: measured 1e-07 <= bound 1e-06" in out
    assert "[PASS] speed-up: measured 2.5 x >= bound 1.2 x" in out
    rec = read(records)
    assert (rec["chapter"], rec["section"], rec["tier"]) == ("01_x", "02_y", "ci")
    assert [c["passed"] for c in rec["claims"]] == [True, True]
    assert rec["claims"][0]["paper"] == "ultragcn" and rec["claims"][1]["measured"] == 2.5


def test_failing_claim_raises_after_recording(records: Path) -> None:
    log = ClaimLog("01_x", "02_y", "ci")
    with pytest.raises(ClaimFailed, match="is not >= 2"):
        log.check("recall is high", 1.5, ">=", 2)
    assert read(records)["claims"][0]["passed"] is False
    assert issubclass(ClaimFailed, AssertionError)


def test_a_new_log_replaces_the_previous_run(records: Path) -> None:
    ClaimLog("01_x", "02_y", "ci").check("a", 1, "==", 1)
    ClaimLog("01_x", "02_y", "ci")
    assert read(records)["claims"] == []


@pytest.mark.parametrize("op, measured, bound, ok", [("<", 1, 2, True), ("<", 2, 2, False), (">", 3, 2, True),
                                                     ("==", 2, 2, True), ("<=", 2, 2, True), (">=", 1, 2, False)])
def test_operators(records: Path, op: str, measured: float, bound: float, ok: bool) -> None:
    log = ClaimLog("01_x", "02_y", "ci")
    if ok:
        log.check("c", measured, op, bound)
    else:
        with pytest.raises(ClaimFailed):
            log.check("c", measured, op, bound)


@pytest.mark.parametrize("kwargs, err, msg", [
    (dict(claim="", measured=1, op="<", bound=2), ValueError, "claim"),
    (dict(claim="c", measured=1, op="~", bound=2), ValueError, "op must be"),
    (dict(claim="c", measured="1", op="<", bound=2), TypeError, "measured must be a number"),
    (dict(claim="c", measured=float("nan"), op="<", bound=2), ValueError, "NaN"),
    (dict(claim="c", measured=torch.ones(2), op="<", bound=2), ValueError, "scalar"),
    (dict(claim="c", measured=True, op="<", bound=2), TypeError, "number"),
])
def test_bad_checks(records: Path, kwargs: dict, err: type, msg: str) -> None:
    with pytest.raises(err, match=msg):
        ClaimLog("01_x", "02_y", "ci").check(**kwargs)


@pytest.mark.parametrize("chapter, section, tier, err", [("01 x", "02_y", "ci", ValueError), ("01_x", "", "ci", ValueError),
                                                         ("01_x", "02_y", "fast", ValueError), ("../x", "y", "ci", ValueError)])
def test_bad_logs(records: Path, chapter: str, section: str, tier: str, err: type) -> None:
    with pytest.raises(err):
        ClaimLog(chapter, section, tier)


def test_records_dir_finds_the_book_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABKIT_RECORDS_DIR", raising=False)
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root / "chapters")
    assert records_dir() == root / "_build" / "records"


def test_kinds_are_recorded_and_paper_is_the_default(records: Path, capsys: pytest.CaptureFixture) -> None:
    log = ClaimLog("01_x", "02_y", "ci")
    log.check("recall beats the baseline", 0.3, ">", 0.2, paper="ultragcn")
    log.check("shares reconstruct the secret", 0.0, "==", 0.0, kind="sanity")
    log.check("the protocol round completes", 1, "==", 1, kind="protocol")
    assert [c["kind"] for c in read(records)["claims"]] == ["paper", "sanity", "protocol"]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[PASS] recall beats the baseline: measured 0.3 >")
    assert out[1] == "[PASS] (sanity) shares reconstruct the secret: measured 0 == bound 0"
    assert out[2].startswith("[PASS] (protocol) the protocol round completes")
    assert CLAIM_KINDS[:2] == ("paper", "sanity")


def test_a_failing_sanity_check_still_fails(records: Path) -> None:
    with pytest.raises(ClaimFailed):
        ClaimLog("01_x", "02_y", "ci").check("identity", 1.0, "==", 2.0, kind="sanity")
    assert read(records)["claims"][0]["kind"] == "sanity"


@pytest.mark.parametrize("kind, err", [("", ValueError), ("Sanity", ValueError), ("two words", ValueError),
                                       (3, TypeError), (None, TypeError)])
def test_bad_kind(records: Path, kind: object, err: type) -> None:
    with pytest.raises(err, match="kind must be"):
        ClaimLog("01_x", "02_y", "ci").check("c", 1, "==", 1, kind=kind)  # type: ignore[arg-type]


def test_long_claims_wrap_to_the_page(records: Path, capsys: pytest.CaptureFixture) -> None:
    claim = "the fused kernel equals the reference on every element of a long vector " * 2
    ClaimLog("01_x", "02_y", "ci").check(claim.strip(), 1e-7, "<=", 1e-5, unit="abs")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 3 and all(len(line) <= 80 for line in lines), lines
    assert lines[0].startswith("[PASS] the fused kernel")
    assert lines[-1] == "       measured 1e-07 abs <= bound 1e-05 abs"
    assert " ".join(line.strip() for line in lines[:-1]) == f"[PASS] {claim.strip()}:"
