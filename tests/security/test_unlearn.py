"""Class erasure and the embedding attack of labkit.security.unlearn, and the opt-in
``class_embedding`` argument of the tiny UNet they rely on."""

from __future__ import annotations

import pytest
import torch

from labkit.diffusion import DigitClassifier, TinyUNet, UNetConfig
from labkit.security import unlearn as ul
from tests.diffusion._models import SCHEDULE, SMALL, random_unet


def toy_data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 8, 8), generator=g) * 2 - 1, torch.arange(n) % 4


# -- the UNet's class_embedding argument -----------------------------------------------------

def test_class_embedding_of_a_label_row_equals_conditioning_on_the_label():
    model = random_unet(1)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn((3, 1, 8, 8), generator=g), torch.tensor([0, 40, 99])
    y = torch.tensor([2, 7, 0])
    rows = model.class_emb(y)  # (3, E)
    torch.testing.assert_close(model(x, t, class_embedding=rows), model(x, t, y))
    # the default None leaves the labelled path as it was
    torch.testing.assert_close(model(x, t, y, class_embedding=None), model.decode(model.encode(x, t, y)))
    # any other vector conditions differently, and gradients reach it
    e = (rows + 1.0).detach().requires_grad_(True)
    out = model(x, t, class_embedding=e)
    assert not torch.allclose(out, model(x, t, y))
    out.sum().backward()
    assert e.grad is not None and e.grad.abs().sum() > 0


def test_class_embedding_bad_inputs_raise():
    model = random_unet(1)
    x, t, y = torch.zeros(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1])
    e = torch.zeros(2, SMALL.time_dim)
    with pytest.raises(ValueError, match="either y or class_embedding"):
        model(x, t, y, class_embedding=e)
    with pytest.raises(ValueError, match=r"class_embedding must be a \(B, E\)"):
        model(x, t, class_embedding=torch.zeros(2, SMALL.time_dim + 1))
    uncond = TinyUNet(UNetConfig(base_channels=8, groups=4, time_dim=16, n_classes=None), init_seed=0)
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, t, class_embedding=e)


# -- erasure ---------------------------------------------------------------------------------

