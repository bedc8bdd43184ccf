"""The collector policy of long-running processes (runtime.gc_policy), checked in a fresh interpreter."""

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
