"""Running labkit functions in several real processes joined by ``torch.distributed``.

:func:`launch` spawns ``world_size`` processes on this machine, joins them into one
process group and returns what each rank's function returned. Worker functions must live
in an importable module (see :mod:`labkit.dist._demo_workers` for examples).

Used in chapters 11 (Collectives and the network), 13 (Decentralised, federated and
Byzantine-robust learning) and 15 (Secure multi-party inference).
"""

from labkit.dist.launcher import LaunchError, LaunchTimeout, launch

__all__ = ["LaunchError", "LaunchTimeout", "launch"]
