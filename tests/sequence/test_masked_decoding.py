"""Masked parallel decoding: residual VQ, masks, schedule, decoders and bad arguments."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.sequence import masked_decoding as md
from labkit.sequence.voices import PHONES, make_speakers


def _vq() -> md.ResidualVQ:
    return md.ResidualVQ((torch.tensor([[0.0, 0.0], [10.0, 0.0]]),
                          torch.tensor([[0.0, 0.0], [0.0, 1.0]])))


def test_residual_vq_by_hand_and_fit():
    vq = _vq()
    mel = torch.tensor([[9.0, 0.9], [0.2, -0.1]])
    codes = vq.encode(mel)
    assert codes.tolist() == [[1, 1], [0, 0]]
    assert vq.decode(codes).tolist() == [[10.0, 1.0], [0.0, 0.0]]
    frames = torch.randn(400, 6, generator=torch.Generator().manual_seed(0))
    fitted = md.fit_residual_vq(frames, 8, seed=0)
    err1 = (fitted.codebooks[0][fitted.encode(frames)[:, 0]] - frames).abs().mean()
    err2 = (fitted.decode(fitted.encode(frames)) - frames).abs().mean()
    assert err2 < err1  # the second level refines the first
    with pytest.raises(ValueError, match="k"):
        md.fit_residual_vq(frames, 1)
    with pytest.raises(ValueError, match="bins"):
        vq.encode(torch.zeros(3, 5))


def test_random_mask_and_ratio_bounds():
    m = md.random_mask(10, 0.25, torch.Generator().manual_seed(0))
    assert m.dtype == torch.bool and int(m.sum()) == 3  # ceil(2.5)
    assert int(md.random_mask(7, 1.0).sum()) == 7
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="mask ratio"):
            md.random_mask(10, bad)


def test_cosine_schedule_ends_with_nothing_masked_and_decreases():
    n, steps = 128, 8
    left = [md.mask_schedule(s, steps, n) for s in range(steps + 1)]
    assert left[0] == n and left[-1] == 0
    assert all(a >= b for a, b in zip(left, left[1:]))
    assert left[4] == math.floor(n * math.cos(math.pi / 4))


def _tiny(causal: bool) -> md.CodeDecoder:
    return md.CodeDecoder(4, causal=causal, block_size=12, n_layer=1, n_head=2, d_model=16,
                          d_ff=16, init_seed=0)


def test_masked_decode_counts_passes_and_fills_every_code():
    model = _tiny(False).eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(4, (2, 3, 2), generator=g)
    phones = torch.randint(len(PHONES), (2, 11), generator=g)
    for steps in (1, 3, 8):
        model.passes = 0
        out = md.masked_decode(model, prompt, phones, steps)
        assert out.shape == (2, 8, 2) and bool((out >= 0).all()) and bool((out < 4).all())
        assert model.passes == 2 * steps  # level 1, then level 2
    model.passes = 0
    ar = md.ar_decode(_tiny(True).eval(), prompt, phones)
    assert ar.shape == (2, 8, 2)
    for bad in (0, 9):
        with pytest.raises(ValueError, match=r"steps \(N\) must lie in \[1, frames=8\]"):
            md.masked_decode(model, prompt, phones, bad)
    with pytest.raises(TypeError, match="model"):
        md.masked_decode(object(), prompt, phones, 2)


def test_masked_decoder_sees_the_future_and_the_ar_one_does_not():
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(4, (1, 10, 2), generator=g)
    phones = torch.randint(len(PHONES), (1, 10), generator=g)
    later = codes.clone()
    later[0, -1, 0] = (codes[0, -1, 0] + 1) % 4
    for causal in (True, False):
        model = _tiny(causal).eval()
        same = torch.allclose(model(codes, phones)[0, 0], model(later, phones)[0, 0])
        assert same == causal


def test_training_lowers_the_loss_and_ar_beats_nothing_on_a_copy_task():
    # codes equal to the phone id: both decoders must learn to read the phones
    g = torch.Generator().manual_seed(0)
    phones = torch.randint(4, (64, 12), generator=g)
    codes = torch.stack([phones, phones], -1)
    for causal in (True, False):
        model = md.CodeDecoder(4, causal=causal, block_size=12, n_layer=1, n_head=2,
                               d_model=16, d_ff=32, init_seed=0)
        losses = md.train_decoder(model, codes, phones, 2, steps=60, batch=16, lr=1e-2)
        assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
        pred = (md.masked_decode(model, codes[:8, :2], phones[:8], 2) if not causal
                else md.ar_decode(model, codes[:8, :2], phones[:8]))
        assert md.token_accuracy(pred, codes[:8, 2:]) > 0.9
        if causal:
            tf = md.ar_teacher_forced(model, codes[:8], phones[:8], 2)
            assert md.token_accuracy(tf, codes[:8, 2:]) > 0.9
        else:
            with pytest.raises(TypeError, match="causal"):
                md.ar_teacher_forced(model, codes[:8], phones[:8], 2)


def test_phone_lookup_and_accuracy():
    phones = torch.tensor([[0, 0, 1, 1, 1]])
    codes = torch.tensor([[[3, 0], [3, 1], [2, 2], [2, 2], [1, 2]]])
    table = md.phone_lookup(codes, phones)
    assert table[0].tolist()[0] == 3 and table[1].tolist() == [2, 2]
    assert md.token_accuracy(table[phones], codes) == pytest.approx(8 / 10)  # 3 of 4 codes of phone 0, 5 of 6 of phone 1
    with pytest.raises(ValueError, match="shapes differ"):
        md.token_accuracy(codes[:, :2], codes)


def test_tts_data_shapes_and_bad_voices():
    voices = make_speakers(2, 0)
    data = md.make_tts_data(voices, 2, 0, frames=20, prompt=5)
    assert data.mel.shape == (2, 25, 40) and data.phones.shape == (2, 25)
    assert data.prompt == 5 and float(data.mel.min()) >= -8.0
    again = md.make_tts_data(voices, 2, 0, frames=20, prompt=5)
    assert torch.equal(data.mel, again.mel)
    with pytest.raises(TypeError, match="voices"):
        md.make_tts_data([], 2, 0)


def test_timer_noise_is_small_and_checks_its_clock():
    assert 0.0 <= md.timer_noise("wall") < 1e-3
    assert 0.0 <= md.timer_noise("cpu", 11) < 0.1
    with pytest.raises(ValueError, match="clock"):
        md.timer_noise("sundial")
