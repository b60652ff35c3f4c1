"""Chapter 11 (and 12): collectives on torch.distributed, their cost model, and the network.

Modules: :mod:`~labkit.comm.costmodel` (alpha-beta model shared by all),
:mod:`~labkit.comm.collectives` (ring/tree/all-to-all over send/recv, byte counters),
:mod:`~labkit.comm.simulator` (the same schedules for n ranks in one process),
:mod:`~labkit.comm.overlap` (T3-style chunked compute/communication overlap),
:mod:`~labkit.comm.topology` (leaf-spine routing: ECMP, spraying, flow splitting),
:mod:`~labkit.comm.faults` (C4-style slow-rank detection), :mod:`~labkit.comm.datatypes`
(TEMPI's canonical strided layouts, pack/unpack with a Triton kernel),
:mod:`~labkit.comm.bytescale` (data-aware sharding on a dynamic mesh). Worker functions for
:func:`labkit.dist.launch` live in ``_workers.py`` and beside their mechanism.
"""

from .bytescale import dynamic_assignment, sample_lengths, static_mesh_assignment
from .collectives import ByteCounter, all_to_all, ring_all_gather, ring_all_reduce, ring_reduce_scatter, tree_all_reduce
from .costmodel import AlphaBeta, bus_bandwidth, collective_time, fit_alpha_beta
from .datatypes import StridedLayout, canonicalize, layout_of, pack, unpack
from .faults import detect_slow_rank, simulate_ring_timings
from .overlap import overlap_efficiency, overlap_study
from .simulator import simulate
from .topology import build_topology, job_flows, max_congestion, route_flows

__all__ = [
    "AlphaBeta",
    "ByteCounter",
    "StridedLayout",
    "all_to_all",
    "build_topology",
    "bus_bandwidth",
    "canonicalize",
    "collective_time",
    "detect_slow_rank",
    "dynamic_assignment",
    "fit_alpha_beta",
    "job_flows",
    "layout_of",
    "max_congestion",
    "overlap_efficiency",
    "overlap_study",
    "pack",
    "ring_all_gather",
    "ring_all_reduce",
    "ring_reduce_scatter",
    "route_flows",
    "sample_lengths",
    "simulate",
    "simulate_ring_timings",
    "static_mesh_assignment",
    "tree_all_reduce",
    "unpack",
]
