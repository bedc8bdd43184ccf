"""The collector policy (runtime.gc_policy): process-wide in a fresh interpreter, scoped in one and in this process."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import gc, json
from stripe_sage_pipeline.runtime.gc_policy import GEN0_THRESHOLD, relax_for_process
keep = [{"n": i} for i in range(1000)]
before = {"frozen": gc.get_freeze_count(), "threshold": gc.get_threshold()}
relax_for_process()
frozen = gc.get_freeze_count()
relax_for_process()  # again: nothing new to freeze but what was made since, same threshold
gc.collect()
young = [[i] for i in range(100)]
print(json.dumps({"before": before, "frozen": frozen, "again": gc.get_freeze_count(),
                  "threshold": gc.get_threshold(), "tracked_young": len(gc.get_objects(0)), "G": GEN0_THRESHOLD}))
"""


def test_relax_freezes_what_exists_and_makes_young_collections_rarer():
    out = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout)
    assert out["before"]["frozen"] == 0 and out["before"]["threshold"][0] == 700
    assert out["frozen"] > 1000  # the modules, and the thousand dicts alive at the call
    assert out["again"] >= out["frozen"]
    assert out["threshold"] == [out["G"], *out["before"]["threshold"][1:]]
    assert out["tracked_young"] >= 100  # objects made after the call are tracked (collected) as usual


def test_gc_is_relaxed_while_extracting_and_restored_after_the_last_user():
    """In a fresh process: the heap is frozen and young collections rarer inside, all restored after."""
    probe = """
import gc, json
from stripe_sage_pipeline.runtime.gc_policy import fewer_gc_pauses
before, frozen = gc.get_threshold(), gc.get_freeze_count()
with fewer_gc_pauses(50_000):
    inside = (gc.get_threshold()[0], gc.get_freeze_count())
    with fewer_gc_pauses(50_000):  # a second user (another thread) leaves it relaxed
        pass
    still = gc.get_threshold()[0]
print(json.dumps([before, frozen, inside, still, gc.get_threshold(), gc.get_freeze_count()]))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    before, frozen, inside, still, after, frozen_after = json.loads(out)
    assert frozen == 0 and inside[0] == still == max(before[0], 50_000) and inside[1] > 0
    assert after == before and frozen_after == 0


def test_a_process_that_froze_its_heap_keeps_it_frozen_after_extracting():
    """This test process froze its heap after collection (runtime.gc_policy, as a forked run has):
    extracting raises the threshold and restores it, and never unfreezes what the process froze."""
    import gc

    from stripe_sage_pipeline.runtime.gc_policy import fewer_gc_pauses

    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    assert frozen > 0
    with fewer_gc_pauses(50_000):
        assert gc.get_threshold()[0] == max(before[0], 50_000)
        assert gc.get_freeze_count() == frozen
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen
