"""Fixtures shared by the graph tests."""

from __future__ import annotations

import pytest

from labkit.graphs import Interactions, synthetic_interactions


@pytest.fixture(scope="session")
def tiny() -> Interactions:
    """A 60-user, 40-item seeded interaction graph: big enough to train on, quick to evaluate."""
    return synthetic_interactions(60, 40, n_communities=4, avg_degree=8.0, seed=3)
