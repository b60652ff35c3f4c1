import pytest
import torch
from torchmetrics.functional.audio import permutation_invariant_training
from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio

from labkit.sequence import features as f


def test_si_snr_hand_example_and_scale_invariance():
    ref = torch.tensor([1.0, -1.0, 1.0, -1.0])
    noise = torch.tensor([1.0, 1.0, -1.0, -1.0])  # orthogonal, zero mean, same energy
    assert float(f.si_snr(ref + 0.1 * noise, ref)) == pytest.approx(20.0, abs=1e-3)
    assert float(f.si_snr(5.0 * (ref + 0.1 * noise), ref)) == pytest.approx(20.0, abs=1e-3)


def test_si_snr_and_pit_match_torchmetrics():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4, 2, 300, generator=g)
    est = ref.flip(1) + 0.5 * torch.randn(4, 2, 300, generator=g)
    est[0] = ref[0] + 0.3 * torch.randn(2, 300, generator=g)
    ours = f.si_snr(est, ref)
    theirs = scale_invariant_signal_noise_ratio(est, ref)
    assert torch.allclose(ours, theirs, atol=1e-3)
    best, perm = f.pit_si_snr(est, ref)
    tbest, tperm = permutation_invariant_training(
        est, ref, scale_invariant_signal_noise_ratio, eval_func="max")
    assert torch.allclose(best, tbest, atol=1e-3)
    assert torch.equal(perm, tperm)
    assert perm[0].tolist() == [0, 1] and perm[1].tolist() == [1, 0]


def test_si_snr_improvement_of_the_mixture_itself_is_zero():
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(3, 2, 200, generator=g)
    mix = ref.sum(1)
    imp = f.si_snr_improvement(mix[:, None].repeat(1, 2, 1), ref, mix)
    assert torch.allclose(imp, torch.zeros(3), atol=1e-4)
    assert (f.si_snr_improvement(ref, ref, mix) > 20.0).all()


def test_mel_filterbank_shape_and_peaks():
    fb = f.mel_filterbank(10, 256, 8000)
    assert fb.shape == (10, 129) and (fb >= 0).all() and fb.max() <= 1.0
    peaks = fb.argmax(1)
    assert (peaks[1:] > peaks[:-1]).all()  # centres increase


def test_log_mel_finds_a_tone():
    t = torch.arange(4000) / 8000.0
    low, high = torch.sin(2 * torch.pi * 300 * t), torch.sin(2 * torch.pi * 3000 * t)
    lm = f.log_mel(torch.stack([low, high]), 8000)
    assert lm.shape == (2, (4000 - 256) // 80 + 1, 40)
    assert lm[0].mean(0).argmax() < lm[1].mean(0).argmax()


def test_bad_inputs():
    with pytest.raises(ValueError, match="shapes differ"):
        f.si_snr(torch.zeros(2, 10), torch.zeros(2, 11))
    with pytest.raises(ValueError, match="shorter than one STFT frame"):
        f.log_mel(torch.zeros(100), 8000)
    with pytest.raises(ValueError, match="sample-rate mismatch"):
        f.log_mel(torch.zeros(400), 16000, expected_sr=8000)
    with pytest.raises(ValueError, match="mixture and source shapes differ"):
        f.si_snr_improvement(torch.zeros(2, 2, 10), torch.zeros(2, 2, 10), torch.zeros(2, 9))
    with pytest.raises(ValueError, match="f_min"):
        f.mel_filterbank(4, 64, 8000, f_min=5000.0)
