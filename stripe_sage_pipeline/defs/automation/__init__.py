"""Automation: the hourly schedule, the chain extract → transform → load, the event fast path, alerts.

    hourly_extract_schedule ─▶ extract_job ─┐
    update_path_schedule ─▶ update_path_job ┴(success)─▶ transform_job ─(success)─▶ load_job (days with work)
    inbox / payout sensors, events poll ─▶ fast_path_job (re-fetch, rebuild + checks, post the day) ─(success)─▶ ↑
    any failed run ─▶ run_failure_alert_sensor ─▶ sage_sync.alerts (+ log, + Slack-compatible webhook)

Race-free by construction: one build of the marts at a time and no load while one runs (the marts lock
in transform/marts.py, the `finance_marts` pool, and the run tag that dagster.yaml limits to one run);
inbox events are claimed under the run key of the run that handles them, and a claim whose run was
never created is requested again under the same key.
"""

from datetime import UTC, datetime

import dagster as dg

from stripe_sage_pipeline.automation import rules as automation
from stripe_sage_pipeline.defs.automation.recovery import dead_run_recovery_sensor
from stripe_sage_pipeline.defs.ingestion import extract_job, stripe_events, update_path_job
from stripe_sage_pipeline.defs.loading import LOAD_ASSETS, daily_partitions, load_job
from stripe_sage_pipeline.defs.resources import StripeResource
from stripe_sage_pipeline.defs.transformation import transform_job
from stripe_sage_pipeline.extract import webhooks
from stripe_sage_pipeline.runtime import alerts
from stripe_sage_pipeline.runtime.db import database_url, libpq_url
from stripe_sage_pipeline.settings import load_settings
from stripe_sage_pipeline.transform.marts import MARTS_RUN_TAG, built_mapping

# Where Stripe events come from: `webhooks` (the receiver's inbox; needs a public URL) or
# `events_api` (poll Stripe's Events API; no inbound traffic needed).
EVENTS_SOURCE = load_settings().events_source
SENSOR_INTERVAL_S = load_settings().sensor_interval_s
# The event sensors look more often: their query is one indexed read, and their tick is part of what a
# webhook waits for before its entry is in Sage.
EVENT_SENSOR_INTERVAL_S = load_settings().event_sensor_interval_s
RUN_KEY_TAG = "dagster/run_key"


def _conninfo() -> str:
    return libpq_url(database_url())


WAITING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]


def _waiting_runs(instance: dg.DagsterInstance, job_name: str) -> list[dg.DagsterRun]:
    """Runs of a job that have not started yet: they will read whatever lands before they start."""
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=WAITING)))


fast_path_job = dg.define_asset_job(
    "fast_path_job",
    selection=dg.AssetSelection.assets(stripe_events)
    | dg.AssetSelection.groups("finance")
    | dg.AssetSelection.assets(*LOAD_ASSETS),
    partitions_def=daily_partitions,
    tags=MARTS_RUN_TAG,
    description="The fast path for Stripe events, in one run: the update path re-fetches the changed objects, the"
    " finance marts rebuild incrementally (only what changed) with their blocking checks, and the partition's day"
    " posts to Sage through the posting ledger. The hourly chain stays the safety net.",
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
    """After new Stripe data lands in staging, rebuild the finance marts and run the blocking checks.

    A transform (or fast path) that has not started yet will read this data too: one rebuild serves
    both. One that has started may have read staging already, so another is requested; the queue
    (one marts run at a time) and the marts lock run it after the first, never beside it.
    """
    run = context.dagster_run
    for job_name in (transform_job.name, fast_path_job.name):
        if _waiting_runs(context.instance, job_name):
            return dg.SkipReason(f"a {job_name} run is already waiting in the queue: it will read this data")
    return dg.RunRequest(run_key=f"transform-after-{run.run_id}", tags={"stripe_sage/after": run.job_name})


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[transform_job, fast_path_job],
    request_job=load_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
)
def load_after_transform_sensor(context: dg.RunStatusSensorContext):
    """After the marts pass their checks, post exactly the days on which something is left to post."""
    today = datetime.now(UTC).date()
    first = daily_partitions.start.date()
    days = automation.days_to_load(_conninfo(), today=today, first_day=first)
    run_id = context.dagster_run.run_id
    waiting = {r.tags.get("dagster/partition") for r in _waiting_runs(context.instance, load_job.name)}
    # Loads go ahead of other queued runs: they are what finance waits for.
    return [
        dg.RunRequest(
            run_key=f"load-{d:%Y-%m-%d}-after-{run_id}", partition_key=f"{d:%Y-%m-%d}", tags={"dagster/priority": "10"}
        )
        for d in days
        if f"{d:%Y-%m-%d}" not in waiting
    ]


