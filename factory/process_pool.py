"""A pool of spawned worker processes that ends with its parent, whichever way the parent is stopped."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from multiprocessing.pool import Pool
from typing import Iterator


@contextlib.contextmanager
def process_pool(processes: int) -> Iterator[Pool]:
    """A spawn-context pool. SIGTERM (`kill`, a scheduler's stop) reaches only the parent, and by default
    kills it on the spot: the pool's processes would go on computing, orphaned. While the pool is open,
    SIGTERM raises SystemExit in the parent instead, so that leaving the block terminates them."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, stop) if in_main_thread else None
    try:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            yield pool
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
