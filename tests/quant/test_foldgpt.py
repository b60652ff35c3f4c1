"""FoldGPT: plans, the folded model, gates, owner choice and the cure."""

from __future__ import annotations

import pytest
import torch

from labkit.data.corpus import TextCorpus
from labkit.lm import GPT, GPTConfig, evaluate
from labkit.quant.foldgpt import (FoldedGPT, FoldPlan, choose_owners, cure, drop_plan, fold_plan,
                                  learn_block_gates)

SMALL = dict(n_layer=4, n_head=2, d_model=16, d_ff=32, block_size=8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


def _corpus() -> TextCorpus:
    g = torch.Generator().manual_seed(0)
    text = torch.randint(97, 103, (4000,), generator=g).to(torch.uint8)  # six letters
    return TextCorpus(train=text[:3000], val=text[3000:], files_train=("a",), files_val=("b",))


def _model() -> GPT:
    return GPT(GPTConfig(**SMALL), init_seed=0).eval()


def test_plans_by_hand():
    assert drop_plan(4, 2) == FoldPlan(kept=(0, 1), source=(0, 1))
    assert drop_plan(4, 2, drop="first") == FoldPlan(kept=(2, 3), source=(2, 3))
    gates = torch.tensor([0.9, 0.2, 0.5, 0.7])
    # keep the 3 largest gates (blocks 0, 2, 3); groups cut from the deep end: {0}, {2, 3}; owner = larger gate
    plan = fold_plan(gates, n_keep=3, group_size=2)
    assert plan == FoldPlan(kept=(0, 2, 3), source=(0, 3, 3))
    assert plan.n_unique == 2 and plan.borrowers == (1,)
    assert fold_plan(gates, n_keep=3, group_size=1).source == (0, 2, 3)
    assert fold_plan(gates, n_keep=4, group_size=3).source == (0, 3, 3, 3)


def test_plan_bad_input():
    with pytest.raises(ValueError):
        FoldPlan(kept=(), source=())
    with pytest.raises(ValueError, match="distinct"):
        FoldPlan(kept=(1, 0), source=(1, 0))
    with pytest.raises(ValueError, match="source"):
        FoldPlan(kept=(0, 1), source=(0, 2))
    with pytest.raises(ValueError):
        drop_plan(4, 5)
    with pytest.raises(ValueError, match="drop"):
        drop_plan(4, 2, drop="middle")
    with pytest.raises(ValueError, match="1-D"):
        fold_plan(torch.ones(2, 2), n_keep=1, group_size=1)
    with pytest.raises(ValueError):
        fold_plan(torch.ones(4), n_keep=2, group_size=3)


def test_identity_plan_reproduces_the_model():
    model = _model()
    x = torch.randint(0, 256, (2, 8))
    full = FoldedGPT(model, FoldPlan(kept=(0, 1, 2, 3), source=(0, 1, 2, 3)))
    torch.testing.assert_close(full(x).logits, model(x).logits)
    assert full.n_params() == model.n_params()
    # a gate of zero removes a block exactly
    gates = torch.tensor([1.0, 0.0, 1.0, 1.0])
    dropped = FoldedGPT(model, FoldPlan(kept=(0, 2, 3), source=(0, 2, 3)))
    torch.testing.assert_close(full.hidden(x, gates), dropped.hidden(x))


def test_sharing_counts_parameters_once():
    model = _model()
    per_block = sum(p.numel() for p in model.blocks[0].parameters())
    naive = FoldedGPT(model, drop_plan(4, 2))
    folded = FoldedGPT(model, FoldPlan(kept=(0, 1, 2), source=(0, 2, 2)))
    assert naive.n_params() == model.n_params() - 2 * per_block
    assert folded.n_params() == naive.n_params() + 6 * SMALL["d_model"]  # one borrower: 2 LayerNorms + 2 scales
    # at initialisation the borrower runs block 2's weights with block 1's LayerNorms
    x = torch.randint(0, 256, (2, 8))
    assert folded(x).logits.shape == (2, 8, 256)
    assert folded.shared["2"] is not model.blocks[2], "the original model is not shared with the copy"


def test_folded_bad_input():
    model = _model()
    with pytest.raises(TypeError):
        FoldedGPT(model, (0, 1))
    with pytest.raises(TypeError):
        FoldedGPT("gpt", drop_plan(4, 2))
    with pytest.raises(ValueError, match="keeps block"):
        FoldedGPT(GPT(GPTConfig(**{**SMALL, "n_layer": 2})), drop_plan(4, 3))
    f = FoldedGPT(model, drop_plan(4, 2))
    with pytest.raises(ValueError, match="gates"):
        f.hidden(torch.zeros(1, 8, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        f(torch.zeros(8, dtype=torch.long))


def test_gates_learn_and_leave_the_model_alone():
    model, corpus = _model(), _corpus()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gates = learn_block_gates(model, corpus, steps=5, batch_size=4, l1=0.5)
    assert gates.shape == (4,)
    assert (gates < 1).all(), "the L1 penalty pulls the gates below their start"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError):
        learn_block_gates(model, corpus, steps=0)
    with pytest.raises(ValueError, match="l1"):
        learn_block_gates(model, corpus, l1=-1.0)


def test_choose_owners_picks_the_lowest_calibration_loss():
    model = _model()
    x = torch.randint(97, 103, (4, 8))
    y = torch.roll(x, -1, 1)
    plan = FoldPlan(kept=(0, 1, 2), source=(0, 1, 1))
    best = choose_owners(model, plan, x, y)
    assert best.kept == plan.kept and best.source[0] == 0 and best.source[1] == best.source[2]
    losses = {o: FoldedGPT(model, FoldPlan(kept=(0, 1, 2), source=(0, o, o)))(x, y).lm_loss.item() for o in (1, 2)}
    assert best.source[1] == min(losses, key=losses.__getitem__)
    with pytest.raises(ValueError):
        choose_owners(model, plan, x, y[:, :3])


def test_cure_lowers_the_loss_and_distils():
    model, corpus = _model(), _corpus()
    student = FoldedGPT(model, FoldPlan(kept=(0, 1, 2), source=(0, 2, 2)))
    before = evaluate(student, corpus, batches=2, batch_size=8)
    losses = cure(student, model, corpus, steps=30, batch_size=8, lr=3e-3)
    assert len(losses) == 30 and not student.training
    assert evaluate(student, corpus, batches=2, batch_size=8) < before
    with pytest.raises(TypeError):
        cure(model, model, corpus)
    with pytest.raises(ValueError, match="distill"):
        cure(student, model, corpus, distill=-1.0)
