"""labkit.graphs.metrics: Recall@K and NDCG@K, worked by hand and checked against a loop."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.graphs.metrics import ranking_metrics


def test_by_hand() -> None:
    # user 0 trained on item 0 (masked), held out {1, 3}; user 1 held out {4}
    scores = torch.tensor([[9.0, 8.0, 7.0, 1.0, 0.0], [0.0, 5.0, 4.0, 3.0, 2.0]])
    train, held = torch.tensor([[0], [0]]), torch.tensor([[0, 0, 1], [1, 3, 4]])
    m = ranking_metrics(lambda u: scores[u], train, held, n_users=2, n_items=5, k=2)
    # user 0: top-2 = items 1, 2 -> 1 hit of 2 at rank 1; user 1: top-2 = items 1, 2 -> 0 hits
    assert m.recall == pytest.approx((0.5 + 0.0) / 2)
    ndcg0 = 1.0 / (1.0 + 1 / math.log2(3))
    assert m.ndcg == pytest.approx(ndcg0 / 2)
    assert m.n_users == 2


def test_matches_a_per_user_loop_and_batches_agree() -> None:
    g = torch.Generator().manual_seed(0)
    U, I, K = 37, 50, 5
    scores = torch.randn(U, I, generator=g)
    train = torch.stack([torch.randint(U, (200,), generator=g), torch.randint(I, (200,), generator=g)])
    held = torch.stack([torch.randint(U, (120,), generator=g), torch.randint(I, (120,), generator=g)])
    held_keys = set((held[0] * I + held[1]).tolist()) - set((train[0] * I + train[1]).tolist())
    held = torch.tensor([[k // I for k in sorted(held_keys)], [k % I for k in sorted(held_keys)]])
    recalls, ndcgs = [], []
    for u in sorted(set(held[0].tolist())):
        s = scores[u].clone()
        s[train[1][train[0] == u]] = float("-inf")
        top = torch.topk(s, K).indices.tolist()
        truth = set(held[1][held[0] == u].tolist())
        hits = [1.0 if i in truth else 0.0 for i in top]
        recalls.append(sum(hits) / len(truth))
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        ndcgs.append(dcg / sum(1 / math.log2(r + 2) for r in range(min(K, len(truth)))))
    for batch in (4, 1024):
        m = ranking_metrics(lambda u: scores[u], train, held, n_users=U, n_items=I, k=K, batch_size=batch)
        assert m.recall == pytest.approx(sum(recalls) / len(recalls))
        assert m.ndcg == pytest.approx(sum(ndcgs) / len(ndcgs))


@pytest.mark.parametrize("k, msg", [(0, "k must"), (-1, "k must"), (6, "exceed")])
def test_bad_k(k: int, msg: str) -> None:
    pairs = torch.tensor([[0], [0]])
    with pytest.raises(ValueError, match=msg):
        ranking_metrics(lambda u: torch.zeros(len(u), 5), pairs, pairs, n_users=1, n_items=5, k=k)


def test_bad_scores_shape() -> None:
    pairs = torch.tensor([[0], [1]])
    with pytest.raises(ValueError, match="scores must return"):
        ranking_metrics(lambda u: torch.zeros(len(u), 4), pairs, pairs, n_users=1, n_items=5, k=2)
