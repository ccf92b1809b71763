"""Work on large inputs in chunks, on several threads where a step allows it.

train, evaluate and validate compute window columns and scores for hundreds of thousands of
rows; numpy releases the GIL in those chunks' reductions and lookups, so threads add cores.
A chunk's result never depends on which thread computes it or how the rows are cut (each
row's features come from its own window, each score from its own row): the figures are
identical with any number of threads. Threads are off unless a step turns them on with
``threads()``: a model server keeps its large batches on one thread, beside its single rows.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

MAX_THREADS = 4  # beyond this, memory bandwidth, not cores, bounds these passes

_threads: contextvars.ContextVar[int] = contextvars.ContextVar("chunk_threads", default=1)


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set; not its CPU quota)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextmanager
def threads(count: int | None = None) -> Iterator[int]:
    """Within the block, map_chunks uses ``count`` threads (default: the cores available, at most MAX_THREADS)."""
    count = max(1, count if count is not None else min(available_cores(), MAX_THREADS))
    token = _threads.set(count)
    try:
        yield count
    finally:
        _threads.reset(token)


def thread_count() -> int:
    return _threads.get()


def map_chunks(work: Callable, starts: Sequence) -> list:
    """[work(s) for s in starts], on the block's threads when there are several chunks."""
    count = min(_threads.get(), len(starts))
    if count <= 1:
        return [work(start) for start in starts]
    with ThreadPoolExecutor(count, thread_name_prefix="chunk") as pool:
        return list(pool.map(work, starts))
