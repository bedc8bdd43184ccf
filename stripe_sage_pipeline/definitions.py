"""The Dagster code location: every stage's definitions merged, with resources from the environment."""

from __future__ import annotations

import importlib

import dagster as dg

from stripe_sage_pipeline.defs.resources import default_resources

# Stages in the order the data flows. Every stage must import: a broken stage fails the code location
# loudly (Dagster shows the error) instead of silently disappearing from the asset graph.
STAGES = ("ingestion", "transformation", "quality", "loading", "automation", "reporting")


def _stage_defs() -> list[dg.Definitions]:
    return [importlib.import_module(f"{__package__}.defs.{name}").defs for name in STAGES]


@dg.definitions
def defs() -> dg.Definitions:
    """All assets, checks, jobs, schedules and sensors of stripe-sage-pipeline."""
    # Steps run in the run's own process: every API step is in a one-slot pool anyway, and a process
    # per step (the multiprocess default) costs seconds of imports each, which every scheduled and
    # sensor run would pay.
    return dg.Definitions.merge(
        *_stage_defs(), dg.Definitions(resources=default_resources(), executor=dg.in_process_executor)
    )
