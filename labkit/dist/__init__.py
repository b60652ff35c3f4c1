"""Running labkit functions in several real processes joined by ``torch.distributed``.

:func:`launch` spawns ``world_size`` processes on this machine, joins them into one
process group and returns what each rank's function returned. Worker functions must live
in an importable module (see :mod:`labkit.dist._demo_workers` for examples).

It implements no paper of the list: :mod:`~labkit.dist.launcher` is the process launcher that
chapter 11 (collectives, overlap, faults) and chapter 14 (the MPC parties over gloo) run on.
"""

from labkit.dist.launcher import LaunchError, LaunchTimeout, launch

__all__ = ["LaunchError", "LaunchTimeout", "launch"]
