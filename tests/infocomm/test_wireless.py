"""The Gilbert-Elliott channel, GOP decodability and the layered and cross-layer senders."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.infocomm import wireless as wl


def test_closed_forms_by_hand() -> None:
    # Gilbert's channel (no loss in good, all lost in bad): pi_B = 0.05 / 0.3 = 1/6, and a
    # loss burst is a stay in the bad state, geometric with mean 1 / p_bg = 4 slots
    gilbert = wl.GilbertElliott(0.05, 0.25, 0.0, 1.0)
    assert gilbert.stationary_loss() == pytest.approx(1 / 6)
    assert gilbert.mean_burst_length() == pytest.approx(4.0)
    # memory 0: independent losses at rate 0.2, runs geometric with mean 1 / (1 - 0.2)
    iid = wl.equal_loss_channel(0.2, 0.0)
    assert iid.stationary_loss() == pytest.approx(0.2)
    assert iid.memory == pytest.approx(0.0)
    assert iid.mean_burst_length() == pytest.approx(1.25)
    # equal loss at every memory, longer bursts with more memory
    chans = [wl.equal_loss_channel(0.2, m) for m in (0.0, 0.5, 0.9, 0.99)]
    assert [c.stationary_loss() for c in chans] == pytest.approx([0.2] * 4)
    bursts = [c.mean_burst_length() for c in chans]
    assert all(a < b for a, b in zip(bursts, bursts[1:]))


@pytest.mark.parametrize("channel", [
    wl.GilbertElliott(0.05, 0.25, 0.0, 1.0),
    wl.GilbertElliott(0.02, 0.1, 0.05, 0.7),
    wl.equal_loss_channel(0.2, 0.9),
])
def test_sampled_channel_matches_closed_forms(channel: wl.GilbertElliott) -> None:
    bad, u = wl.sample_channel([channel] * 64, 20_000, seed=3)
    lost = u[..., 0] < channel.losses(1)[bad.astype(int)]
    # 1.28 M slots with bursts of a few slots: relative errors of about 1 %
    assert bad.mean() == pytest.approx(channel.bad_share, rel=0.03)
    assert lost.mean() == pytest.approx(channel.stationary_loss(), rel=0.03)
    assert wl.mean_run_length(lost) == pytest.approx(channel.mean_burst_length(), rel=0.03)


def test_mean_run_length_by_hand() -> None:
    # runs of lengths 2, 1 and 3: mean 2
    assert wl.mean_run_length(np.array([1, 1, 0, 1, 0, 0, 1, 1, 1], bool)) == 2.0
    with pytest.raises(ValueError, match="no loss"):
        wl.mean_run_length(np.zeros(5, bool))


def test_decodable_by_hand() -> None:
    # GOP of 3 (I P P): the second frame misses its deadline, so the third cannot decode;
    # the next GOP starts with an I frame and decodes whole
    complete = np.array([True, False, True, True, True, True])
    assert wl.decodable(complete, 3).tolist() == [True, False, False, True, True, True]
    # a lost I frame takes its whole GOP with it, however complete the P frames are
    two = np.array([[False, True, True, True], [True, True, False, True]])
    assert wl.decodable(two, 2).tolist() == [[False, False, True, True],
                                             [True, True, False, False]]
    with pytest.raises(ValueError, match="multiple of gop"):
        wl.decodable(np.ones(5, bool), 3)
    with pytest.raises(TypeError, match="bool"):
        wl.decodable(np.ones(6), 3)


def test_video_stream_packets() -> None:
    v = wl.VideoStream(n_gops=2, gop=3, i_packets=2, p_packets=1, frame_interval=4,
                       deadline=5)
    pk = v.packets()
    assert pk["frame"].tolist() == [0, 0, 1, 2, 3, 3, 4, 5]
    assert pk["made"].tolist() == [0, 0, 4, 8, 12, 12, 16, 20]
    assert pk["due"].tolist() == [5, 5, 9, 13, 17, 17, 21, 25]
    assert pk["is_i"].tolist() == [True, True, False, False, True, True, False, False]
    assert v.n_slots == 25


def test_both_senders_deliver_everything_without_loss() -> None:
    lossless = [wl.GilbertElliott(0.1, 0.1, 0.0, 0.0)] * 3
    v = wl.VideoStream(n_gops=5)
    for protocol in (wl.layered(), wl.cross_layer(), wl.layered(rate=1)):
        assert wl.simulate(lossless, v, protocol).all()


def test_nothing_decodes_when_everything_is_lost() -> None:
    dead = [wl.GilbertElliott(0.1, 0.1, 1.0, 1.0)] * 2
    for protocol in (wl.layered(), wl.cross_layer()):
        assert not wl.simulate(dead, wl.VideoStream(n_gops=3), protocol).any()


def _layered_loop(bad: np.ndarray, u: np.ndarray, channel: wl.GilbertElliott,
                  v: wl.VideoStream, rate: int, retry_limit: int) -> list[bool]:
    """One row of the layered sender, packet by packet, for comparison."""
    pk = v.packets()
    n = len(pk["frame"])
    delivered, tries = [False] * n, [0] * n
    e = channel.losses(rate)
    for t in range(v.n_slots):
        queue = [j for j in range(n) if pk["made"][j] <= t < pk["due"][j]
                 and not delivered[j] and tries[j] <= retry_limit]
        for c, j in enumerate(queue[:rate]):
            tries[j] += 1
            if u[t, c] >= e[int(bad[t])]:
                delivered[j] = True
    complete = [all(delivered[j] for j in range(n) if pk["frame"][j] == f)
                for f in range(v.n_frames)]
    out, ok = [], False
    for f, c in enumerate(complete):
        ok = c and (ok or f % v.gop == 0) if f % v.gop else c
        out.append(ok)
    return out


@pytest.mark.parametrize("rate, retry_limit", [(1, 2), (2, 1), (2, 7)])
def test_layered_matches_a_loop_reference(rate: int, retry_limit: int) -> None:
    chans = [wl.equal_loss_channel(0.25, m) for m in (0.0, 0.8, 0.95)]
    v = wl.VideoStream(n_gops=8)
    got = wl.simulate(chans, v, wl.layered(rate, retry_limit), seed=5)
    bad, u = wl.sample_channel(chans, v.n_slots, seed=5)
    for r, c in enumerate(chans):
        assert got[r].tolist() == _layered_loop(bad[r], u[r], c, v, rate, retry_limit)
    assert not got.all()  # the example loses frames, so the comparison means something


def test_filter_and_rate_choice_by_hand() -> None:
    from labkit.infocomm.wireless import _filter_step, _rate_from_belief

    # Gilbert's channel: a loss proves the bad state; the prediction is then 1 - p_bg
    like_lost = np.array([[0.0, 1.0]])
    nxt = _filter_step(np.array([0.3]), like_lost, np.array([0.1]), np.array([0.25]))
    assert nxt == pytest.approx([0.75])
    # no ACK news: the belief moves one step towards pi_B = 0.1 / 0.35
    same = _filter_step(np.array([0.3]), np.ones((1, 2)), np.array([0.1]), np.array([0.25]))
    assert same == pytest.approx([0.3 * 0.75 + 0.7 * 0.1])
    # e = (0.02, 0.8): two packets win when good (2 * 0.98^2 > 0.98), one when bad
    ch = wl.GilbertElliott(0.1, 0.1, 0.02, 0.8)
    loss = np.stack([ch.losses(k)[None] for k in wl.RATES])
    assert _rate_from_belief(np.array([0.0, 1.0]), loss).tolist() == [2, 1]
    assert wl.best_fixed_rate(ch) == 2  # 2 (0.5 0.96 + 0.5 0.04) = 1.0 > 0.59
    # mostly bad (pi_B = 0.9 / 0.92): 2 (0.022 0.96 + 0.978 0.04) = 0.12 < 0.22 for one
    assert wl.best_fixed_rate(wl.GilbertElliott(0.9, 0.02, 0.02, 0.8)) == 1


def test_cross_layer_beats_layered_on_a_bursty_channel() -> None:
    chans = [wl.equal_loss_channel(0.3, 0.9)] * 16
    v = wl.VideoStream(n_gops=30)
    lay = wl.simulate(chans, v, wl.layered(), seed=2).mean()
    cross = wl.simulate(chans, v, wl.cross_layer(), seed=2).mean()
    assert cross > lay


@pytest.mark.parametrize("kwargs, match", [
    (dict(p_gb=1.2, p_bg=0.1), "p_gb must be a probability"),
    (dict(p_gb=0.1, p_bg=-0.1), "p_bg must be a probability"),
    (dict(p_gb=0.1, p_bg=0.1, loss_bad=2.0), "loss_bad must be a probability"),
    (dict(p_gb=0.0, p_bg=0.0), "never mix"),
])
def test_channel_rejects_bad_probabilities(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        wl.GilbertElliott(**kwargs)


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="p_gb must be a real number"):
        wl.GilbertElliott("0.1", 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="deadline must be > 0"):
        wl.VideoStream(n_gops=2, deadline=0)
    with pytest.raises(ValueError, match="deadline must be > 0"):
        wl.VideoStream(n_gops=2, deadline=-3)
    with pytest.raises(ValueError, match="loss must be a probability"):
        wl.equal_loss_channel(1.5, 0.5)
    with pytest.raises(ValueError, match="memory must be in"):
        wl.equal_loss_channel(0.2, 1.0)
    with pytest.raises(ValueError, match="between loss_good"):
        wl.equal_loss_channel(0.9, 0.5)
    with pytest.raises(ValueError, match="rate must be one of"):
        wl.layered(rate=3)
    with pytest.raises(ValueError, match="retry_limit must be"):
        wl.layered(retry_limit=-1)
    with pytest.raises(TypeError, match="channels must be"):
        wl.sample_channel([], 10)
    with pytest.raises(TypeError, match="video must be"):
        wl.simulate([wl.GilbertElliott(0.1, 0.1)], "video", wl.layered())  # type: ignore
    with pytest.raises(ValueError, match="never starts a loss burst"):
        wl.GilbertElliott(0.1, 0.1, 0.0, 0.0).mean_burst_length()


def test_lost_frames_break_the_rest_of_their_gop() -> None:
    from labkit.infocomm.wireless import _mark_broken

    # GOP of 3 (I of 2 packets, P, P), a frame every 2 slots, due 3 slots after it is made
    v = wl.VideoStream(n_gops=2, gop=3, i_packets=2, p_packets=1, frame_interval=2,
                       deadline=3)
    pk = v.packets()  # frames 0 0 1 2 3 3 4 5, due 3 3 5 7 9 9 11 13
    broken = np.zeros((2, v.n_frames), bool)
    delivered = np.zeros((2, len(pk["frame"])), bool)
    delivered[1, :2] = True  # row 1 got its I frame, row 0 did not
    _mark_broken(broken, delivered, pk, v, t=2)  # the I frame's last slot
    # row 0: frame 0 lost, and frame 1 (made at slot 2) refers to it
    assert broken[0].tolist() == [True, True, False, False, False, False]
    assert not broken[1].any()
    _mark_broken(broken, delivered, pk, v, t=4)  # frame 2 made at slot 4 inherits it
    assert broken[0].tolist() == [True, True, True, False, False, False]
    assert broken[1].tolist() == [False, True, True, False, False, False]  # frame 1 missed
    _mark_broken(broken, delivered, pk, v, t=6)  # frame 3 is an I frame: a fresh start
    assert broken[0, 3:].tolist() == [False, False, False]

