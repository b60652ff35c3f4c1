"""labkit.comm.faults: the ring timing simulator, slow-rank detection, and a real delayed rank."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.comm.costmodel import AlphaBeta, collective_time
from labkit.comm.faults import delayed_all_reduce, detect_slow_rank, simulate_ring_timings
from labkit.dist import LaunchError, launch

LINK = AlphaBeta(alpha=1e-5, beta=1e-10)


def test_noise_free_ring_matches_the_cost_model() -> None:
    t = simulate_ring_timings(world_size=4, iterations=3, nbytes=1e8, link=LINK, compute_s=0.01, noise=0.0)
    assert np.allclose(t.duration, collective_time("ring_all_reduce", 1e8, 4, LINK))
    assert np.allclose(t.enter[1:], t.exit[:-1] + 0.01)


def test_a_slow_rank_makes_the_others_wait() -> None:
    t = simulate_ring_timings(world_size=4, iterations=2, nbytes=1e8, link=LINK, compute_s=0.01, noise=0.0,
                              fault="compute", slow_rank=2, slowdown=2.0)
    # the pipelined ring lets ranks leave within n - 1 message times of each other, so the
    # 10 ms that rank 2 came late shows as others' waits: rank 2 spends the least time inside
    message = LINK.message(1e8 / 4)
    assert np.ptp(t.exit[0]) <= 3 * message + 1e-12
    assert t.duration[0].argmin() == 2
    assert (t.duration[0, [0, 1, 3]] - t.duration[0, 2] >= 0.01 - 3 * message - 1e-12).all()
    # a slow link slows every rank alike but shows on its own connection
    s = simulate_ring_timings(world_size=4, iterations=2, nbytes=1e8, link=LINK, compute_s=0.01, noise=0.0,
                              fault="link", slow_rank=1, slowdown=3.0)
    assert np.allclose(s.link[:, 1], 3 * s.link[:, 0])


def test_detection_on_hand_made_timings() -> None:
    d = np.array([[0.030, 0.031, 0.010, 0.029], [0.030, 0.030, 0.012, 0.031], [0.028, 0.030, 0.011, 0.030]])
    hit = detect_slow_rank(d)
    assert hit.rank == 2 and hit.kind == "compute" and hit.z > 5
    calm = detect_slow_rank(d[:, [0, 1, 3]])
    assert calm.rank is None and calm.kind == "none"
    link = np.array([[1.0, 1.0, 1.0, 2.0]] * 3) * 1e-3
    flagged = detect_slow_rank(np.full((3, 4), 0.03), link=link)
    assert flagged.rank == 3 and flagged.kind == "link"


def test_simulated_faults_are_found_and_healthy_runs_are_not_flagged() -> None:
    for seed in range(20):
        rank = seed % 8
        for fault in ("compute", "link"):
            t = simulate_ring_timings(world_size=8, iterations=20, nbytes=1e8, link=LINK, compute_s=0.05,
                                      fault=fault, slow_rank=rank, slowdown=1.5, seed=seed)
            found = detect_slow_rank(t.duration, link=t.link)
            assert (found.rank, found.kind) == (rank, fault)
        t = simulate_ring_timings(world_size=8, iterations=20, nbytes=1e8, link=LINK, compute_s=0.05, seed=seed)
        assert detect_slow_rank(t.duration, link=t.link).rank is None


def test_bad_inputs() -> None:
    kw = dict(world_size=4, iterations=2, nbytes=1e6, link=LINK, compute_s=0.01)
    with pytest.raises(ValueError, match="world_size must be >= 2"):
        simulate_ring_timings(**{**kw, "world_size": 1})
    with pytest.raises(ValueError, match="unknown fault"):
        simulate_ring_timings(**kw, fault="cosmic_ray")
    with pytest.raises(ValueError, match="slowdown must be >= 1"):
        simulate_ring_timings(**kw, fault="compute", slowdown=0.5)
    with pytest.raises(ValueError, match="noise must be"):
        simulate_ring_timings(**{**kw, "noise": -0.1})
    with pytest.raises(ValueError, match="slow_rank must be in"):
        simulate_ring_timings(**kw, slow_rank=4)
    with pytest.raises(TypeError, match="link must be an AlphaBeta"):
        simulate_ring_timings(**{**kw, "link": (1e-5, 1e-9)})
    with pytest.raises(ValueError, match="duration must be an"):
        detect_slow_rank(np.zeros(4))
    with pytest.raises(ValueError, match="finite times >= 0"):
        detect_slow_rank(-np.ones((3, 4)))
    with pytest.raises(ValueError, match="shape of duration"):
        detect_slow_rank(np.ones((3, 4)), link=np.ones((3, 5)))
    with pytest.raises(ValueError, match="min_share"):
        detect_slow_rank(np.ones((3, 4)), min_share=2.0)


@pytest.mark.timeout(120)
def test_real_delayed_rank_is_identified() -> None:
    out = launch(delayed_all_reduce, 4, kwargs=dict(delayed_rank=1, delay_s=0.05, iterations=4), timeout=90)
    duration = np.array([np.subtract(o["exit"], o["enter"]) for o in out]).T  # (I, n)
    # the delayed rank spends ~50 ms less inside every all-reduce than the others
    assert (np.delete(duration, 1, axis=1).min(axis=1) - duration[:, 1] > 0.025).all()
    hit = detect_slow_rank(duration, min_scale_s=1e-3)
    assert (hit.rank, hit.kind) == (1, "compute")


@pytest.mark.timeout(120)
def test_a_failing_rank_surfaces_cleanly() -> None:
    with pytest.raises(LaunchError, match="rank 1 raised") as info:
        launch(delayed_all_reduce, 2, kwargs=dict(delayed_rank=0, delay_s=0.0, iterations=2, fail_rank=1), timeout=90)
    assert info.value.rank == 1 and "failed on purpose" in info.value.child_traceback
