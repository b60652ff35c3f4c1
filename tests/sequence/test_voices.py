import numpy as np
import pytest

from labkit.sequence import voices as v


def test_speakers_are_seeded_and_in_range():
    a, b = v.make_speakers(5, 3), v.make_speakers(5, 3)
    assert a == b
    assert a != v.make_speakers(5, 4)
    for s in a:
        assert 85.0 <= s.f0_low < s.f0_high and 0.85 <= s.formant_scale <= 1.2


def test_utterance_has_the_speakers_pitch_and_an_alignment():
    spk = v.Speaker(f0_low=120.0, f0_high=120.0, formant_scale=1.0, jitter=0.0)
    u = v.utterance(spk, ["a", "a", "a", "a"], seed=0)
    assert u.sr == 8000 and np.abs(u.wave).max() == pytest.approx(1.0)
    # hand check: the autocorrelation peaks at one pitch period, 8000 / 120 = 66.7 samples
    x = u.wave - u.wave.mean()
    ac = np.correlate(x, x, "full")[len(x) - 1:]
    assert 60 <= int(np.argmax(ac[40:100])) + 40 <= 72
    assert len(u.alignment) == -(-len(u.wave) // v.HOP)
    assert set(u.alignment) == {v.PHONE_IDS["a"]}


def test_pause_is_silent_and_aligned():
    spk = v.make_speakers(1, 0)[0]
    u = v.utterance(spk, ["i", "sil", "o"], seed=1, seconds=0.6)
    assert len(u.wave) == 4800 and len(u.alignment) == 60
    sil = np.flatnonzero(u.alignment == v.PHONE_IDS["sil"])
    assert sil.size > 0
    first_sil = sil[0] * v.HOP
    # energy in the middle of the pause is far below the voiced part's
    assert np.mean(u.wave[first_sil + 200:first_sil + 400] ** 2) < 1e-2 * np.mean(u.wave ** 2)


def test_reverberation_keeps_length_and_spreads_energy():
    x = np.zeros(800)
    x[0] = 1.0
    y = v.reverberate(x, 8000, 0.05, seed=0)
    assert y.shape == x.shape and y[0] == 1.0
    assert np.abs(y[1:400]).sum() > 0.1 and np.abs(y[400:]).sum() < 1e-9  # 0.05 s = 400 taps


def test_mix_scales_sources_and_adds_noise():
    spk = v.make_speakers(2, 0)
    us = [v.utterance(s, ["a", "e", "i"], k, seconds=0.3) for k, s in enumerate(spk)]
    m, s = v.mix(us, 8000)
    assert np.allclose(np.sqrt((s ** 2).mean(-1)), 1.0) and np.allclose(m, s.sum(0))
    noisy, _ = v.mix(us, 8000, snr_db=0.0, seed=0)
    assert np.mean((noisy - m) ** 2) == pytest.approx(np.mean(m ** 2), rel=0.1)


def test_two_voice_mixtures_shapes():
    m, s = v.two_voice_mixtures(3, seed=0)
    assert m.shape == (3, 4000) and s.shape == (3, 2, 4000)
    assert np.allclose(m, s.sum(1))


def test_bad_inputs():
    spk = v.make_speakers(1, 0)[0]
    with pytest.raises(ValueError, match="unknown phones"):
        v.utterance(spk, ["a", "zz"], 0)
    with pytest.raises(ValueError, match="phones"):
        v.utterance(spk, [], 0)
    with pytest.raises(TypeError, match="speaker"):
        v.utterance("x", ["a"], 0)
    with pytest.raises(ValueError, match="n"):
        v.make_speakers(0, 0)
    with pytest.raises(ValueError, match="rt60"):
        v.reverberate(np.zeros(10), 8000, 0.0, 0)
    a = v.utterance(spk, ["a"], 0, seconds=0.1)
    b = v.utterance(spk, ["a"], 0, sr=16000, seconds=0.05)
    with pytest.raises(ValueError, match="sample-rate mismatch"):
        v.mix([a, b], 8000)
    c = v.utterance(spk, ["a"], 0, seconds=0.2)
    with pytest.raises(ValueError, match="equal lengths"):
        v.mix([a, c], 8000)
