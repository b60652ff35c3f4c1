import pytest
import torch

from labkit.sequence import separation as sp

SMALL = sp.SeparatorConfig(n_filters=8, dim=8, hidden=16, qk_dim=4, n_layers=1,
                           fsmn_hidden=8, lorder=3)


def test_shapes_and_stride():
    model = sp.Separator(SMALL)
    assert model.encoder.stride == (8,) and model.encoder.kernel_size == (32,)
    y = model(torch.randn(3, 401))
    assert y.shape == (3, 2, 401)


def test_the_memory_is_local_and_dilated():
    # receptive field of two dense layers with kernel 2 * 3 - 1 and dilations 1, 2: 2 + 4 = 6
    mem = sp.DilatedDenseMemory(4, lorder=3, depth=2).eval()
    # the per-channel norms (instance norms) see the whole clip: take them out here
    mem.norms = torch.nn.ModuleList(torch.nn.Identity() for _ in range(2))
    x = torch.zeros(1, 4, 40)
    x[0, :, 20] = 1.0
    y = mem(x) - mem(torch.zeros_like(x))
    changed = (y.abs().sum(1)[0] > 1e-7).nonzero().flatten()
    assert changed.min() >= 20 - 6 and changed.max() <= 20 + 6
    assert changed.min() <= 20 - 5 and changed.max() >= 20 + 5


def test_fsmn_block_has_bottleneck_gates_and_dense_inputs():
    blk = sp.GatedFSMNBlock(dim=16, hidden=8, lorder=3, depth=3)
    assert blk.bottleneck[0].out_features == 8 and blk.output.in_features == 8
    assert [c.in_channels for c in blk.memory.convs] == [8, 16, 24]
    assert [c.dilation[0] for c in blk.memory.convs] == [1, 2, 4]


def test_matched_baseline_is_within_five_percent():
    cfg = sp.SeparatorConfig()
    base = sp.matched_baseline(cfg)
    a, b = sp.n_params(sp.Separator(cfg)), sp.n_params(sp.Separator(base))
    assert not base.fsmn and base.hidden > cfg.hidden
    assert abs(a - b) / a < 0.05
    assert abs(a - sp.n_params(sp.Separator(sp.SeparatorConfig(fsmn=False)))) / a > 0.05


def test_training_improves_a_tiny_problem():
    g = torch.Generator().manual_seed(0)
    t = torch.arange(400) / 8000.0
    f = 200 + 600 * torch.rand(16, 2, 1, generator=g)
    src = torch.sin(2 * torch.pi * f * t)
    src[:, 1] = torch.sign(src[:, 1])
    mix = src.sum(1)
    torch.manual_seed(0)
    model = sp.Separator(SMALL)
    before = sp.evaluate(model, mix, src).mean()
    sp.train_separator(model, mix, src, steps=40, batch=8, lr=1e-2)
    assert sp.evaluate(model, mix, src).mean() > before + 1.0


def test_bad_inputs():
    model = sp.Separator(SMALL)
    with pytest.raises(ValueError, match="sample-rate mismatch"):
        model.separate(torch.zeros(1, 400), 16000)
    with pytest.raises(ValueError, match="shorter than one encoder frame"):
        model(torch.zeros(1, 10))
    with pytest.raises(ValueError, match="shapes differ"):
        sp.train_separator(model, torch.zeros(4, 400), torch.zeros(4, 2, 399), steps=1)
    with pytest.raises(ValueError, match="kernel"):
        sp.Separator(sp.SeparatorConfig(kernel=4))
    with pytest.raises(ValueError, match="crop"):
        sp.train_separator(model, torch.zeros(4, 400), torch.zeros(4, 2, 400), steps=1,
                           crop=401)
    with pytest.raises(TypeError, match="cfg"):
        sp.Separator({})
    with pytest.raises(ValueError, match="fsmn"):
        sp.matched_baseline(sp.SeparatorConfig(fsmn=False))


def test_low_high_mixtures_sum_two_unit_power_voices():
    mix, src = sp.low_high_mixtures(3, seed=0, seconds=0.25)
    assert mix.shape == (3, 2000) and src.shape == (3, 2, 2000)
    assert torch.allclose(src.sum(1), mix, atol=1e-5)
    assert torch.allclose(src.pow(2).mean(-1), torch.ones(3, 2), atol=1e-4)
    again, _ = sp.low_high_mixtures(3, seed=0, seconds=0.25)
    assert torch.equal(mix, again)
    with pytest.raises(ValueError, match="seconds"):
        sp.low_high_mixtures(1, seed=0, seconds=0.0)


def test_training_windows_are_crops_and_warmup_ramps_the_rate():
    model = sp.Separator(SMALL)
    mix = torch.randn(4, 800)
    src = torch.randn(4, 2, 800)
    res = sp.train_separator(model, mix, src, steps=3, batch=2, crop=200, warmup=2)
    assert len(res.losses) == 3 and all(map(lambda x: x == x, res.losses))
