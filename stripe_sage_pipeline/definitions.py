"""The Dagster code location: every stage's definitions merged, with resources from the environment."""

from __future__ import annotations

import importlib

import dagster as dg

from .defs.resources import default_resources

# Stages in the order the data flows; a stage that is not built yet is simply absent.
STAGES = ("ingestion", "transformation", "quality", "loading", "automation")


def _stage_defs() -> list[dg.Definitions]:
    out = []
    for name in STAGES:
        try:
            module = importlib.import_module(f"{__package__}.defs.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.defs.{name}":
                continue
            raise
        out.append(module.defs)
    return out


@dg.definitions
def defs() -> dg.Definitions:
    """All assets, checks, jobs, schedules and sensors of stripe-sage-pipeline."""
    # Steps run in the run's own process: every API step is in a one-slot pool anyway, and a process
    # per step (the multiprocess default) costs seconds of imports each, which a month of daily
    # backfill runs multiplies.
    return dg.Definitions.merge(
        *_stage_defs(), dg.Definitions(resources=default_resources(), executor=dg.in_process_executor)
    )
