"""Crash recovery in the daemon: a sensor that fails runs whose worker died and frees their pool slots."""

import dagster as dg

from stripe_sage_pipeline.runtime.recovery import recover
from stripe_sage_pipeline.settings import load_settings

RECOVERY_INTERVAL_S = load_settings().recovery_interval_s


@dg.sensor(minimum_interval_seconds=RECOVERY_INTERVAL_S, default_status=dg.DefaultSensorStatus.RUNNING)
def dead_run_recovery_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Runs whose worker process is gone are marked failed (run_retries in dagster.yaml retries them from
    failure; the run-failure sensor alerts), and finished runs still holding a pool slot release it."""
    done = recover(context.instance)
    if done:
        context.log.warning(done.summary())
    return dg.SkipReason(done.summary())
