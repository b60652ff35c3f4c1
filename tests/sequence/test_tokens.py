"""Tests of the speech tokens: normalised log-mel vectors, KMeans units, dedup, BPE, bits."""

import math

import numpy as np
import pytest
import torch

from labkit.lm.gpt import GPT, GPTConfig
from labkit.sequence.tokens import (BPE, KMeansTokens, dedup, fit_kmeans, lm_bits, make_lexicon,
                                    speech_corpus, speech_vectors, train_bpe, train_token_lm,
                                    unigram_bits)
from labkit.sequence.voices import make_speakers, utterance


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is the fastest, and two spin against each other under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_dedup_by_hand_and_on_empty_input():
    units, runs = dedup(np.array([3, 3, 5, 3, 3, 3]))
    assert units.tolist() == [3, 5, 3] and runs.tolist() == [2, 1, 3]
    assert np.repeat(units, runs).tolist() == [3, 3, 5, 3, 3, 3]
    units, runs = dedup(np.array([], dtype=np.int64))
    assert units.size == 0 and runs.size == 0


def test_bpe_by_hand():
    # (0, 1) occurs four times -> unit 3; then (3, 2) twice -> unit 4; then no pair repeats
    bpe = train_bpe([np.array([0, 1, 0, 1]), np.array([0, 1, 2, 0, 1, 2])], base=3, merges=10)
    assert bpe.merges == [(0, 1), (3, 2)] and bpe.vocab_size == 5
    assert bpe.encode([0, 1, 2, 0, 1, 2]).tolist() == [4, 4]
    assert bpe.encode([2, 0, 1, 0]).tolist() == [2, 3, 0]
    assert bpe.decode([4, 3, 0]).tolist() == [0, 1, 2, 0, 1, 0]


def test_overlapping_pairs_merge_left_to_right():
    bpe = BPE(2, [(1, 1)])
    assert bpe.encode([1, 1, 1]).tolist() == [2, 1]
    assert bpe.encode([1, 1, 1, 1]).tolist() == [2, 2]
    assert bpe.decode([2, 1]).tolist() == [1, 1, 1]


def test_pairs_never_cross_sequences():
    # (1, 0) only occurs across the boundary between the two sequences
    bpe = train_bpe([np.array([0, 1]), np.array([0, 1])], base=2, merges=5)
    assert bpe.merges == [(0, 1)]


def test_bpe_round_trip_shortens_and_truncation_matches_a_smaller_budget():
    rng = np.random.default_rng(0)
    words = [rng.integers(8, size=int(rng.integers(2, 5))) for _ in range(6)]
    seqs = [np.concatenate([words[i] for i in rng.integers(6, size=5)]) for _ in range(40)]
    bpe = train_bpe(seqs, base=8, merges=30)
    assert len(bpe.merges) > 5
    lengths = []
    for m in (0, 5, 15, len(bpe.merges)):
        small = bpe.truncated(m)
        assert small.merges == train_bpe(seqs, base=8, merges=m).merges
        enc = [small.encode(s) for s in seqs]
        assert all(np.array_equal(small.decode(e), s) for e, s in zip(enc, seqs))
        lengths.append(sum(len(e) for e in enc))
    assert lengths[0] == sum(len(s) for s in seqs)
    assert all(a > b for a, b in zip(lengths, lengths[1:]))


def _stream_corpus(n, seed):
    lex = make_lexicon(12, seed=5)
    return speech_corpus(n, seed, lexicon=lex, n_words=3, n_speakers=4)


def test_bpe_lengths_agree_with_hf_tokenizers():
    from tokenizers import Tokenizer, models, trainers

    train, test = _stream_corpus(60, 0), _stream_corpus(20, 1)
    km = fit_kmeans(torch.cat(train.frames), k=24, seed=0)
    units = [dedup(km.encode(f))[0] for f in train.frames]
    held = [dedup(km.encode(f))[0] for f in test.frames]
    merges = 60
    ours = train_bpe(units, base=km.k, merges=merges)
    assert len(ours.merges) == merges
    # each unit id becomes one private-use character; each utterance is one word
    chars = [chr(0xE000 + i) for i in range(km.k)]
    hf = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=km.k + merges, initial_alphabet=chars,
                                  min_frequency=2, show_progress=False, special_tokens=[])
    hf.train_from_iterator(["".join(chars[u] for u in s) for s in units], trainer)
    assert hf.get_vocab_size() == km.k + merges
    ours_len = sum(len(ours.encode(s)) for s in held)
    hf_len = sum(len(hf.encode("".join(chars[u] for u in s)).ids) for s in held)
    raw_len = sum(len(s) for s in held)
    assert ours_len < 0.9 * raw_len
    assert abs(ours_len - hf_len) <= 0.03 * hf_len, (ours_len, hf_len, raw_len)


