"""Tests for labkit.graphs.temporal: event streams, the split, patches, models, metrics."""

from __future__ import annotations

import pytest
import torch

from labkit.graphs.temporal import (
    EventStream,
    LinkScores,
    TemporalAttention,
    TimeEncoding,
    Todyformer,
    average_precision,
    check_events,
    link_scores,
    mean_reciprocal_rank,
    periodic_stream,
    temporal_split,
    time_patches,
    train_link_predictor,
)


def small_stream(seed: int = 0) -> EventStream:
    return periodic_stream(12, periods=[5.0, 20.0], n_new=4, duration=100.0,
                           noise_rate=0.3, new_after=0.65, seed=seed)


# ---- events and the stream ----

def test_check_events_rejects_unsorted_times() -> None:
    src, dst = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    check_events(src, dst, torch.tensor([0.0, 1.0, 1.0]), 3)  # ties are fine
    with pytest.raises(ValueError, match=r"sorted by time: t\[1\] = 2 > t\[2\] = 1"):
        check_events(src, dst, torch.tensor([0.0, 2.0, 1.0]), 3)


def test_check_events_bad_inputs() -> None:
    src, dst, t = torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="dst must hold node ids in"):
        check_events(src, dst, t, 2)
    with pytest.raises(ValueError, match="same length"):
        check_events(src, dst[:1], t, 3)
    with pytest.raises(TypeError, match="t must be"):
        check_events(src, dst, torch.tensor([0, 1]), 3)
    with pytest.raises(TypeError, match="src must be"):
        check_events([0, 1], dst, t, 3)


def test_event_stream_rejects_unsorted_events_and_bad_shapes() -> None:
    s = small_stream()
    with pytest.raises(ValueError, match="sorted by time"):
        EventStream(s.src, s.dst, s.t.flip(0), s.x, s.gap, s.planted)
    with pytest.raises(ValueError, match="gap must have shape"):
        EventStream(s.src, s.dst, s.t, s.x, s.gap[1:], s.planted)
    with pytest.raises(ValueError, match="src must hold node ids"):
        EventStream(s.src, s.dst, s.t, s.x[:3], s.gap, s.planted)


def test_stream_is_sorted_seeded_and_periodic() -> None:
    a, b = small_stream(), small_stream()
    assert torch.equal(a.src, b.src) and torch.equal(a.t, b.t)
    assert not torch.equal(a.t, small_stream(1).t)
    check_events(a.src, a.dst, a.t, a.n_nodes)
    assert a.x.shape == (16, 16)
    # each node is the source of exactly one planted pair
    pairs = {(int(s), int(d)) for s, d in zip(a.src[a.planted], a.dst[a.planted])}
    assert sorted(s for s, _ in pairs) == list(range(16))
    # new nodes (ids 12..15) appear only after new_after of the duration
    new = (a.src >= 12) | (a.dst >= 12)
    assert float(a.t[new].min()) >= 65.0


def test_pair_gap_counts_events_since_the_pair_last_met() -> None:
    s = small_stream()
    for i in range(len(s)):
        g = int(s.gap[i])
        same = ((s.src[:i] == s.src[i]) & (s.dst[:i] == s.dst[i])).nonzero()
        if same.numel() == 0:
            assert g == -1
        else:
            assert g == i - int(same[-1])


def test_periodic_stream_bad_arguments() -> None:
    with pytest.raises(ValueError, match="periods must not be empty"):
        periodic_stream(5, periods=[])
    with pytest.raises(ValueError, match="periods"):
        periodic_stream(5, periods=[0.0])
    with pytest.raises(ValueError, match="new_after"):
        periodic_stream(5, periods=[3.0], new_after=1.0)
    with pytest.raises(ValueError, match="n_nodes"):
        periodic_stream(1, periods=[3.0])


# ---- split ----

def test_split_respects_time_and_marks_unseen_nodes() -> None:
    s = small_stream()
    sp = temporal_split(s, val=0.2, test=0.15, span=(0.0, 100.0))
    assert len(sp.train) + len(sp.val) + len(sp.test) == len(s)
    assert float(s.t[sp.train].max()) < float(s.t[sp.val].min())
    assert float(s.t[sp.val].max()) < float(s.t[sp.test].min())
    # the new nodes start at 0.65 of the time span, exactly where val starts
    assert not bool(sp.seen[12:].any()) and bool(sp.seen[:12].all())
    ind = sp.inductive(s, sp.test)
    has_new = (s.src[sp.test] >= 12) | (s.dst[sp.test] >= 12)
    assert torch.equal(ind, has_new) and bool(ind.any())


