"""The shop database, its time-respecting graph, the churn task and the heterogeneous GNN."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch

from labkit.graphs.relational import (
    HeteroGNN,
    churn_task,
    customer_features,
    sample_graph,
    shop_database,
)


@pytest.fixture(scope="module")
def db():
    return shop_database(60, 8, 6, seed=0)


def test_constraints_are_enforced(db) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        db.conn.execute("INSERT INTO orders VALUES (999999, 12345, 0, 1)")
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        db.conn.execute("INSERT INTO orders VALUES (999998, 0, 0, NULL)")
    db.conn.rollback()


def test_sampler_never_returns_rows_after_the_cutoff(db) -> None:
    for cutoff in range(6):
        g = sample_graph(db, cutoff)
        for table in ("orders", "reviews"):
            times = torch.cat([g.times[table], torch.tensor([-1])])
            assert int(times.max()) <= cutoff
        n = db.conn.execute("SELECT COUNT(*) FROM orders WHERE time <= ?",
                            (cutoff,)).fetchone()[0]
        assert g.x["orders"].shape[0] == n
        # every order edge points at a real customer and product
        ei = g.edges[("orders", "customer_id", "customers")]
        assert torch.equal(ei[0], torch.arange(n))
        assert bool((ei[1] < g.x["customers"].shape[0]).all())


def test_churn_labels_by_hand(db) -> None:
    task = churn_task(db, 2, 2)
    ordered = {r[0] for r in db.conn.execute(
        "SELECT customer_id FROM orders WHERE time > 2 AND time <= 4")}
    want = [float(c not in ordered) for c in task.ids.tolist()]
    assert task.label.tolist() == want
    with pytest.raises(ValueError, match="cutoff"):
        churn_task(db, -1, 2)
    with pytest.raises(ValueError, match="horizon"):
        churn_task(db, 2, 0)


def test_features_count_orders_by_hand(db) -> None:
    feats = customer_features(db, 3)
    n0 = db.conn.execute("SELECT COUNT(*) FROM orders WHERE customer_id = 0 "
                         "AND time <= 3").fetchone()[0]
    assert feats[0, 0] == n0
    assert customer_features(db, 3, two_hop=True).shape[1] == 5
    assert np.all(feats[:, 1] >= 0)


def test_hetero_gnn_output_and_messages_flow(db) -> None:
    g = sample_graph(db, 4)
    torch.manual_seed(0)
    model = HeteroGNN({k: v.shape[1] for k, v in g.x.items()}, list(g.edges),
                      hidden=8, layers=3)
    ids = torch.arange(10)
    out = model(g, ids)
    assert out.shape == (10,)
    # changing review ratings (two keys away) changes customers' outputs
    g.x["reviews"].add_(1.0)
    assert (model(g, ids) - out).abs().max() > 0


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="n_customers"):
        shop_database(1, 5, 5)
    with pytest.raises(TypeError, match="periods"):
        shop_database(5, 5, 2.5)
