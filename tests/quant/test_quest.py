"""labkit.quant.quest: time-embedding layers, per-layer sensitivity, selection, selective finetuning."""

from __future__ import annotations

import pytest
import torch

from labkit.diffusion import NoiseSchedule, TinyUNet, UNetConfig
from labkit.quant import quant_layers
from labkit.quant.ptq4dm import CalibrationSet, ptq_model, sampling_pool
from labkit.quant.quest import (layer_sensitivity, prediction_error, random_layers, select_layers,
                                selective_finetune, time_embedding_layers)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


@pytest.fixture(scope="module")
def setup():
    model = TinyUNet(UNetConfig(base_channels=8, time_dim=16, groups=4), init_seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    model.eval()
    pool = sampling_pool(model, NoiseSchedule(n_steps=50), n=8, steps=4, generator=torch.Generator().manual_seed(0))
    data = pool.flatten()  # 32 inputs
    q = ptq_model(model, data, w_bits=3, a_bits=4)
    return model, q, data


def test_time_embedding_layers(setup):
    model, q, _ = setup
    names = time_embedding_layers(q)
    n_blocks = len(model.res_blocks())
    assert names[:2] == ["time_mlp.0", "time_mlp.2"] and len(names) == 2 + n_blocks
    assert all(n.endswith("emb_proj") for n in names[2:])


def test_sensitivity_matches_quantizing_one_layer_by_hand(setup):
    model, q, data = setup
    sens = layer_sensitivity(q, data, batch_size=10)
    layers = quant_layers(q)
    assert set(sens.layers) == set(layers) and list(sens.error) == sorted(sens.error, reverse=True)
    assert all(w.mode == "quant" for w in layers.values())  # restored
    top = sens.layers[0]
    with torch.no_grad():
        ref = model(data.x, data.t, data.y)
        for name, w in layers.items():
            w.mode = "quant" if name == top else "float"
        out = q(data.x, data.t, data.y)
        for w in layers.values():
            w.mode = "quant"
    assert sens.error[0] == pytest.approx(float((out - ref).pow(2).sum() / ref.pow(2).sum()), rel=1e-4)
    assert sens.top(3, exclude=[top]) == list(sens.layers[1:4])


def test_prediction_error_by_hand(setup):
    model, q, data = setup
    assert prediction_error(model, model, data).total == 0.0
    pe = prediction_error(q, model, data, batch_size=7)
    with torch.no_grad():
        ref, out = model(data.x, data.t, data.y), q(data.x, data.t, data.y)
    assert pe.total == pytest.approx(float((out - ref).pow(2).sum() / ref.pow(2).sum()), rel=1e-5)
    assert pe.t.tolist() == sorted(set(data.t.tolist()), reverse=True)
    last = data.t == 0
    assert float(pe.per_step[-1]) == pytest.approx(float((out - ref)[last].pow(2).sum() / ref[last].pow(2).sum()),
                                                   rel=1e-4)


def test_select_and_random_layers(setup):
    _, q, data = setup
    sens = layer_sensitivity(q, data)
    sel = select_layers(q, sens, top_k=2)
    time_layers = time_embedding_layers(q)
    assert sel[: len(time_layers)] == time_layers and len(set(sel)) == len(time_layers) + 2
    assert sel[-2:] == sens.top(2, exclude=time_layers)
    r = random_layers(q, 5, exclude=sel, generator=torch.Generator().manual_seed(0))
    assert len(set(r)) == 5 and not set(r) & set(sel)
    assert r == random_layers(q, 5, exclude=sel, generator=torch.Generator().manual_seed(0))
    layers = quant_layers(q)
    budget = 3000
    rp = random_layers(q, n_params=budget, generator=torch.Generator().manual_seed(0))
    used = sum(p.numel() for n in rp for p in layers[n].inner.parameters())
    smallest_left = min(sum(p.numel() for p in layers[n].inner.parameters()) for n in layers if n not in rp)
    assert used <= budget < used + smallest_left  # every layer left out no longer fits


def test_finetune_trains_only_the_chosen_layers_and_lowers_the_loss(setup):
    model, q, data = setup
    chosen = ["time_mlp.2", "down.0.0.conv1"]
    before = {k: v.clone() for k, v in q.state_dict().items()}
    res = selective_finetune(q, model, data, chosen, steps=40, lr=3e-3, batch_size=16,
                             generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in before.items())  # the input model is untouched
    after = res.model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed == {f"{n}.inner.{p}" for n in chosen for p in ("weight", "bias")}
    assert res.n_params == sum(p.numel() for n in chosen for p in quant_layers(q)[n].inner.parameters())
    assert len(res.losses) == 40 and sum(res.losses[-10:]) < sum(res.losses[:10])
    assert not any(p.requires_grad for p in res.model.parameters())


def test_bad_arguments(setup):
    model, q, data = setup
    empty = CalibrationSet(x=data.x[:0], t=data.t[:0], y=data.y[:0], strategy="all")
    with pytest.raises(ValueError, match="QuantWrapper"):
        time_embedding_layers(model)
    with pytest.raises(ValueError, match="empty"):
        layer_sensitivity(q, empty)
    with pytest.raises(ValueError, match="empty"):
        prediction_error(q, model, empty)
    sens = layer_sensitivity(q, data)
    with pytest.raises(ValueError, match="top_k"):
        select_layers(q, sens, top_k=-1)
    with pytest.raises(ValueError, match="exactly one"):
        random_layers(q, 2, n_params=100)
    with pytest.raises(ValueError, match="exactly one"):
        random_layers(q)
    with pytest.raises(ValueError, match="k must be"):
        random_layers(q, len(quant_layers(q)) + 1)
    with pytest.raises(ValueError, match="n_params"):
        random_layers(q, n_params=1)  # smaller than any layer
    with pytest.raises(ValueError, match="at least one"):
        selective_finetune(q, model, data, [])
    with pytest.raises(ValueError, match="not quantized"):
        selective_finetune(q, model, data, ["time_mlp.1"])
    with pytest.raises(ValueError, match="steps"):
        selective_finetune(q, model, data, ["time_mlp.0"], steps=0)
    with pytest.raises(ValueError, match="lr"):
        selective_finetune(q, model, data, ["time_mlp.0"], lr=0.0)
    with pytest.raises(ValueError, match="empty"):
        selective_finetune(q, model, empty, ["time_mlp.0"])
