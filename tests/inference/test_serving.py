"""The serving simulator: hand-worked timelines, the M/D/1 queue, goodput's search, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.comm import AlphaBeta
from labkit.inference.costs import ConstantCost
from labkit.inference.serving import (SLO, Colocated, Disaggregated, Workload, goodput, md1_mean_wait,
                                      poisson_workload, simulate)

COST = ConstantCost(prefill_s=1.0, decode_s=0.5)


def test_one_request_by_hand() -> None:
    # prefill 0 -> 1 gives the first token; two decode steps of 0.5 s give the other two
    res = simulate(Colocated(COST), Workload((0.0,), (4,), (3,)))
    assert res.ttft.tolist() == [1.0] and res.finish.tolist() == [2.0] and res.tpot.tolist() == [0.5]


def test_a_prefill_interrupts_decodes_when_colocated() -> None:
    # r0: prefill 0-1, decode 1-1.5; r1 arrives at 1.2 and its prefill runs 1.5-2.5 while r0
    # waits; then one decode step for both 2.5-3.0 (r0 done), and r1's last step 3.0-3.5.
    work = Workload((0.0, 1.2), (4, 4), (3, 3))
    res = simulate(Colocated(COST), work)
    assert res.ttft == pytest.approx([1.0, 1.3])
    assert res.finish == pytest.approx([3.0, 3.5])
    assert res.tpot == pytest.approx([1.0, 0.5])  # r0's second token waited for r1's prefill


def test_disaggregation_removes_the_interference_and_pays_the_transfer() -> None:
    # KV of 4 tokens * 10 bytes at 0.01 s/byte plus 0.1 s latency: 0.5 s in flight.
    # r0: prefill 0-1, KV ready 1.5, decodes 1.5-2.0-2.5; r1: prefill 1.2-2.2, ready 2.7,
    # decodes 2.7-3.2-3.7. Neither waits for the other's prefill.
    cost = ConstantCost(prefill_s=1.0, decode_s=0.5, kv_bytes_per_token=10)
    work = Workload((0.0, 1.2), (4, 4), (3, 3))
    res = simulate(Disaggregated(cost, link=AlphaBeta(0.1, 0.01)), work)
    assert res.ttft == pytest.approx([1.0, 1.0])
    assert res.finish == pytest.approx([2.5, 3.7])
    assert res.tpot == pytest.approx([0.75, 0.75])


def test_continuous_batching_joins_between_steps() -> None:
    # r0's prefill runs 0-1, r1's 0.2-1.2 on the second prefill engine; r0 decodes 1.0-1.5
    # alone, r1 joins at the step boundary 1.5 and finishes with its one step at 2.0; r0's
    # four steps end at 1.5, 2.0, 2.5 and 3.0.
    work = Workload((0.0, 0.2), (2, 2), (5, 2))
    res = simulate(Disaggregated(COST, n_prefill=2), work)
    assert res.ttft.tolist() == [1.0, 1.0]
    assert res.finish.tolist() == [3.0, 2.0]


def test_max_batch_holds_requests_back() -> None:
    # batch of two: r0's prefill 0-1, r1's 1-2 (a waiting prefill goes first), both decode
    # 2-2.5-3. Batch of one: r1's prefill waits for r0 to finish at 2.0, runs 2-3, decodes to 4.
    work = Workload((0.0, 0.0), (2, 2), (3, 3))
    one = simulate(Colocated(COST, max_batch=1), work)
    two = simulate(Colocated(COST, max_batch=2), work)
    assert one.finish.tolist() == [2.0, 4.0] and two.finish.tolist() == [3.0, 3.0]


@pytest.mark.parametrize("rho", [0.5, 0.7])
def test_matches_md1_mean_wait(rho: float) -> None:
    """One server, one prompt at a time, constant service: the queue is M/D/1."""
    service = 0.2
    work = poisson_workload(rho / service, 20000, prompt=(8, 8), output=(1, 1), seed=3)
    res = simulate(Colocated(ConstantCost(service, 1.0), prefill_tokens=8), work)
    wait = float(np.mean(res.ttft)) - service
    assert wait == pytest.approx(md1_mean_wait(rho / service, service), rel=0.05)


def test_md1_formula_by_hand() -> None:
    # rho = 0.5, s = 2: 0.5 * 2 / (2 * 0.5) = 1
    assert md1_mean_wait(0.25, 2.0) == pytest.approx(1.0)


def test_invariants_on_a_random_workload() -> None:
    work = poisson_workload(1.5, 300, prompt=(2, 20), output=(1, 9), seed=1)
    for system in (Colocated(COST, max_batch=8), Disaggregated(COST, n_prefill=2, n_decode=3, max_batch=4)):
        res = simulate(system, work)
        arrivals, outputs = np.asarray(work.arrivals), np.asarray(work.outputs)
        assert (res.ttft >= 1.0 - 1e-9).all()  # at least one prefill
        assert (res.finish >= arrivals + res.ttft - 1e-12).all()
        assert (res.tpot[outputs > 1] >= 0.5 - 1e-12).all() and (res.tpot[outputs == 1] == 0).all()


def test_workload_is_seeded_and_scales_with_rate() -> None:
    a = poisson_workload(2.0, 500, prompt=(3, 7), output=(1, 4), seed=5)
    b = poisson_workload(4.0, 500, prompt=(3, 7), output=(1, 4), seed=5)
    assert a.prompts == b.prompts and a.outputs == b.outputs
    assert np.allclose(np.asarray(a.arrivals), 2 * np.asarray(b.arrivals))
    assert min(a.prompts) >= 3 and max(a.prompts) <= 7 and set(a.outputs) <= {1, 2, 3, 4}
    assert a.arrivals[-1] / 500 == pytest.approx(0.5, rel=0.1)  # mean gap 1 / rate
    assert poisson_workload(2.0, 50, prompt=(3, 7), output=(1, 4), seed=6).prompts != a.prompts[:50]


def test_goodput_finds_the_edge_and_grows_with_the_slo() -> None:
    kw = dict(n=200, prompt=(4, 4), output=(2, 6), seed=0, start=0.5)
    tight, loose = SLO(ttft=3.0, tpot=0.6), SLO(ttft=3.0, tpot=1.5)
    g_tight, g_loose = goodput(Colocated(COST), tight, **kw), goodput(Colocated(COST), loose, **kw)
    assert 0 < g_tight < g_loose < 1.0  # one prefill a second bounds the rate
    work = poisson_workload(g_tight, 200, prompt=(4, 4), output=(2, 6), seed=0)
    assert simulate(Colocated(COST), work).attainment(tight, skip=100) >= 0.9
    work = poisson_workload(2 * g_tight, 200, prompt=(4, 4), output=(2, 6), seed=0)
    assert simulate(Colocated(COST), work).attainment(tight, skip=100) < 0.9


def test_goodput_is_zero_when_the_slo_is_out_of_reach() -> None:
    assert goodput(Colocated(COST), SLO(ttft=0.5, tpot=1.0), n=20, prompt=(2, 2), output=(1, 1)) == 0.0


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="ttft"):
        SLO(ttft=0.0, tpot=1.0)
    with pytest.raises(ValueError, match="tpot"):
        SLO(ttft=1.0, tpot=-0.1)
    with pytest.raises(ValueError, match="rate"):
        poisson_workload(0.0, 10, prompt=(1, 2), output=(1, 2))
    with pytest.raises(ValueError, match="rate"):
        poisson_workload(-1.0, 10, prompt=(1, 2), output=(1, 2))
    with pytest.raises(ValueError, match="prompt"):
        poisson_workload(1.0, 10, prompt=(-3, 2), output=(1, 2))
    with pytest.raises(ValueError, match="output"):
        poisson_workload(1.0, 10, prompt=(1, 2), output=(3, 2))
    with pytest.raises(ValueError, match="prompts entry"):
        Workload((0.0,), (-1,), (1,))
    with pytest.raises(ValueError, match="sorted"):
        Workload((1.0, 0.5), (1, 1), (1, 1))
    with pytest.raises(ValueError, match="n_prefill"):
        Disaggregated(COST, n_prefill=0)
    with pytest.raises(TypeError, match="cost"):
        Colocated("fast")
    with pytest.raises(TypeError, match="link"):
        Disaggregated(COST, link=1.0)
    with pytest.raises(TypeError, match="system"):
        simulate("colocated", Workload((0.0,), (1,), (1,)))
    with pytest.raises(ValueError, match="rate \\* service"):
        md1_mean_wait(5.0, 0.2)
    with pytest.raises(ValueError, match="target"):
        goodput(Colocated(COST), SLO(1.0, 1.0), n=10, prompt=(1, 1), output=(1, 1), target=1.5)
    with pytest.raises(TypeError, match="slo"):
        goodput(Colocated(COST), (1.0, 1.0), n=10, prompt=(1, 1), output=(1, 1))
