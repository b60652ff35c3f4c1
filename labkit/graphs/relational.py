"""Relational deep learning: a SQLite database as a temporal heterogeneous graph.

After "Relational Deep Learning: Graph Representation Learning on Relational Databases" (Fey et
al., arXiv:2312.04615). Every row becomes a node of its table's type, every foreign key a typed
edge; a prediction task names an entity table, a cutoff time and a horizon; the graph seen for a
cutoff holds only rows stamped at or before it, so no label leaks into the features. A
heterogeneous GNN (one linear map per relation, mean aggregation) learns what a data scientist
would otherwise join and aggregate by hand. The names mirror RelBench's (``Database``,
``Table`` with primary key, foreign keys and time column, ``EntityTask``).

The database is a small shop: customers, products, orders, reviews. A customer keeps ordering
while the products they bought are rated well by *other* customers: a signal two foreign keys
away from the customer's row, which single-table ``GROUP BY`` features miss.

Shapes: N rows of a table, E edges of a relation, H hidden.
Section: chapter 04, "Relational deep learning".
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_int
from .sparse import segment_mean

__all__ = ["Database", "EntityTask", "HeteroGNN", "Table", "churn_task",
           "customer_features", "sample_graph", "shop_database", "train_hetero"]


@dataclass(frozen=True)
class Table:
    """A table's keys: primary key, foreign keys (column -> table) and time column."""

    name: str
    pkey: str
    fkeys: dict[str, str] = field(default_factory=dict)
    time_col: str | None = None


@dataclass
class Database:
    """A SQLite connection (foreign keys enforced) and the key metadata of its tables."""

    conn: sqlite3.Connection
    tables: dict[str, Table]

    def min_time(self) -> int:
        """Earliest time stamp of any row."""
        return min(self.conn.execute(f"SELECT MIN({t.time_col}) FROM {t.name}")
                   .fetchone()[0] for t in self.tables.values() if t.time_col)


@dataclass(frozen=True)
class EntityTask:
    """Predict, for every row of ``entity`` existing at ``cutoff``, a label over the horizon."""

    entity: str
    cutoff: int
    horizon: int
    ids: torch.Tensor
    label: torch.Tensor


SCHEMA = """
CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, signup INTEGER NOT NULL);
CREATE TABLE products (product_id INTEGER PRIMARY KEY, price REAL NOT NULL);
CREATE TABLE orders (order_id INTEGER PRIMARY KEY,
  customer_id INTEGER NOT NULL REFERENCES customers(customer_id),
  product_id INTEGER NOT NULL REFERENCES products(product_id),
  time INTEGER NOT NULL);
CREATE TABLE reviews (review_id INTEGER PRIMARY KEY,
  customer_id INTEGER NOT NULL REFERENCES customers(customer_id),
  product_id INTEGER NOT NULL REFERENCES products(product_id),
  rating INTEGER NOT NULL, time INTEGER NOT NULL);
"""

TABLES = {
    "customers": Table("customers", "customer_id", {}, "signup"),
    "products": Table("products", "product_id", {}, None),
    "orders": Table("orders", "order_id", {"customer_id": "customers",
                                           "product_id": "products"}, "time"),
    "reviews": Table("reviews", "review_id", {"customer_id": "customers",
                                              "product_id": "products"}, "time"),
}


