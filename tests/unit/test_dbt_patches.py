"""The dbt-common speed fix gives the same behavior-flag source as dbt-common's own stack walk."""

from __future__ import annotations

import inspect

from stripe_sage_pipeline.transform.dbt_patches import first_module_outside, quicken_behavior_flags


def _as_dbt_common_does(module_name: str) -> str:
    """dbt-common's original: the first module on `inspect.stack()` other than its own."""
    for frame in inspect.stack():
        module = inspect.getmodule(frame[0])
        if module and module.__name__ != module_name:
            return module.__name__
    return "Unknown"


def test_first_module_outside_agrees_with_the_stack_walk() -> None:
    assert first_module_outside(__name__) == _as_dbt_common_does(__name__) != __name__
    assert first_module_outside("another.module") == __name__


def test_a_flag_declared_here_is_sourced_here_after_the_fix() -> None:
    from dbt_common.behavior_flags import Behavior, BehaviorFlagRendered

    quicken_behavior_flags()
    quicken_behavior_flags()  # idempotent
    assert BehaviorFlagRendered._stripe_sage_quick
    flags = Behavior([{"name": "declared_here", "default": False, "description": "a test flag"}], {})
    event = flags.declared_here._behavior_change_event
    assert event.flag_source == __name__
    assert Behavior([{"name": "on", "default": False, "description": "d"}], {"on": True}).on.setting is True
