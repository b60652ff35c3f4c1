"""Chapter 11 (and 12): collectives on torch.distributed, their cost model, and the network.

Modules are added per section; :mod:`~labkit.comm.costmodel` holds the alpha-beta model that
all of them share.
"""

from .costmodel import AlphaBeta, bus_bandwidth, collective_time, fit_alpha_beta

__all__ = ["AlphaBeta", "bus_bandwidth", "collective_time", "fit_alpha_beta"]
