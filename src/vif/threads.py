"""Torch intra-op threads for the small models in this package."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(threads)`` and restore the previous count (``None``: no change).

    The task models here have small tensors (Cox: n x p with p <= 14; karate: 136 parameters): on a shared
    2-core machine intra-op threading costs far more than it gains. Measured here: a masked Cox gradient at
    n = 5,000 took 30 ms with 2 threads and 0.6 ms with 1; a logistic Newton refit 0.25 s against 0.03 s.
    The experiments therefore run single-threaded, every method alike, so that ratios compare like with like.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