def test_erase_class_pulls_the_target_toward_the_anchor_and_leaves_the_original():
    model = random_unet(2, std=0.3)
    with torch.no_grad():  # classes far apart, so that "1" and "3" differ clearly
        model.class_emb.weight.mul_(5.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = toy_data()
    g = torch.Generator().manual_seed(1)
    xt, t = torch.randn((16, 1, 8, 8), generator=g), torch.randint(0, 100, (16,), generator=g)
    c, a = torch.full((16,), 1), torch.full((16,), 3)

    def gap(m: TinyUNet) -> float:  # how far "1" is from "3" in the original's eyes
        with torch.no_grad():
            return float((m(xt, t, c) - model(xt, t, a)).pow(2).mean())

    res = ul.erase_class(model, SCHEDULE, x, y, target=1, anchor=3, steps=30, batch_size=8, lr=3e-3,
                         record_every=10)
    assert gap(res.model) < 0.5 * gap(model)
    assert [row[0] for row in res.history] == [10, 20, 30]
    assert res.history[-1][1] < res.history[0][1]
    for k, v in model.state_dict().items():  # the teacher is untouched
        torch.testing.assert_close(v, before[k])
    assert not any(p.requires_grad for p in res.model.parameters())


def test_erase_class_bad_inputs_raise():
    model = random_unet(2)
    x, y = toy_data()
    with pytest.raises(ValueError, match="anchor must differ"):
        ul.erase_class(model, SCHEDULE, x, y, target=1, anchor=1)
    with pytest.raises(ValueError, match=r"target must be a class in \[0, 10\)"):
        ul.erase_class(model, SCHEDULE, x, y, target=10, anchor=1)
    with pytest.raises(TypeError, match="anchor must be an int"):
        ul.erase_class(model, SCHEDULE, x, y, target=1, anchor=1.0)
    with pytest.raises(ValueError, match="must hold class 7"):
        ul.erase_class(model, SCHEDULE, x, y, target=7, anchor=1)
    with pytest.raises(ValueError, match="labels must be"):
        ul.erase_class(model, SCHEDULE, x, y[:3], target=1, anchor=2)
    with pytest.raises(ValueError, match="preserve"):
        ul.erase_class(model, SCHEDULE, x, y, target=1, anchor=2, preserve=-1.0)
    with pytest.raises(TypeError, match="model must be a TinyUNet"):
        ul.erase_class("model", SCHEDULE, x, y, target=1, anchor=2)


# -- the attack ------------------------------------------------------------------------------

def test_condition_embedding_of_each_space():
    model = random_unet(3)
    allowed = ul.allowed_classes(model, 4)
    assert allowed.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    table = model.class_emb.weight[allowed]
    # uniform logits: the mean of the allowed rows; one huge logit: that row
    torch.testing.assert_close(ul.condition_embedding(model, "mixture", torch.zeros(9), allowed), table.mean(0))
    one_hot = torch.full((9,), -1e4)
    one_hot[2] = 0.0
    torch.testing.assert_close(ul.condition_embedding(model, "mixture", one_hot, allowed), table[2])
    free = torch.randn(SMALL.time_dim)
    assert ul.condition_embedding(model, "free", free, allowed) is free
    with pytest.raises(ValueError, match="space must be one of"):
        ul.condition_embedding(model, "tokens", free, allowed)


def test_attack_lowers_its_loss_and_mixture_stays_in_the_hull():
    model = random_unet(4, std=0.05)
    x, y = toy_data(seed=5)
    images = x[y == 2]
    for space in ul.ATTACK_SPACES:
        res = ul.attack_embedding(model, SCHEDULE, images, target=2, space=space, steps=40, batch_size=16,
                                  lr=0.1, record=(0, 40), seed=1)
        assert res.space == space and len(res.losses) == 40
        assert sorted(res.snapshots) == [0, 40]
        torch.testing.assert_close(res.snapshots[40], res.embedding)
        allowed = ul.allowed_classes(model, 2)
        # both spaces start from the mean of the allowed rows
        torch.testing.assert_close(res.snapshots[0], model.class_emb.weight[allowed].mean(0))
        # the attack loss at the start vs the end, on the same fixed draws
        g = torch.Generator().manual_seed(9)
        x0 = images[torch.randint(0, images.shape[0], (64,), generator=g)]
        xt, t, eps = ul._noised(SCHEDULE, x0, g)
        with torch.no_grad():
            loss = {s: float((model(xt, t, class_embedding=e.expand(64, -1)) - eps).pow(2).mean())
                    for s, e in res.snapshots.items()}
        assert loss[40] < loss[0], (space, loss)
        if space == "mixture":  # a convex combination of the rows: inside their bounding box
            table = model.class_emb.weight[allowed]
            assert bool((res.embedding >= table.min(0).values - 1e-5).all())
            assert bool((res.embedding <= table.max(0).values + 1e-5).all())
    assert not any(p.requires_grad for p in model.parameters())


def test_attack_bad_inputs_raise():
    model = random_unet(4)
    x, _ = toy_data()
    with pytest.raises(ValueError, match="space must be one of"):
        ul.attack_embedding(model, SCHEDULE, x, target=2, space="prompt")
    with pytest.raises(ValueError, match=r"target must be a class in \[0, 10\)"):
        ul.attack_embedding(model, SCHEDULE, x, target=-1, space="free")
    with pytest.raises(ValueError, match="images must be a non-empty"):
        ul.attack_embedding(model, SCHEDULE, x[:0], target=2, space="free")
    with pytest.raises(ValueError, match="record"):
        ul.attack_embedding(model, SCHEDULE, x, target=2, space="free", steps=5, record=(6,))


def test_random_embeddings_have_the_norm_and_differ():
    e = ul.random_embeddings(5, 3.0, 16, seed=2)
    torch.testing.assert_close(e.norm(dim=1), torch.full((5,), 3.0))
    assert torch.linalg.matrix_rank(e) == 5
    torch.testing.assert_close(e, ul.random_embeddings(5, torch.tensor(3.0), 16, seed=2))
    with pytest.raises(ValueError, match="norm"):
        ul.random_embeddings(5, -1.0, 16)
    with pytest.raises(ValueError, match="n"):
        ul.random_embeddings(0, 1.0, 16)


def test_sampling_with_a_label_row_equals_sampling_the_label():
    from labkit.diffusion import sample

    model = random_unet(6, std=0.05)
    row = model.class_emb.weight[3]
    ours = ul.sample_with_embedding(model, SCHEDULE, row, n=4, steps=5, seed=7)
    x_T = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(7))
    ref = sample(model, SCHEDULE, n=4, steps=5, labels=torch.full((4,), 3), x_T=x_T)
    torch.testing.assert_close(ours, ref)
    per_sample = ul.sample_with_embedding(model, SCHEDULE, row.expand(4, -1), n=4, steps=5, seed=7)
    torch.testing.assert_close(per_sample, ours)
    with pytest.raises(ValueError, match="embedding must be"):
        ul.sample_with_embedding(model, SCHEDULE, torch.zeros(3, SMALL.time_dim), n=4)


def test_success_rate_and_class_rates_count_the_classifiers_votes():
    clf = DigitClassifier(init_seed=0).eval()
    images = torch.rand((10, 1, 8, 8)) * 2 - 1
    with torch.no_grad():
        votes = clf(images).argmax(1)
    k = int(votes[0])
    assert ul.success_rate(images, k, classifier=clf) == pytest.approx(float((votes == k).float().mean()))
    model = random_unet(6, std=0.05)
    rates = ul.class_rates(model, SCHEDULE, classifier=clf, n_per_class=4, steps=3)
    assert rates.shape == (10,) and bool(((rates >= 0) & (rates <= 1)).all())
    # the rate of class 0 is the success of sampling its row with the same seed
    im = ul.sample_with_embedding(model, SCHEDULE, model.class_emb.weight[0], n=4, steps=3, seed=0)
    assert rates[0].item() == pytest.approx(ul.success_rate(im, 0, classifier=clf))
    with pytest.raises(ValueError, match="target"):
        ul.success_rate(images, 10, classifier=clf)


def test_attack_figure_has_one_dropdown_entry_per_space():
    grids = {s: torch.zeros(6, 1, 8, 8) for s in ul.ATTACK_SPACES}
    success = {"free": {0: 0.0, 10: 0.3}, "mixture": {0: 0.0, 10: 0.1}}
    fig = ul.attack_figure(grids, success, {"free": 0.02, "mixture": 0.01}, cols=2, active=1)
    assert len(fig.data) == 3 * len(ul.ATTACK_SPACES)
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["space: free", "space: mixture"]
    assert [t.visible for t in fig.data] == [False] * 3 + [True] * 3
    assert list(fig.data[1].y) == [0.0, 30.0]
