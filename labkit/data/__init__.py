"""Data for the book's experiments: local, seeded, never downloaded while the book runs.

It implements no paper of the list; the sections that use it:

- :mod:`labkit.data.corpus`: a byte-level corpus from Python's standard-library sources, the
  tiny GPT's text (chapter 05, reused by chapters 10 and 14);
- :mod:`labkit.data.synthetic`: seeded blobs, planted-partition graphs (chapter 01 section 01)
  and scikit-learn's digits (the tiny DDPM's data, chapter 09);
- :mod:`labkit.data.loaders`: find optional real datasets on disk, or say how to fetch them.
"""

from labkit.data.corpus import FILE_SEPARATOR, TextCorpus, stdlib_corpus
from labkit.data.loaders import offline_download_error, require_local
from labkit.data.synthetic import digits, gaussian_blobs, make_generator, planted_partition_graph

__all__ = [
    "FILE_SEPARATOR",
    "TextCorpus",
    "stdlib_corpus",
    "make_generator",
    "gaussian_blobs",
    "planted_partition_graph",
    "digits",
    "require_local",
    "offline_download_error",
]