def test_bad_arguments_are_refused():
    frames = torch.randn(100, 4)
    with pytest.raises(ValueError, match="k"):
        fit_kmeans(frames, k=1)
    with pytest.raises(ValueError, match="merges"):
        train_bpe([np.array([0, 1])], base=2, merges=-1)
    with pytest.raises(ValueError, match="merges"):
        BPE(2, []).truncated(-3)
    with pytest.raises(ValueError, match="base"):
        train_bpe([np.array([0, 5])], base=2, merges=1)
    with pytest.raises(ValueError, match="base"):
        BPE(2, []).encode([2])
    with pytest.raises(ValueError, match="features"):
        KMeansTokens(torch.zeros(3, 5)).encode(frames)
    with pytest.raises(ValueError, match="lexicon"):
        speech_corpus(2, 0, lexicon=[])
    with pytest.raises(ValueError, match="n_words"):
        make_lexicon(0, seed=0)
    with pytest.raises(ValueError, match="wave"):
        speech_vectors(torch.zeros(2, 400), 8000)
    with pytest.raises(ValueError, match="shorter than one STFT frame"):
        speech_vectors(np.zeros(100), 8000)
    with pytest.raises(ValueError, match="vocab_size"):
        train_token_lm(torch.arange(100) % 7, 5, steps=1, block=8)
    with pytest.raises(ValueError, match="sample-rate mismatch"):
        from labkit.sequence.features import log_mel
        log_mel(torch.zeros(400), 16000, expected_sr=8000)


def test_kmeans_tokens_are_nearest_centroids():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    frames = (centres[:, None] + 0.1 * torch.randn(3, 50, 2, generator=gen)).reshape(-1, 2)
    km = fit_kmeans(frames, k=3, seed=0)
    tok = km.encode(frames)
    # each blob gets one token, different blobs different tokens
    assert all(len(set(tok[i * 50:(i + 1) * 50].tolist())) == 1 for i in range(3))
    assert len(set(tok.tolist())) == 3
    brute = ((frames[:, None] - km.centroids[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(tok, brute)


def test_speech_vectors_are_normalised_per_band():
    spk = make_speakers(1, seed=0)[0]
    u = utterance(spk, ["a", "i", "sil", "o"], seed=1)
    x = speech_vectors(u.wave, u.sr)
    assert x.shape[1] == 40 and x.shape[0] == (len(u.wave) - 256) // 80 + 1
    assert torch.allclose(x.mean(0), torch.zeros(40), atol=1e-4)
    assert torch.allclose(x.std(0), torch.ones(40), atol=1e-3)


def test_corpus_labels_line_up_with_frames():
    c = _stream_corpus(5, 3)
    assert len(c) == 5 and len(c.speakers) == 5
    for f, p, s in zip(c.frames, c.phones, c.seconds):
        assert len(f) == len(p) and abs((len(f) - 1) * 80 + 256 - s * 8000) < 80
    assert make_lexicon(4, seed=2) == make_lexicon(4, seed=2)


def test_lm_bits_of_a_uniform_model_by_hand():
    cfg = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, d_model=8, d_ff=8)
    model = GPT(cfg, init_seed=0).eval()
    torch.nn.init.zeros_(model.head.weight)
    if model.head.bias is not None:
        torch.nn.init.zeros_(model.head.bias)
    stream = torch.arange(30) % 10
    # every token but the first is predicted once, at log2(10) bits
    assert lm_bits(model, stream) == pytest.approx(29 * math.log2(10), rel=1e-5)


def test_token_lm_learns_a_periodic_stream():
    stream = torch.tensor([0, 1, 2, 3, 2, 1] * 60)
    model, losses = train_token_lm(stream, 4, steps=60, block=16, batch=8, d_model=32)
    assert len(losses) == 60 and losses[-1] < 0.5 * losses[0]
    bits = lm_bits(model, stream) / (stream.numel() - 1)
    assert bits < 0.5 * math.log2(4)


def test_unigram_bits_by_hand():
    # counts [1, 3] + 0.5 -> p = [0.3, 0.7]; test tokens after the first: 1, 0
    bits = unigram_bits(np.array([0, 1, 1, 1]), np.array([0, 1, 0]), 2)
    assert bits == pytest.approx(-math.log2(0.7) - math.log2(0.3))
    with pytest.raises(ValueError, match="vocab_size"):
        unigram_bits(np.array([0, 2]), np.array([0]), 2)