def shop_database(n_customers: int, n_products: int, periods: int, *,
                  seed: int = 0) -> Database:
    """Simulate the shop for ``periods`` time steps and store it in SQLite (in memory).

    Each product has a hidden quality; a review rates it 1-5 around its quality. At each step a
    customer orders with a probability that rises with the mean rating that *other* customers
    gave, so far, to the products this customer bought (the planted 2-hop signal).
    """
    check_int("n_customers", n_customers, 2)
    check_int("n_products", n_products, 2)
    check_int("periods", periods, 2)
    rng = np.random.default_rng(seed)
    quality = rng.uniform(1.5, 4.5, n_products)
    conn = sqlite3.connect(":memory:")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO customers VALUES (?, ?)",
                     [(i, 0) for i in range(n_customers)])
    conn.executemany("INSERT INTO products VALUES (?, ?)",
                     [(j, float(rng.uniform(5, 50))) for j in range(n_products)])
    rating_sum = np.zeros(n_products)
    n_rev = np.zeros(n_products)
    rating_sum_by = np.zeros((n_customers, n_products))
    count_by = np.zeros((n_customers, n_products))
    bought = np.zeros((n_customers, n_products))
    orders, reviews = [], []
    for t in range(periods):
        # mean rating by others of what each customer bought (3 if unknown)
        others_sum = rating_sum[None, :] - rating_sum_by
        others_cnt = n_rev[None, :] - count_by
        mean_other = np.where(others_cnt > 0, others_sum / np.maximum(
            others_cnt, 1), 3.0)
        w = bought.sum(1)
        sat = np.where(w > 0, (bought * mean_other).sum(1) / np.maximum(w, 1),
                       3.0)
        p_order = 1 / (1 + np.exp(-(2.5 * (sat - 3.0) + 0.3)))
        for c in np.nonzero(rng.random(n_customers) < p_order)[0]:
            j = int(rng.integers(n_products))
            orders.append((len(orders), int(c), j, t))
            bought[c, j] += 1
            if rng.random() < 0.5:
                r = int(np.clip(np.rint(quality[j] + rng.normal(0, 0.7)), 1, 5))
                reviews.append((len(reviews), int(c), j, r, t))
                rating_sum[j] += r
                n_rev[j] += 1
                rating_sum_by[c, j] += r
                count_by[c, j] += 1
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", orders)
    conn.executemany("INSERT INTO reviews VALUES (?, ?, ?, ?, ?)", reviews)
    conn.commit()
    return Database(conn, dict(TABLES))


def churn_task(db: Database, cutoff: int, horizon: int) -> EntityTask:
    """Label 1 when a customer places no order in ``(cutoff, cutoff + horizon]``."""
    check_int("horizon", horizon, 1)
    if cutoff < db.min_time():
        raise ValueError(f"cutoff must not precede all data (earliest time "
                         f"{db.min_time()}), got {cutoff}")
    rows = db.conn.execute(
        "SELECT c.customer_id, COUNT(o.order_id) FROM customers c "
        "LEFT JOIN orders o ON o.customer_id = c.customer_id "
        "AND o.time > ? AND o.time <= ? WHERE c.signup <= ? "
        "GROUP BY c.customer_id ORDER BY c.customer_id",
        (cutoff, cutoff + horizon, cutoff)).fetchall()
    ids = torch.tensor([r[0] for r in rows])
    label = torch.tensor([float(r[1] == 0) for r in rows])
    return EntityTask("customers", cutoff, horizon, ids, label)


def customer_features(db: Database, cutoff: int, *,
                      two_hop: bool = False) -> np.ndarray:
    """Single-table features from SQL ``GROUP BY`` over rows up to ``cutoff``.

    Columns: orders, time since the last order, reviews written, mean own rating; with
    ``two_hop`` also the mean rating that others gave to the products bought (the join a data
    scientist would have to think of).
    """
    q = """
    SELECT c.customer_id,
      (SELECT COUNT(*) FROM orders o WHERE o.customer_id = c.customer_id
         AND o.time <= :t),
      :t - COALESCE((SELECT MAX(time) FROM orders o
         WHERE o.customer_id = c.customer_id AND o.time <= :t), -1),
      (SELECT COUNT(*) FROM reviews r WHERE r.customer_id = c.customer_id
         AND r.time <= :t),
      COALESCE((SELECT AVG(rating) FROM reviews r
         WHERE r.customer_id = c.customer_id AND r.time <= :t), 3.0)
    FROM customers c WHERE c.signup <= :t ORDER BY c.customer_id
    """
    base = np.array(db.conn.execute(q, {"t": cutoff}).fetchall(), float)[:, 1:]
    if not two_hop:
        return base
    q2 = """
    SELECT c.customer_id, COALESCE((
      SELECT AVG(r.rating) FROM orders o JOIN reviews r
        ON r.product_id = o.product_id
      WHERE o.customer_id = c.customer_id AND o.time <= :t
        AND r.time <= :t AND r.customer_id != c.customer_id), 3.0)
    FROM customers c WHERE c.signup <= :t ORDER BY c.customer_id
    """
    extra = np.array(db.conn.execute(q2, {"t": cutoff}).fetchall(), float)
    return np.concatenate([base, extra[:, 1:]], axis=1)


@dataclass(frozen=True)
class HeteroGraph:
    """Node features per table and edges per relation ``(src, name, dst)``."""

    x: dict[str, torch.Tensor]
    edges: dict[tuple[str, str, str], torch.Tensor]
    times: dict[str, torch.Tensor]


