"""Shared test data: small survival sets with many tied times and the edge cases the Cox tests need."""

from __future__ import annotations

import numpy as np


def tied_data(n: int = 40, p: int = 3, seed: int = 0, *, censored_first: bool = False):
    """``(x (n, p), time (n,), event (n,), last)`` with many ties and a unique last patient at risk (an event).

    ``censored_first``: patient 0 is censored before the first event (at risk for no event).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    time = rng.integers(1, 12, size=n).astype(float)  # many ties
    event = (rng.random(n) < 0.7).astype(float)
    last = int(np.argmax(time))
    time[last], event[last] = 20.0, 1.0  # a unique last patient at risk, with an event
    if censored_first:
        time[0], event[0] = 0.5, 0.0
    return x, time, event, last