def test_split_bad_shares() -> None:
    with pytest.raises(ValueError, match="val \\+ test must be below 1"):
        temporal_split(small_stream(), val=0.5, test=0.5)
    with pytest.raises(ValueError, match="test must be >"):
        temporal_split(small_stream(), test=0.0)
    with pytest.raises(ValueError, match="span must be"):
        temporal_split(small_stream(), span=(5.0, 5.0))


# ---- patches and time encoding ----

def test_time_patches_by_hand() -> None:
    # [0, 8) in 4 patches of width 2: 0 -> 0, 1.9 -> 0, 2 -> 1, 5 -> 2, 7.99 -> 3
    t = torch.tensor([0.0, 1.9, 2.0, 5.0, 7.99])
    assert time_patches(t, 0.0, 8.0, 4).tolist() == [0, 0, 1, 2, 3]
    # one patch holds everything; times at the end clamp into the last patch
    assert time_patches(t, 0.0, 8.0, 1).tolist() == [0] * 5
    assert time_patches(torch.tensor([8.0]), 0.0, 8.0, 4).tolist() == [3]


def test_time_patches_bad_arguments() -> None:
    t = torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="patches must be >= 1"):
        time_patches(t, 0.0, 2.0, 0)
    with pytest.raises(ValueError, match="end must be after start"):
        time_patches(t, 2.0, 2.0, 2)


def test_time_encoding_is_cosine_of_scaled_time() -> None:
    enc = TimeEncoding(4, longest=1000.0)
    out = enc(torch.tensor([0.0, 10.0]))
    assert out.shape == (2, 4)
    assert torch.allclose(out[0], torch.ones(4))              # cos(0) with b = 0
    assert torch.allclose(out[1, 0], torch.cos(torch.tensor(10.0)))  # w_0 = 1


# ---- models ----

def test_models_reject_window_and_patch_count_below_one() -> None:
    with pytest.raises(ValueError, match="window must be >= 1"):
        TemporalAttention(4, window=0)
    with pytest.raises(ValueError, match="patches must be >= 1"):
        Todyformer(4, patches=0)
    with pytest.raises(ValueError, match="span must be >= 1"):
        Todyformer(4, span=0)


def test_baseline_forgets_events_outside_its_window() -> None:
    torch.manual_seed(0)
    model = TemporalAttention(3, 8, window=2)
    x = torch.randn(4, 3)
    src, dst = torch.tensor([0, 2]), torch.tensor([1, 3])
    t = torch.tensor([1.0, 2.0])
    h = model.embed(x, src, dst, t, 3.0)
    # node 0's embedding depends on node 1's features, not on node 3's
    x2 = x.clone()
    x2[3] += 1.0
    assert torch.allclose(model.embed(x2, src, dst, t, 3.0)[0], h[0])
    x2 = x.clone()
    x2[1] += 1.0
    assert not torch.allclose(model.embed(x2, src, dst, t, 3.0)[0], h[0])


def test_todyformer_token_sees_an_old_event_and_patches_isolate_nodes() -> None:
    torch.manual_seed(0)
    model = Todyformer(3, 8, span=10, patches=3)
    x = torch.randn(5, 3)
    src, dst = torch.tensor([0, 2, 3]), torch.tensor([1, 3, 2])
    t = torch.tensor([0.0, 5.0, 8.0])
    h = model.embed(x, src, dst, t, 9.0)
    assert h.shape == (5, 8)
    x2 = x.clone()
    x2[1] += 1.0      # node 1 met node 0 in the first patch: 0 must change
    h2 = model.embed(x2, src, dst, t, 9.0)
    assert not torch.allclose(h2[0], h[0])
    assert torch.allclose(h2[4], h[4])     # node 4 met nobody
    assert torch.allclose(h2[2], h[2])     # 2 and 3 never met 1


