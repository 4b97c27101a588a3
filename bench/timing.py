"""Closed-loop load generation shared by the benchmarks."""
from __future__ import annotations

import threading
import time
from typing import Callable


def closed_loop(call: Callable[[int], None], threads: int, seconds: float) -> tuple[int, float]:
    """Runs `call(thread_index)` back to back on `threads` threads for `seconds`.

    Returns (calls completed, wall seconds): each thread starts its next call when the
    previous one returns, so calls / seconds is the throughput at that concurrency.
    """
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def worker(i):
        while time.monotonic() < stop:
            call(i)
            counts[i] += 1

    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts), time.perf_counter() - t0
