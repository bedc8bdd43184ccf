"""Automation: the hourly schedule, the chain extract → transform → load, event sensors and alerts.

    hourly_extract_schedule ─▶ extract_job ─┐
    update_path_schedule / inbox & payout   ├─(success)─▶ transform_job ─(success)─▶ load_job (affected days)
    sensors / events poll ─▶ update_path_job┘
    any failed run ─▶ run_failure_alert_sensor ─▶ sage_sync.alerts (+ log, + Slack-compatible webhook)
"""

from datetime import UTC, datetime

import dagster as dg

from stripe_sage_pipeline.automation import alerts
from stripe_sage_pipeline.automation import rules as automation
from stripe_sage_pipeline.defs.automation.recovery import dead_run_recovery_sensor
from stripe_sage_pipeline.defs.ingestion import extract_job, update_path_job
from stripe_sage_pipeline.defs.loading import daily_partitions, load_job
from stripe_sage_pipeline.defs.resources import StripeResource
from stripe_sage_pipeline.extract import webhooks
from stripe_sage_pipeline.runtime.db import database_url, libpq_url
from stripe_sage_pipeline.settings import load_settings

# Where Stripe events come from: `webhooks` (the receiver's inbox; needs a public URL) or
# `events_api` (poll Stripe's Events API; no inbound traffic needed).
EVENTS_SOURCE = load_settings().events_source
SENSOR_INTERVAL_S = load_settings().sensor_interval_s


def _conninfo() -> str:
    return libpq_url(database_url())


WAITING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]


def _waiting_runs(instance: dg.DagsterInstance, job_name: str) -> list[dg.DagsterRun]:
    """Runs of a job that have not started yet: they will read whatever lands before they start."""
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=WAITING)))


transform_job = dg.define_asset_job(
    "transform_job",
    selection=dg.AssetSelection.groups("finance"),
    description="Rebuild the finance marts from staging (mapping, dbt models and tests) and run the blocking checks.",
)

hourly_extract_schedule = dg.build_schedule_from_partitioned_job(
    extract_job,
    name="hourly_extract_schedule",
    minute_of_hour=5,
    description="Every hour at :05, extract the last complete UTC hour of every Stripe object.",
)


