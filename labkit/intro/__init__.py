"""The small ops of chapter 00, "How this book runs", that show how the book's machinery works
(no paper of the list):

- :mod:`~labkit.intro.axpy`: a fused scaled add, reference and Triton, behind the dispatcher;
- :mod:`~labkit.intro.grid`: how a 1-D Triton launch covers ``n`` elements.
"""

from .axpy import scaled_add, scaled_add_reference
from .grid import LaunchGrid, launch_grid

__all__ = ["LaunchGrid", "launch_grid", "scaled_add", "scaled_add_reference"]
