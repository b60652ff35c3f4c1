"""labkit.comm.costmodel: collective costs by hand, bus bandwidth, and the fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labkit.comm.costmodel import AlphaBeta, bus_bandwidth, collective_time, fit_alpha_beta

LINK = AlphaBeta(alpha=1e-5, beta=1e-9)  # 10 us per message, 1 GB/s


def test_costs_by_hand() -> None:
    # 4 ranks, 4 MB: ring all-reduce = 2*3 alpha + 2*3/4 * 4e6 * beta = 60 us + 6 ms
    assert collective_time("ring_all_reduce", 4e6, 4, LINK) == pytest.approx(6e-5 + 6e-3)
    assert collective_time("reduce_scatter", 4e6, 4, LINK) == pytest.approx(3e-5 + 3e-3)
    assert collective_time("tree_all_reduce", 4e6, 4, LINK) == pytest.approx(4 * (1e-5 + 4e-3))
    assert collective_time("all_to_all", 0.0, 8, LINK) == pytest.approx(7e-5)


def test_ring_is_reduce_scatter_plus_all_gather() -> None:
    for n in (2, 3, 16):
        rs = collective_time("reduce_scatter", 1e6, n, LINK)
        ag = collective_time("all_gather", 1e6, n, LINK)
        assert collective_time("ring_all_reduce", 1e6, n, LINK) == pytest.approx(rs + ag)


def test_bus_bandwidth_matches_the_link_for_an_ideal_ring() -> None:
    ideal = AlphaBeta(0.0, 1e-9)
    t = collective_time("ring_all_reduce", 8e6, 8, ideal)
    assert bus_bandwidth("all_reduce", 8e6, t, 8) == pytest.approx(1e9)
    assert ideal.bandwidth == pytest.approx(1e9) and math.isinf(AlphaBeta(0, 0).bandwidth)


def test_fit_recovers_alpha_and_beta() -> None:
    sizes = [4e3 * 4**k for k in range(7)]
    times = [collective_time("ring_all_reduce", s, 4, LINK) for s in sizes]
    fit = fit_alpha_beta(sizes, times, world_size=4)
    assert fit.alpha == pytest.approx(LINK.alpha, rel=1e-6) and fit.beta == pytest.approx(LINK.beta, rel=1e-6)


@pytest.mark.parametrize("call, msg", [
    (lambda: AlphaBeta(-1, 0), "alpha and beta"),
    (lambda: collective_time("ring_all_reduce", 1.0, 1, LINK), "world_size"),
    (lambda: collective_time("butterfly", 1.0, 4, LINK), "unknown collective"),
    (lambda: collective_time("ring_all_reduce", -1.0, 4, LINK), "nbytes"),
    (lambda: bus_bandwidth("gather", 1.0, 1.0, 4), "collective must be"),
    (lambda: bus_bandwidth("all_reduce", 1.0, 0.0, 4), "seconds"),
    (lambda: fit_alpha_beta([1.0], [1.0]), "at least two"),
    (lambda: fit_alpha_beta([1.0, 1.0], [1.0, 2.0], world_size=4), "sizes must differ"),
    (lambda: LINK.message(-1), "nbytes"),
])
def test_bad_inputs(call, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        call()


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("call, err, msg", [
    (lambda: AlphaBeta(NAN, 1e-9), ValueError, "alpha must be a finite number, got nan"),
    (lambda: AlphaBeta(1e-5, INF), ValueError, "beta must be a finite number, got inf"),
    (lambda: AlphaBeta("1e-5", 1e-9), TypeError, "alpha must be a real number, got str"),
    (lambda: AlphaBeta(True, 1e-9), TypeError, "alpha must be a real number, got bool"),
    (lambda: LINK.message(NAN), ValueError, "nbytes must be a finite number"),
    (lambda: collective_time("ring_all_reduce", NAN, 4, LINK), ValueError, "nbytes must be a finite number"),
    (lambda: collective_time("ring_all_reduce", INF, 4, LINK), ValueError, "nbytes must be a finite number"),
    (lambda: collective_time("ring_all_reduce", "1000", 4, LINK), TypeError, "nbytes must be a real number, got str"),
    (lambda: collective_time("ring_all_reduce", True, 4, LINK), TypeError, "nbytes must be a real number, got bool"),
    (lambda: collective_time("ring_all_reduce", 1e3, 4, (1e-5, 1e-9)), TypeError, "link must be an AlphaBeta"),
    (lambda: bus_bandwidth("all_reduce", 1e6, NAN, 4), ValueError, "seconds must be a finite number"),
    (lambda: bus_bandwidth("all_reduce", NAN, 1.0, 4), ValueError, "nbytes must be a finite number"),
    (lambda: bus_bandwidth("all_reduce", -1.0, 1.0, 4), ValueError, "nbytes must be >= 0"),
    (lambda: bus_bandwidth("all_reduce", "1e6", 1.0, 4), TypeError, "nbytes must be a real number"),
    (lambda: fit_alpha_beta([1e3, 1e6, 1e9], [1e-4, NAN, 1e-1]), ValueError, r"seconds\[1\] must be a finite"),
    (lambda: fit_alpha_beta([1e3, INF], [1e-4, 1e-1]), ValueError, r"nbytes\[1\] must be a finite"),
    (lambda: fit_alpha_beta([1e3, 1e6], [1e-4, -1e-1]), ValueError, r"seconds\[1\] must be >= 0"),
    (lambda: fit_alpha_beta(["1e3", 1e6], [1e-4, 1e-1]), TypeError, r"nbytes\[0\] must be a real number"),
])
def test_non_finite_and_non_numeric_inputs_are_rejected(call, err, msg: str) -> None:
    with pytest.raises(err, match=msg):
        call()


def test_numpy_scalars_and_ints_are_numbers() -> None:
    link = AlphaBeta(np.float64(1e-5), np.float32(1e-9))
    expected = collective_time("ring_all_reduce", 4e6, 4, AlphaBeta(1e-5, float(np.float32(1e-9))))
    assert collective_time("ring_all_reduce", np.int64(4_000_000), 4, link) == expected
    assert bus_bandwidth("all_reduce", np.float64(8e6), np.float64(1e-2), 8) == pytest.approx(8e8 * 2 * 7 / 8)
    assert collective_time("all_gather", 1000, 2, AlphaBeta(0, 0)) == 0.0


def test_bus_factor_table_by_hand() -> None:
    from labkit.comm.costmodel import bus_factor_table

    rows = {r.collective: r for r in bus_factor_table(8, nbytes=800.0)}
    assert set(rows) == {"all_reduce", "reduce_scatter", "all_gather", "all_to_all",
                         "broadcast", "reduce"}
    assert rows["all_reduce"].factor == pytest.approx(14 / 8)
    assert rows["all_reduce"].bytes_per_rank == pytest.approx(1400.0)  # 2 * 7/8 * 800
    assert rows["all_gather"].factor == rows["reduce_scatter"].factor == pytest.approx(7 / 8)
    assert rows["broadcast"].factor == rows["reduce"].factor == 1.0
    # the table and bus_bandwidth agree
    assert bus_bandwidth("broadcast", 800.0, 1.0, 8) == pytest.approx(800.0)
    with pytest.raises(ValueError, match="world_size"):
        bus_factor_table(1)
    with pytest.raises((TypeError, ValueError), match="nbytes"):
        bus_factor_table(4, nbytes=-1.0)
