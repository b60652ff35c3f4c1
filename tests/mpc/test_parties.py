"""Tests of labkit.mpc._parties with real processes: a party that raises or dies ends the run
with an error naming it, and no process is left waiting. Each case costs one launch."""

from __future__ import annotations

import time

import pytest

import labkit.mpc as mpc
from labkit.mpc import _parties


@pytest.mark.timeout(120)
def test_a_raising_party_is_named() -> None:
    start = time.monotonic()
    with pytest.raises(mpc.MPCError, match="fails on purpose") as info:
        mpc.run(_parties.raise_at_party, runtime="processes", args=(1,), timeout=60)
    assert info.value.rank == 1
    assert time.monotonic() - start < 60


@pytest.mark.timeout(120)
def test_a_dead_dealer_ends_the_run() -> None:
    # either the launcher sees the dealer's exit code first, or a computing party reports
    # that its connection to the dealer closed; both end the run at once
    start = time.monotonic()
    with pytest.raises(mpc.MPCError, match="(?i)died|connection (closed|reset)|peer") as info:
        mpc.run(_parties.exit_at_party, runtime="processes", args=(2,), timeout=60)
    assert info.value.rank in (0, 1, 2)
    assert time.monotonic() - start < 60