def test_todyformer_counts_a_pair_once_per_patch() -> None:
    torch.manual_seed(0)
    model = Todyformer(3, 8, span=10, patches=2)
    x = torch.randn(5, 3)
    # an event of 3 and 4 at t = 0 fixes the patches: [0, 2) and [2, 4)
    once = model.embed(x, torch.tensor([3, 0]), torch.tensor([4, 1]),
                       torch.tensor([0.0, 1.0]), 4.0)
    twice = model.embed(x, torch.tensor([3, 0, 0]), torch.tensor([4, 1, 1]),
                        torch.tensor([0.0, 0.5, 1.0]), 4.0)
    assert torch.allclose(once, twice, atol=1e-6)
    # in different patches the two meetings make two tokens: it changes
    apart = model.embed(x, torch.tensor([3, 0, 0]), torch.tensor([4, 1, 1]),
                        torch.tensor([0.0, 1.0, 3.0]), 4.0)
    assert not torch.allclose(once[0], apart[0], atol=1e-4)


def test_scores_never_read_the_block_they_predict_or_later() -> None:
    s = small_stream()
    sp = temporal_split(s, val=0.2, test=0.15)
    torch.manual_seed(0)
    model = Todyformer(16, 8, span=40, patches=2)
    a = link_scores(model, s, sp.test, negatives=3, batch=8, seed=0)
    # rewire every event from the second test block on: the first block's
    # queries must score the same, since they read only events before it
    b0 = (int(sp.test[0]) // 8) * 8
    dst = s.dst.clone()
    dst[b0 + 8:] = (dst[b0 + 8:] + 1) % s.n_nodes
    later = EventStream(s.src, dst, s.t, s.x, s.gap, s.planted)
    b = link_scores(model, later, sp.test, negatives=3, batch=8, seed=0)
    first = sp.test < b0 + 8
    assert torch.equal(a.pos[first], b.pos[first])
    assert not torch.equal(a.pos[~first], b.pos[~first])
    assert a.neg.shape == (len(sp.test), 3)
    # negatives are never the true destination
    from labkit.graphs.temporal import _negatives
    neg = _negatives(s, sp.test, 5, torch.Generator().manual_seed(0))
    assert not bool((neg == s.dst[sp.test].unsqueeze(1)).any())


def test_training_lowers_the_loss_and_scores_are_deterministic() -> None:
    s = small_stream()
    sp = temporal_split(s, val=0.2, test=0.15)
    torch.manual_seed(0)
    model = TemporalAttention(16, 8, window=16)
    losses = train_link_predictor(model, s, sp.train, epochs=6, batch=8,
                                  lr=1e-2, seed=0)
    assert losses[-1] < losses[0]
    a = link_scores(model, s, sp.test, negatives=4, batch=8, seed=3)
    b = link_scores(model, s, sp.test, negatives=4, batch=8, seed=3)
    assert torch.equal(a.neg, b.neg)


def test_scoring_and_training_bad_arguments() -> None:
    s = small_stream()
    model = TemporalAttention(16, 8, window=4)
    with pytest.raises(TypeError, match="model must be a LinkModel"):
        link_scores(torch.nn.Linear(2, 2), s, torch.arange(3))
    with pytest.raises(TypeError, match="stream must be an EventStream"):
        link_scores(model, (s.src, s.dst, s.t), torch.arange(3))
    with pytest.raises(ValueError, match="index must hold event indices"):
        link_scores(model, s, torch.tensor([len(s)]))
    with pytest.raises(TypeError, match="train must be"):
        train_link_predictor(model, s, [0, 1])
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train_link_predictor(model, s, torch.arange(10), epochs=0)


# ---- metrics ----

def test_average_precision_and_mrr_by_hand() -> None:
    # positives 3 and 1, first negatives 2 and 0: ranked 3(+) 2(-) 1(+) 0(-)
    # AP = (1/1 + 2/3) / 2 = 5/6
    scores = LinkScores(torch.arange(2), torch.tensor([3.0, 1.0]),
                        torch.tensor([[2.0, 0.0], [0.0, 5.0]]))
    assert average_precision(scores) == pytest.approx(5 / 6)
    # ranks: first positive beats both (1), second is beaten by 5 (2): (1 + 1/2) / 2
    assert mean_reciprocal_rank(scores) == pytest.approx(0.75)
    tie = LinkScores(torch.arange(1), torch.tensor([1.0]), torch.tensor([[1.0]]))
    assert mean_reciprocal_rank(tie) == pytest.approx(1 / 1.5)


def test_metrics_of_an_empty_subset_are_nan() -> None:
    empty = LinkScores(torch.arange(0), torch.zeros(0), torch.zeros(0, 2))
    assert average_precision(empty) != average_precision(empty)
    assert mean_reciprocal_rank(empty) != mean_reciprocal_rank(empty)
