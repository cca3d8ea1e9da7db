"""Pausing Python's cyclic garbage collector while a whole model's worth of objects is built.

Loading, rewriting and serializing a model allocate tens of objects per node and free almost none,
so every collection in the meantime is wasted work, and full collections rescan everything alive:
their share of the time grew with model size (half of the insertion pass at 8k convs). Cycles
left unreferenced are collected as usual once the collector is back on.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Generator


@contextlib.contextmanager
def collector_paused() -> Generator[None, None, None]:
    """Disable the cyclic collector for the block, then restore its previous state."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
