"""Chapter 00: the small ops that show how the book's machinery works."""

from .axpy import scaled_add, scaled_add_reference
from .grid import LaunchGrid, launch_grid

__all__ = ["LaunchGrid", "launch_grid", "scaled_add", "scaled_add_reference"]