def sample_graph(db: Database, cutoff: int) -> HeteroGraph:
    """The rows stamped at or before ``cutoff`` as a heterogeneous graph (time-respecting).

    Row ids are the node indices within their type (ids are 0..N-1 in the generated database).
    """
    x, edges, times = {}, {}, {}
    n_cust = db.conn.execute("SELECT COUNT(*) FROM customers").fetchone()[0]
    prices = db.conn.execute("SELECT price FROM products ORDER BY product_id"
                             ).fetchall()
    x["customers"] = torch.ones(n_cust, 1)
    x["products"] = torch.tensor(prices, dtype=torch.float32) / 50.0
    times["customers"] = torch.tensor(
        [r[0] for r in db.conn.execute(
            "SELECT signup FROM customers ORDER BY customer_id")])
    # show: start sample_graph
    for table, cols in (("orders", ""), ("reviews", ", rating")):
        rows = db.conn.execute(
            f"SELECT customer_id, product_id, time{cols} FROM {table} "
            f"WHERE time <= ? ORDER BY {TABLES[table].pkey}",
            (cutoff,)).fetchall()                      # no row after cutoff
        width = 4 if cols else 3                       # customer, product, time
        t = torch.tensor(rows, dtype=torch.float32).reshape(-1, width)
        idx = torch.arange(t.shape[0])
        x[table] = (t[:, 3:] / 5.0 if cols else torch.ones(t.shape[0], 1))
        times[table] = t[:, 2].long()
        # one typed edge per foreign key, in both directions
        for col, (dst, k) in {"customer_id": ("customers", 0),
                              "product_id": ("products", 1)}.items():
            fk = torch.stack([idx, t[:, k].long()])
            edges[(table, col, dst)] = fk
            edges[(dst, f"rev_{col}", table)] = fk.flip(0)
    # show: end sample_graph
    return HeteroGraph(x, edges, times)


def _mean_into(msg: torch.Tensor, dst: torch.Tensor, n_dst: int) -> torch.Tensor:
    order = torch.argsort(dst, stable=True)
    ptr = torch.zeros(n_dst + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(torch.bincount(dst, minlength=n_dst), 0)
    return segment_mean(msg[order], ptr)


class HeteroGNN(nn.Module):
    """Relational message passing: one linear map per relation, mean over each relation."""

    def __init__(self, in_dims: dict[str, int],
                 relations: list[tuple[str, str, str]], hidden: int = 16,
                 layers: int = 3) -> None:
        super().__init__()
        check_int("hidden", hidden, 1)
        check_int("layers", layers, 1)
        self.relations = relations
        self.inp = nn.ModuleDict({t: nn.Linear(d, hidden)
                                  for t, d in in_dims.items()})
        self.rel = nn.ModuleList(nn.ModuleDict(
            {"__".join(r): nn.Linear(hidden, hidden, bias=False)
             for r in relations}) for _ in range(layers))
        self.self_lin = nn.ModuleList(nn.ModuleDict(
            {t: nn.Linear(hidden, hidden) for t in in_dims})
            for _ in range(layers))
        self.out = nn.Linear(hidden, 1)

    def forward(self, g: HeteroGraph, ids: torch.Tensor) -> torch.Tensor:
        """Logits for the ``customers`` rows ``ids``."""
        h = {t: F.relu(self.inp[t](x)) for t, x in g.x.items()}
        # show: start hetero_layer
        for rel, self_lin in zip(self.rel, self.self_lin):
            new = {t: self_lin[t](v) for t, v in h.items()}
            for r in self.relations:                     # (src, fkey, dst)
                src, dst = g.edges[r]
                msg = rel["__".join(r)](h[r[0]])[src]    # W_r h_src
                new[r[2]] = new[r[2]] + _mean_into(msg, dst, h[r[2]].shape[0])
            h = {t: F.relu(v) for t, v in new.items()}
        # show: end hetero_layer
        return self.out(h["customers"][ids]).squeeze(1)


def train_hetero(train: HeteroGraph, task: EntityTask, *, hidden: int = 16,
                 layers: int = 3, steps: int = 150, lr: float = 1e-2,
                 seed: int = 0) -> HeteroGNN:
    """Full-batch Adam on the binary cross-entropy of ``task``'s labels."""
    check_int("steps", steps, 1)
    torch.manual_seed(seed)
    model = HeteroGNN({k: v.shape[1] for k, v in train.x.items()},
                      list(train.edges), hidden=hidden, layers=layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model(train, task.ids),
                                                  task.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model
