"""Tests of the paraphrase grammar and the spiral encoder-decoder text diffusion."""

import pytest
import torch

from labkit.diffusion.schedule import NoiseSchedule
from labkit.sequence.text_diffusion import (VOCAB, _paraphrase, SpiralEncDec, TextDiffusionConfig, decode, diffusion_loss,
                                            encode, exact_match, make_paraphrases, round_to_words, sample,
                                            token_accuracy, train_text_diffusion)


def test_vocabulary_has_sixty_distinct_words():
    assert len(VOCAB) == 60 and len(set(VOCAB)) == 60 and VOCAB[0] == "<pad>"


def test_hand_checked_paraphrase_flips_voice_and_swaps_synonyms():
    data = make_paraphrases(200, seed=3)
    for s, t in zip(data.source, data.target):
        src, tgt = decode(s).split(), decode(t).split()
        if "was" in src:  # passive source -> active target, same content
            assert "was" not in tgt and len(tgt) == len(src) - 2
        else:
            assert tgt[tgt.index("was") + 2] == "by" and len(tgt) == len(src) + 2
    # by hand: active "the dog chased a cat" -> "a kitty was pursued by the hound", and back
    assert _paraphrase(["the", "dog"], "chased", ["a", "cat"], False) == "a kitty was pursued by the hound".split()
    assert _paraphrase(["the", "big", "dog"], "saw", ["a", "cat"], True) == "the large hound spotted a kitty".split()


def test_pairs_are_seeded_and_within_sixteen_tokens():
    a, b = make_paraphrases(50, seed=1), make_paraphrases(50, seed=1)
    assert torch.equal(a.source, b.source) and torch.equal(a.target, b.target)
    assert not torch.equal(a.source, make_paraphrases(50, seed=2).source)
    assert max(len(decode(r).split()) for r in torch.cat([a.source, a.target])) <= 11
    assert make_paraphrases(4, length=16).source.shape == (4, 16)


def test_encode_decode_round_trip_and_unknown_word():
    ids = encode("the big dog saw a cat", 12)
    assert ids.shape == (12,) and decode(ids) == "the big dog saw a cat"
    with pytest.raises(ValueError, match="unknown word 'zebra'"):
        encode("the zebra saw a cat")
    with pytest.raises(ValueError, match="length"):
        encode("the dog saw a cat", 3)
    with pytest.raises(ValueError, match="length"):
        encode("the dog", 17)
    with pytest.raises(TypeError, match="words"):
        encode(5)


def test_spiral_and_plain_have_equal_parameters_and_differ_in_output():
    cfg = TextDiffusionConfig(d_model=16, emb_dim=8, n_heads=2)
    spiral = SpiralEncDec(cfg, init_seed=0)
    plain = SpiralEncDec(TextDiffusionConfig(spiral=False, d_model=16, emb_dim=8, n_heads=2), init_seed=0)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(spiral) == n(plain)
    data = make_paraphrases(3, seed=0)
    x = torch.randn(3, 12, 8)
    t = torch.tensor([0, 5, 9])
    assert not torch.allclose(spiral(x, t, data.source), plain(x, t, data.source))


def test_spiral_encoder_reads_the_target_and_plain_encoder_does_not():
    """In the plain model the encoder output ignores x_t; in the spiral one it depends on it."""
    for spiral in (True, False):
        m = SpiralEncDec(TextDiffusionConfig(spiral=spiral, d_model=16, emb_dim=8, n_heads=2, n_layers=2))
        seen = []
        m.dec[-1].register_forward_hook(lambda mod, inp, out: seen.append(inp[1].detach()))
        src = make_paraphrases(2, seed=0).source
        t = torch.tensor([3, 3])
        m(torch.randn(2, 12, 8), t, src)
        m(torch.randn(2, 12, 8), t, src)
        same = torch.allclose(seen[0], seen[1])
        assert same is (not spiral)


def test_rounding_picks_the_nearest_embedding():
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    x = torch.tensor([[[0.9, 0.1], [0.1, 1.5], [-0.2, 0.0]]])
    assert round_to_words(x, emb).tolist() == [[1, 2, 0]]


def test_metrics_hand_checked_and_bad_shapes():
    p = torch.tensor([[1, 2, 3], [4, 5, 6]])
    t = torch.tensor([[1, 2, 0], [4, 5, 6]])
    assert token_accuracy(p, t) == pytest.approx(5 / 6)
    assert exact_match(p, t) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="pred and target"):
        token_accuracy(p, t[:, :2])


def test_loss_is_finite_and_sampler_returns_ids_of_the_vocabulary():
    cfg = TextDiffusionConfig(d_model=16, emb_dim=8, n_heads=2, n_steps=20)
    data = make_paraphrases(8, seed=0)
    model = SpiralEncDec(cfg)
    sched = NoiseSchedule(20, "cosine")
    loss = diffusion_loss(model, sched, data.source, data.target, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.item() > 0
    out = sample(model, sched, data.source, 4)
    assert out.shape == data.source.shape and out.dtype == torch.int64
    assert int(out.min()) >= 0 and int(out.max()) < len(VOCAB)
    assert torch.equal(out, sample(model, sched, data.source, 4))
    with pytest.raises(ValueError, match="n_sample"):
        sample(model, sched, data.source, 21)
    with pytest.raises(ValueError, match="source and target"):
        diffusion_loss(model, sched, data.source, data.target[:, :5])


def test_training_learns_the_paraphrase_beyond_copying():
    data = make_paraphrases(1000, seed=0)
    cfg = TextDiffusionConfig(d_model=32, n_heads=2, n_layers=1, n_steps=50)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster and the run is reproducible
    try:
        model, sched, losses = train_text_diffusion(cfg, data, steps=300, batch=32, lr=1e-2, seed=0)
    finally:
        torch.set_num_threads(threads)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    test = make_paraphrases(64, seed=9)
    pred = sample(model, sched, test.source, 10)
    assert token_accuracy(pred, test.target) > token_accuracy(test.source, test.target)


def test_config_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_heads"):
        TextDiffusionConfig(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="length"):
        TextDiffusionConfig(length=17)
    with pytest.raises(TypeError, match="spiral"):
        TextDiffusionConfig(spiral=1)
    with pytest.raises(ValueError, match="steps"):
        train_text_diffusion(TextDiffusionConfig(), make_paraphrases(4), steps=0)
