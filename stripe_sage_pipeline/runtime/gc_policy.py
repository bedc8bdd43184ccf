"""How the pipeline's Python processes use the cyclic garbage collector.

dbt, Dagster and Great Expectations load hundreds of thousands of objects that live as long as the
process (modules, a dbt manifest, Dagster definitions), and a build or a run allocates tens of thousands
more every second. With CPython's defaults the collector runs a young collection every 700 allocations
and a full one, which walks every tracked object, whenever the long-lived ones grew by a quarter: gc
callbacks in two test processes running dbt builds and Dagster loads put 5.3-6.6 of their 28-37 CPU-s in
the collector, 3.4-4.2 of it in 16-17 full collections.

`relax_for_process` is for a process that has done its imports and keeps running: the warm run worker and
the dbt server before they fork (their children inherit it), and the test processes. It collects once,
freezes what exists (`gc.freeze`: those objects are alive for the process's life anyway, and forked
children no longer copy their pages when a collection would have touched them), and makes young
collections `GEN0_THRESHOLD / 700` times rarer. A larger first threshold made each young collection
cost more than it saved (50,000: 3.6-4.0 CPU-s in young collections against 1.6).

`fewer_gc_pauses` is the same for a stretch of work inside a process that has no such policy (an
extraction run in process by a test or `stripe-sage run`), undone when the stretch ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

GEN0_THRESHOLD = 10_000


def relax_for_process(gen0_threshold: int = GEN0_THRESHOLD) -> None:
    """Collect, freeze every object that exists now out of the collector's walks, and collect young
    objects less often. Safe to call again (it freezes what was made since); later objects are collected as usual."""
    gc.collect()
    gc.freeze()
    first, *rest = gc.get_threshold()
    gc.set_threshold(max(first, gen0_threshold), *rest)


_GC_LOCK = threading.Lock()
_gc_users = 0
_gc_threshold: tuple[int, ...] = ()
_gc_froze = False


@contextmanager
def fewer_gc_pauses(gen0_threshold: int = GEN0_THRESHOLD) -> Iterator[None]:
    """While extracting, keep Python's cyclic GC from stopping every thread for long.

    Pages arrive as many small dicts, so the collector ran ~700 times per 100k objects and its full
    passes walked everything the process had imported (0.1 s each, 1.7 s of a 15 s run in
    `benchmarks/extract.py`, every request in flight waiting). Inside: objects that exist at entry are
    frozen out of the collector's walks (`gc.freeze`) and young collections run 14× less often.
    Re-entrant across threads; the settings are restored when the last user leaves. A process that froze
    its heap already (`relax_for_process`: a run forked from the warm worker) keeps it
    frozen: nothing is frozen or unfrozen here, only the threshold is raised and restored.
    """
    global _gc_users, _gc_threshold, _gc_froze
    with _GC_LOCK:
        if _gc_users == 0:
            _gc_threshold = gc.get_threshold()
            _gc_froze = gc.get_freeze_count() == 0
            if _gc_froze:
                gc.freeze()
            first, *rest = _gc_threshold
            gc.set_threshold(max(first, gen0_threshold), *rest)
        _gc_users += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _gc_users -= 1
            if _gc_users == 0:
                gc.set_threshold(*_gc_threshold)
                if _gc_froze:
                    gc.unfreeze()
