"""Ego-nets, SPEN and the 1-WL pairs (labkit.graphs.expressivity)."""

from __future__ import annotations

import warnings

import networkx as nx
import pytest
import torch

from labkit.graphs.expressivity import (
    MPNN,
    SPEN,
    edge_index_of,
    ego_networks,
    memory_counts,
    relabelled,
    shrikhande_graph,
    spen_distance,
    wl_pairs,
)


def test_pairs_are_wl_equal_and_not_isomorphic() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for g1, g2 in wl_pairs().values():
            assert nx.weisfeiler_lehman_graph_hash(g1) == nx.weisfeiler_lehman_graph_hash(g2)
            assert not nx.is_isomorphic(g1, g2)
    s = shrikhande_graph()
    assert s.number_of_nodes() == 16 and all(d == 6 for _, d in s.degree())


def test_ego_networks_match_networkx() -> None:
    g = nx.karate_club_graph()
    ei, n = edge_index_of(g)
    for k in (1, 2):
        egos = ego_networks(ei, n, k=k)
        for i in (0, 5, 33):
            ref = nx.ego_graph(g, i, radius=k)
            assert egos.sizes[i] == ref.number_of_nodes()
            assert int(egos.adj[i].sum()) == 2 * ref.number_of_edges()
            assert egos.adj[i][0, 1:].sum() == g.degree(i)  # the centre comes first
            assert not egos.mask[i, egos.sizes[i]:].any()


def test_rook_and_shrikhande_ego_nets_by_hand() -> None:
    shrik, rook = wl_pairs()["Shrikhande / 4x4 rook"]
    # rook: a node's row-mates and column-mates are two triangles -> 6 + 2 triangles
    # Shrikhande: its six neighbours form a hexagon -> 6 + 0 triangles
    for g, triangles in ((shrik, 6), (rook, 8)):
        a = ego_networks(*edge_index_of(g), k=1).adj[0]
        assert a.shape == (7, 7) and int(a.sum()) == 24
        assert int(torch.trace(a @ a @ a)) // 6 == triangles


def test_spen_is_invariant_to_relabelling_and_needs_the_product() -> None:
    shrik, rook = wl_pairs()["Shrikhande / 4x4 rook"]
    assert spen_distance(rook, relabelled(rook, seed=3), k=1, product=True, init=0) < 1e-5
    assert spen_distance(shrik, rook, k=1, product=True, init=0) > 1e-4
    assert spen_distance(shrik, rook, k=1, product=False, init=0) < 1e-5
    tri, hexagon = wl_pairs()["two triangles / hexagon"]
    assert spen_distance(tri, hexagon, k=1, product=False, init=0) > 1e-2


def test_mpnn_cannot_separate_wl_pairs_but_separates_others() -> None:
    torch.manual_seed(0)
    model = MPNN()
    with torch.no_grad():
        for g1, g2 in wl_pairs().values():
            assert torch.allclose(model(*edge_index_of(g1)), model(*edge_index_of(g2)), atol=1e-5)
        path, star = nx.path_graph(4), nx.star_graph(3)
        assert not torch.allclose(model(*edge_index_of(path)), model(*edge_index_of(star)))


def test_memory_counts_by_hand() -> None:
    # ego sizes 2, 3, 2 with 4 channels: SPEN (4 + 9 + 4) * 4, padded 3 * 9 * 4, global 9 * 4
    assert memory_counts([2, 3, 2], 4) == {"spen": 68, "spen_padded": 108, "global": 36}


def test_bad_inputs() -> None:
    ei, n = edge_index_of(nx.cycle_graph(4))
    with pytest.raises(ValueError, match="k must be"):
        ego_networks(ei, n, k=0)
    with pytest.raises(ValueError, match="out of range"):
        ego_networks(ei, 3)
    with pytest.raises(ValueError, match="channels must be"):
        SPEN(channels=0)
    with pytest.raises(ValueError, match="at least one"):
        memory_counts([], 4)