@dg.schedule(job=update_path_job, cron_schedule="7 * * * *", execution_timezone="UTC")
def update_path_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Every hour at :07, the update path re-fetches objects changed after creation (refunds, disputes, payouts)."""
    return dg.RunRequest(run_key=f"update-path-{context.scheduled_execution_time:%Y%m%d%H}")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[extract_job, update_path_job],
    request_job=transform_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
)
def transform_after_extract_sensor(context: dg.RunStatusSensorContext) -> dg.RunRequest:
    """After new Stripe data lands in staging, rebuild the finance marts and run the blocking checks."""
    run = context.dagster_run
    if _waiting_runs(context.instance, transform_job.name):
        # A transform that has not started yet will read this data too: one rebuild serves both.
        return dg.SkipReason("a transform_job run is already waiting in the queue")
    return dg.RunRequest(run_key=f"transform-after-{run.run_id}", tags={"stripe_sage/after": run.job_name})


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[transform_job],
    request_job=load_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
)
def load_after_transform_sensor(context: dg.RunStatusSensorContext):
    """After the marts pass their checks, post every posting day with entries Sage has not seen (and the last 2 days)."""
    today = datetime.now(UTC).date()
    first = daily_partitions.start.date()
    days = automation.days_to_load(_conninfo(), today=today, first_day=first)
    run_id = context.dagster_run.run_id
    waiting = {r.tags.get("dagster/partition") for r in _waiting_runs(context.instance, load_job.name)}
    # Loads go ahead of other queued runs: they are what finance waits for.
    return [
        dg.RunRequest(run_key=f"load-{d:%Y-%m-%d}-after-{run_id}", partition_key=f"{d:%Y-%m-%d}",
                      tags={"dagster/priority": "10"})
        for d in days
        if f"{d:%Y-%m-%d}" not in waiting
    ]


@dg.sensor(
    job=update_path_job,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING if EVENTS_SOURCE == "webhooks" else dg.DefaultSensorStatus.STOPPED,
)
def stripe_webhook_inbox_sensor(context: dg.SensorEvaluationContext):
    """New Stripe events in the webhook inbox start the update path (which then transforms and loads)."""
    conninfo = _conninfo()
    events = webhooks.pending_events(conninfo)
    _, others = automation.split_events(events)
    if not others:
        return dg.SkipReason("no new webhook events")
    if _waiting_runs(context.instance, update_path_job.name):
        # The waiting run reads Stripe's events from its cursor: it will see these too.
        return dg.SkipReason(f"{len(others)} new events; an update_path_job run is already waiting")
    key = f"inbox-{others[-1]['event_id']}"
    webhooks.mark_processed(conninfo, [e["event_id"] for e in others], key)
    return dg.RunRequest(run_key=key, tags={"stripe_sage/trigger": "webhook",
                                            "stripe_sage/events": str(len(others))})


@dg.sensor(
    job=update_path_job,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def payout_paid_sensor(context: dg.SensorEvaluationContext):
    """`payout.paid` posts that payout's bank leg, `payout.failed` its reversal: the update path, then the chain."""
    conninfo = _conninfo()
    payouts, _ = automation.split_events(webhooks.pending_events(conninfo))
    if not payouts:
        return dg.SkipReason("no payout events")
    key = f"payout-{payouts[-1]['event_id']}"
    webhooks.mark_processed(conninfo, [e["event_id"] for e in payouts], key)
    kinds = sorted({e["event_type"] for e in payouts})
    return dg.RunRequest(run_key=key, tags={"stripe_sage/trigger": ",".join(kinds),
                                            "stripe_sage/payouts": ",".join(sorted({e["object_id"] for e in payouts}))[:200]})


@dg.sensor(
    job=update_path_job,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING if EVENTS_SOURCE == "events_api" else dg.DefaultSensorStatus.STOPPED,
)
def stripe_events_poll_sensor(context: dg.SensorEvaluationContext, stripe: StripeResource):
    """Without a public URL: poll Stripe's Events API for its newest event; a new one starts the update path."""
    newest = stripe.reader().request("/v1/events", limit=1).get("data") or []
    if not newest or newest[0]["id"] == context.cursor:
        return dg.SkipReason("no new Stripe events")
    context.update_cursor(newest[0]["id"])
    return dg.RunRequest(run_key=f"events-{newest[0]['id']}", tags={"stripe_sage/trigger": "events_api"})


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=SENSOR_INTERVAL_S)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext) -> None:
    """A failed run raises an alert: a row in sage_sync.alerts, the log, and the configured webhook, with a next step."""
    run = context.dagster_run
    error = context.failure_event.message or ""
    for step_event in context.get_step_failure_events():
        err = step_event.event_specific_data.error if step_event.event_specific_data else None
        if err is not None:
            error += "\n" + err.to_string()
    kind, next_step = alerts.classify_failure(error)
    alerts.raise_alert(
        _conninfo(),
        severity="critical" if kind == "credentials" else "error",
        kind=kind,
        title=f"{run.job_name} failed",
        message=error[:4000],
        next_step=next_step,
        run_id=run.run_id,
        job_name=run.job_name,
        details={"tags": {k: v for k, v in run.tags.items() if not k.startswith("dagster/")}},
        webhook_url=load_settings().alert_webhook_url,
    )


defs = dg.Definitions(
    jobs=[transform_job],
    schedules=[hourly_extract_schedule, update_path_schedule],
    sensors=[
        transform_after_extract_sensor,
        load_after_transform_sensor,
        stripe_webhook_inbox_sensor,
        payout_paid_sensor,
        stripe_events_poll_sensor,
        run_failure_alert_sensor,
        dead_run_recovery_sensor,
    ],
)
