"""How the pipeline's Python processes use the cyclic garbage collector.

dbt, Dagster and Great Expectations load hundreds of thousands of objects that live as long as the
process (modules, a dbt manifest, Dagster definitions), and a build or a run allocates tens of thousands
more every second. With CPython's defaults the collector runs a young collection every 700 allocations
and a full one, which walks every tracked object, whenever the long-lived ones grew by a quarter: gc
callbacks in two test processes running dbt builds and Dagster loads put 5.3-6.3 of their 31-37 CPU-s in
the collector, 3.4-4.2 of it in 16-17 full collections.

`relax_for_process` is for a process that has done its imports and keeps running: the warm run worker and
the dbt server before they fork (their children inherit it), and the test processes. It collects once,
freezes what exists (`gc.freeze`: those objects are alive for the process's life anyway, and forked
children no longer copy their pages when a collection would have touched them), and makes young
collections `GEN0_THRESHOLD / 700` times rarer. A larger first threshold made each young collection
cost more than it saved (50,000: 3.6-4.0 CPU-s in young collections against 1.6).
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000


def relax_for_process(gen0_threshold: int = GEN0_THRESHOLD) -> None:
    """Collect, freeze every object that exists now out of the collector's walks, and collect young
    objects less often. Idempotent; later objects are collected as usual."""
    gc.collect()
    gc.freeze()
    first, *rest = gc.get_threshold()
    gc.set_threshold(max(first, gen0_threshold), *rest)
