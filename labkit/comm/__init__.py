"""Collectives and the network (chapter 11): collectives on ``torch.distributed``, their cost
model, overlap, routing in the fabric, fault detection, datatypes and dynamic meshes.

Papers and the modules that implement them (ids as in ``book/_data/papers.yml``):

- T3 (``t3``), section 02 "T3: overlapping a producer with its collective":
  :mod:`~labkit.comm.overlap` (chunked compute/communication overlap);
- packet spraying against a single path (``packet_spraying``), section 03 "Packet spraying or a
  single path?": :mod:`~labkit.comm.topology` (leaf-spine routing: ECMP, spraying, splitting);
- C4 (``c4``), section 04 "C4: reading faults off the collectives": :mod:`~labkit.comm.faults`
  (slow-rank detection, a real job with one delayed rank);
- TEMPI (``tempi``) and ByteScale (``bytescale``), section 05 "Datatypes and dynamic meshes":
  :mod:`~labkit.comm.datatypes` (canonical strided layouts, pack/unpack with a Triton kernel)
  and :mod:`~labkit.comm.bytescale` (data-aware sharding on a dynamic mesh).

Section 01, "Collectives from send/recv" (no paper of the list of its own):
:mod:`~labkit.comm.collectives` (ring, tree and all-to-all over send/recv, byte counters),
:mod:`~labkit.comm.simulator` (the same schedules for n ranks in one process) and
:mod:`~labkit.comm.costmodel` (the alpha-beta model every section uses, and nccl-tests'
bus-bandwidth factors). Worker functions for :func:`labkit.dist.launch` live in ``_workers.py``
and beside their mechanism; :mod:`~labkit.comm.report` lays out the chapter's tables and
figures (the leaf-spine drawing, slider figures, the overlap timeline).

Chapter 12, "Communication-efficient training", builds on these collectives:

- 1-bit Adam (``one_bit_adam``), section 01 "1-bit Adam": :mod:`~labkit.comm.onebit` (sign
  compression with error feedback, the two-hop compressed all-reduce on real and simulated
  ranks, the optimiser); its training runs and figure are in ``_onebit_runs.py``, its Triton
  compressor (error feedback, scale, signs packed in two passes) in ``_onebit_kernels.py``;
- CO2 (``co2``), section 02 "CO2": :mod:`~labkit.comm.local_sgd` (local AdamW rounds, the
  outer step one round late with the staleness gap penalty and outer momentum clipping,
  real rounds timed on a modelled link);
- Streaming DiLoCo (``streaming_diloco``), section 03 "Streaming DiLoCo":
  :mod:`~labkit.comm.diloco` (DiLoCo's outer Nesterov step, fragments synced in turn with a
  delayed, mixed merge, 4-bit outer gradients; workers simulated in one process);
- GNNPipe (``gnnpipe``), section 04 "GNNPipe: pipelined layers over graph chunks":
  :mod:`~labkit.comm.gnnpipe` (partitions and halo volumes, a residual GCN split into
  pipeline stages over graph chunks with historical embeddings, on real and simulated ranks);
- in-memory fault tolerance (``inmemory_fault_tolerance``), section 05 "In-memory fault
  tolerance": :mod:`~labkit.comm.erasure` (XOR and Reed-Solomon parity over GF(2^8), byte
  columns) and :mod:`~labkit.comm.snapshot` (rotated-parity snapshots in host memory, a
  background writer, rebuilding lost ranks); its runs and figure are in ``_snapshot_runs.py``.
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