def _fast_path_day(conninfo: str, events: list[dict]) -> str:
    mapping = built_mapping(conninfo)
    day = automation.event_day(events, mapping.posting_date.timezone if mapping else "UTC")
    return f"{max(day, daily_partitions.start.date()):%Y-%m-%d}"


def _launched(instance: dg.DagsterInstance, keys: list[str]) -> set[str]:
    if not keys:
        return set()
    runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: keys}))
    return {r.tags.get(RUN_KEY_TAG) for r in runs}


def _fast_path_requests(
    context: dg.SensorEvaluationContext, conninfo: str, events: list[dict], prefix: str, tags: dict[str, str]
) -> list[dg.RunRequest]:
    """Run requests of the fast path for new inbox events, and again for claims whose run was never created.

    New events are claimed (marked with the run key) before the request is returned. A run key whose
    run does not exist at the next tick (the launch failed, the daemon died in between) is requested
    again, with the same key and partition, so the events are handled once their run is launched.
    """
    claims = automation.inbox_claims(conninfo, prefix, datetime.now(UTC) - automation.CLAIM_RECHECK)
    launched = _launched(context.instance, list(claims))
    requests = [
        dg.RunRequest(
            run_key=key,
            partition_key=_fast_path_day(conninfo, evs),
            tags={**tags, **tags_for(evs), "stripe_sage/relaunch": "true"},
        )
        for key, evs in automation.unlaunched_claims(claims, lambda k: k in launched).items()
    ]
    if events:
        waiting = _waiting_runs(context.instance, fast_path_job.name)
        if waiting:
            # A fast path run that has not started yet re-reads Stripe's events when it starts: it covers these.
            holder = waiting[0].tags.get(RUN_KEY_TAG) or waiting[0].run_id
            webhooks.mark_processed(conninfo, [e["event_id"] for e in events], holder)
            context.log.info(f"{len(events)} new events left to the waiting fast_path_job run {holder}")
        else:
            key = f"{prefix}{events[-1]['event_id']}"
            webhooks.mark_processed(conninfo, [e["event_id"] for e in events], key)
            requests.append(
                dg.RunRequest(
                    run_key=key, partition_key=_fast_path_day(conninfo, events), tags={**tags, **tags_for(events)}
                )
            )
    return requests


def tags_for(events: list[dict]) -> dict[str, str]:
    """Run tags naming what a fast path run was asked for (events, and payouts when there are)."""
    tags = {"stripe_sage/events": str(len(events))}
    payouts = sorted({e["object_id"] for e in events if e["event_type"] in automation.PAYOUT_EVENTS and e["object_id"]})
    if payouts:
        tags["stripe_sage/payouts"] = ",".join(payouts)[:200]
    return tags


@dg.sensor(
    job=fast_path_job,
    minimum_interval_seconds=EVENT_SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING if EVENTS_SOURCE == "webhooks" else dg.DefaultSensorStatus.STOPPED,
)
def stripe_webhook_inbox_sensor(context: dg.SensorEvaluationContext):
    """New Stripe events in the webhook inbox start the fast path: one run from Stripe to Sage for their day."""
    conninfo = _conninfo()
    _, others = automation.split_events(webhooks.pending_events(conninfo))
    requests = _fast_path_requests(context, conninfo, others, "inbox-", {"stripe_sage/trigger": "webhook"})
    return requests or dg.SkipReason("no new webhook events")


@dg.sensor(
    job=fast_path_job,
    minimum_interval_seconds=EVENT_SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def payout_paid_sensor(context: dg.SensorEvaluationContext):
    """`payout.paid` posts that payout's bank leg, `payout.failed` its reversal: the fast path for their day."""
    conninfo = _conninfo()
    payouts, _ = automation.split_events(webhooks.pending_events(conninfo))
    kinds = ",".join(sorted({e["event_type"] for e in payouts}))
    requests = _fast_path_requests(context, conninfo, payouts, "payout-", {"stripe_sage/trigger": kinds})
    return requests or dg.SkipReason("no payout events")


@dg.sensor(
    job=fast_path_job,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING if EVENTS_SOURCE == "events_api" else dg.DefaultSensorStatus.STOPPED,
)
def stripe_events_poll_sensor(context: dg.SensorEvaluationContext, stripe: StripeResource):
    """Without a public URL: poll Stripe's Events API for its newest event; a new one starts the fast path."""
    newest = stripe.reader().request("/v1/events", limit=1).get("data") or []
    if not newest or newest[0]["id"] == context.cursor:
        return dg.SkipReason("no new Stripe events")
    context.update_cursor(newest[0]["id"])
    event = {"event_created": datetime.fromtimestamp(newest[0]["created"], UTC)}
    return dg.RunRequest(
        run_key=f"events-{newest[0]['id']}",
        partition_key=_fast_path_day(_conninfo(), [event]),
        tags={"stripe_sage/trigger": "events_api"},
    )


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
    jobs=[fast_path_job],
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
