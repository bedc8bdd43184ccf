"""One speed fix to dbt-common, applied wherever this project runs dbt (in-process or `stripe-sage-dbt`).

When dbt registers the Postgres adapter, dbt-common names the module that declared each behavior flag by
walking `inspect.stack()`, which also reads the source lines around every frame on the stack. Under
Dagster (and pytest) the stack is deep, and that walk cost more than the rest of registering the adapter:
about 4% of the whole test suite's CPU, paid again by every dbt invocation (the Dagster runs no longer
register one in their own process: DECISIONLOG 32). `quicken_behavior_flags` gives the same answer (the
first module on the stack other than dbt-common's own) from the frames alone.
"""

from __future__ import annotations

import sys
from types import FrameType


def first_module_outside(module_name: str, frame: FrameType | None = None) -> str:
    """The module name of the nearest frame, from `frame` (default: the caller's) outwards, that is not in
    `module_name` ("Unknown" if none)."""
    frame = frame or sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if name and name != module_name:
            return name
        frame = frame.f_back
    return "Unknown"


def quicken_behavior_flags() -> None:
    """Replace dbt-common's stack walk for a behavior flag's default source (idempotent)."""
    from dbt_common import behavior_flags

    rendered = getattr(behavior_flags, "BehaviorFlagRendered", None)
    if rendered is None or getattr(rendered, "_stripe_sage_quick", False):
        return  # another dbt-common: leave it as it is

    def _default_source() -> str:
        return first_module_outside(behavior_flags.__name__, sys._getframe(1))

    rendered._default_source = staticmethod(_default_source)
    rendered._stripe_sage_quick = True
