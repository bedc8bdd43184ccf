"""The operated system: Stripe events through the webhook receiver and the sensors, to staging and Sage.

Each test plays the daemon's part by hand: it evaluates the real sensors and runs the jobs they request,
in order, against real servers (Stripe emulator, webhook receiver, Sage sandbox, Postgres).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import dagster as dg
import psycopg
import pytest
import stripe
import yaml

from stripe_sage_pipeline.automation import rules as automation
from stripe_sage_pipeline.extract import webhooks
from stripe_sage_pipeline.load.post import gl_movement, make_client
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.settings import PROJECT_ROOT
from stripe_sage_sandboxes.sage import SageSandboxConfig, SageSandboxServer
from stripe_sage_sandboxes.stripe_emulator import EmulatorConfig, EmulatorServer, EmulatorState, load_golden

KEY = "sk_test_emulator"
SECRET = "whsec_emulator"


class Pipeline:
    """Servers, definitions and an instance wired together for one test."""

    def __init__(
        self,
        conninfo: str,
        emulator: EmulatorServer,
        state: EmulatorState,
        sage: SageSandboxServer,
        receiver: webhooks.WebhookServer,
    ):
        from stripe_sage_pipeline.definitions import defs

        self.conninfo, self.emulator, self.state, self.sage, self.receiver = conninfo, emulator, state, sage, receiver
        self.defs = defs()
        self.instance = dg.DagsterInstance.ephemeral()
        self.transforms: list[dg.ExecuteInProcessResult] = []

    def run(self, job: str, **kwargs) -> dg.ExecuteInProcessResult:
        result = self.defs.resolve_job_def(job).execute_in_process(instance=self.instance, **kwargs)
        assert result.success, job
        return result

    def first_load(self) -> None:
        self.run(
            "stripe_history_job",
            run_config={
                "ops": {"extract_history": {"config": {"start": "2026-06-20-00:00", "end": "2026-07-16-23:00"}}}
            },
        )
        self.run("update_path_job")
        self.after_staging_changed()

    def after_staging_changed(self) -> list[str]:
        """transform_job, then the load runs the load sensor asks for; returns their partition keys."""
        from stripe_sage_pipeline.defs.automation import load_after_transform_sensor

        transform = self.run("transform_job")
        self.transforms.append(transform)
        ctx = dg.build_run_status_sensor_context(
            sensor_name="load_after_transform_sensor",
            dagster_instance=self.instance,
            dagster_run=transform.dagster_run,
            dagster_event=transform.get_run_success_event(),
        )
        requests = load_after_transform_sensor(ctx) or []
        for req in requests:
            self.run("load_job", partition_key=req.partition_key)
        return [r.partition_key for r in requests]

    def fast_path(self, req: dg.RunRequest) -> list[str]:
        """The fast path run a sensor asked for (as the daemon launches it), then the load sensor after it."""
        from stripe_sage_pipeline.defs.automation import load_after_transform_sensor

        run = self.run(
            "fast_path_job", partition_key=req.partition_key, tags={**req.tags, "dagster/run_key": req.run_key}
        )
        self.transforms.append(run)
        ctx = dg.build_run_status_sensor_context(
            sensor_name="load_after_transform_sensor",
            dagster_instance=self.instance,
            dagster_run=run.dagster_run,
            dagster_event=run.get_run_success_event(),
        )
        requests = load_after_transform_sensor(ctx) or []
        for r in requests:
            self.run("load_job", partition_key=r.partition_key)
        return [r.partition_key for r in requests]

    def ledger(self) -> list[tuple]:
        with psycopg.connect(self.conninfo) as conn:
            return conn.execute(
                "select resource, external_ref, version, status, content_hash, sage_id, payload::text"
                " from sage_sync.posting_ledger order by 1, 2, 3"
            ).fetchall()

    def gl(self) -> dict[str, str]:
        client, _ = make_client(self.sage.base_url, "pipeline", "pipeline-secret")
        try:
            return gl_movement(client).get("usd", {})
        finally:
            client.close()

    def wait_inbox(self, event_type: str, timeout: float = 20) -> list[dict]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            rows = [e for e in webhooks.pending_events(self.conninfo) if e["event_type"] == event_type]
            if rows:
                return rows
            time.sleep(0.1)
        raise AssertionError(f"no {event_type} event reached the inbox")


@pytest.fixture
def pipeline(fresh_db, golden_path, tmp_path, monkeypatch, request):
    mode = getattr(request, "param", "payout_summary")
    mapping = yaml.safe_load((PROJECT_ROOT / "mapping.yaml").read_text())
    mapping["posting_mode"] = mode
    (tmp_path / "mapping.yaml").write_text(yaml.safe_dump(mapping))
    conninfo = libpq_url(fresh_db)
    state = EmulatorState(EmulatorConfig(seed=1))
    load_golden(state, golden_path)
    emulator = EmulatorServer(state, port=0).start()
    receiver = webhooks.WebhookServer(conninfo, SECRET).start()
    state.config.webhook_urls = [receiver.url + webhooks.WEBHOOK_PATH]
    sage = SageSandboxServer(
        SageSandboxConfig(data_dir=tmp_path / "sage", rate_per_minute=6000, max_concurrent=8), port=0
    ).start()
    monkeypatch.setenv("STRIPE_SAGE_MAPPING", str(tmp_path / "mapping.yaml"))
    monkeypatch.setenv("STRIPE_API_BASE", emulator.url)
    monkeypatch.setenv("STRIPE_RATE_LIMIT_PER_S", "1000")
    monkeypatch.setenv("SAGEPRO_BASE_URL", sage.base_url)
    monkeypatch.setenv("SAGEPRO_RATE_PER_MINUTE", "5000")
    p = Pipeline(conninfo, emulator, state, sage, receiver)
    yield p
    emulator.stop()
    receiver.stop()
    sage.stop()


def test_payout_failed_event_reverses_its_bank_leg_through_the_payout_sensor(pipeline):
    """payout.failed → webhook → inbox → payout sensor → update path → marts → Sage: the bank leg is reversed."""
    from stripe_sage_pipeline.defs.automation import payout_paid_sensor, stripe_webhook_inbox_sensor
    from stripe_sage_pipeline.transform.build import dbt_target_dir

    targets = set(dbt_target_dir().glob("finance_dbt_models-*"))
    pipeline.first_load()
    assert pipeline.gl()["1010"] == "322.79"  # both golden payouts, as the bank statement shows
    built = {e.asset_key for e in pipeline.transforms[0].get_asset_materialization_events()}
    assert dg.AssetKey(["finance_staging", "stg_stripe__payouts"]) in built  # first build: views too
    # ... and the unit test of the classification, reported as its asset check.
    unit = [
        e
        for e in pipeline.transforms[0].get_asset_check_evaluations()
        if e.check_name == "classify_categories_fallback_and_suspense"
    ]
    assert [(e.asset_key, e.passed) for e in unit] == [
        (dg.AssetKey(["finance_intermediate", "int_balance_transactions__classified"]), True)
    ]
    # A successful dbt invocation leaves no per-run target folder behind.
    assert set(dbt_target_dir().glob("finance_dbt_models-*")) <= targets

    import httpx

    httpx.post(
        f"{pipeline.emulator.url}/_emulator/payouts/po_GOLD0001/fail", headers={"Authorization": f"Bearer {KEY}"}
    ).raise_for_status()
    events = pipeline.wait_inbox("payout.failed")
    assert events[0]["object_id"] == "po_GOLD0001"

    ctx = dg.build_sensor_context(instance=pipeline.instance, definitions=pipeline.defs)
    # The inbox sensor leaves payout events to the payout sensor.
    inbox = stripe_webhook_inbox_sensor(ctx)
    assert isinstance(inbox, dg.SkipReason)
    [req] = payout_paid_sensor(ctx)
    assert "payout.failed" in req.tags["stripe_sage/trigger"] and "po_GOLD0001" in req.tags["stripe_sage/payouts"]
    assert req.partition_key == datetime.now(UTC).strftime("%Y-%m-%d")  # the day the payout bounced

    # The fast path: one run re-fetches the payout, rebuilds the marts with their checks and posts the day.
    assert pipeline.fast_path(req) == []  # ... so the load sensor after it finds nothing left to post
    assert isinstance(payout_paid_sensor(ctx), dg.SkipReason)  # handled once
    with psycopg.connect(pipeline.conninfo) as conn:
        status = conn.execute("select status from stripe_staging.payouts where id = 'po_GOLD0001'").fetchone()[0]
    assert status == "failed"
    gl = pipeline.gl()
    # The bank no longer holds po_GOLD0001's 245.41; the money is back in Stripe clearing.
    assert gl["1010"] == "77.38"
    assert gl["1150"] == "245.41"
    assert sum(Decimal(v) for v in gl.values()) == 0
    with psycopg.connect(pipeline.conninfo) as conn:
        ledger = dict(
            conn.execute(
                "select external_ref, status from sage_sync.posting_ledger where resource = 'journal-entries'"
            ).fetchall()
        )
        failure_bt = conn.execute(
            "select failure_balance_transaction_id from stripe_staging.payouts where id = 'po_GOLD0001'"
        ).fetchone()[0]
    assert ledger["po_GOLD0001"] == "posted"  # the original entry stays: corrections never edit
    assert ledger[failure_bt] == "posted"  # the reversing entry, keyed by the payout_failure transaction
    # The fast path's build (same dbt code) rebuilt the tables, not the views, and the first
    # complete build was recorded with the code it ran.
    rebuilt = {e.asset_key for e in pipeline.transforms[1].get_asset_materialization_events()}
    assert dg.AssetKey(["finance", "fct_journal_lines"]) in rebuilt
    assert not any(k.path[0] == "finance_staging" for k in rebuilt)
    assert "classify_categories_fallback_and_suspense" not in {
        e.check_name for e in pipeline.transforms[1].get_asset_check_evaluations()
    }
    from stripe_sage_pipeline.transform import build as transform

    with psycopg.connect(pipeline.conninfo) as conn:
        code = conn.execute("select code_fingerprint from finance_config.build_state").fetchone()[0]
    assert code == transform.code_fingerprint()
    # Running the chain again posts nothing more.
    pipeline.after_staging_changed()
    assert pipeline.gl() == gl


@pytest.mark.parametrize("pipeline", ["detail"], indirect=True)
def test_a_webhook_event_reaches_sage_in_one_fast_path_run_and_the_hourly_chain_adds_nothing(pipeline):
    """Refund → signed webhook → inbox → sensor → fast_path_job → detail entry in Sage; a lost launch is re-requested.

    The hourly chain (update path → transform → loads) run afterwards finds nothing to post: the fast
    path posted exactly what it would have (same ledger rows), and nothing is posted twice.
    """
    from stripe_sage_pipeline.defs.automation import stripe_webhook_inbox_sensor

    pipeline.first_load()
    before = pipeline.gl()
    client = stripe.StripeClient(KEY, base_addresses={"api": pipeline.emulator.url})
    refund = client.v1.refunds.create(params={"charge": "ch_GOLD0003", "amount": 1000})
    pipeline.wait_inbox("refund.created")
    ctx = dg.build_sensor_context(instance=pipeline.instance, definitions=pipeline.defs)
    [req] = stripe_webhook_inbox_sensor(ctx)
    assert req.tags["stripe_sage/trigger"] == "webhook" and req.job_name in (None, "fast_path_job")
    # The launch is lost (the daemon died before creating the run): the event is no longer pending, but its
    # claim has no run, so the next tick requests the same run again.
    assert webhooks.pending_events(pipeline.conninfo) == []
    [again] = stripe_webhook_inbox_sensor(ctx)
    assert (again.run_key, again.partition_key) == (req.run_key, req.partition_key)
    assert again.tags["stripe_sage/relaunch"] == "true"
    assert pipeline.fast_path(again) == []
    assert isinstance(stripe_webhook_inbox_sensor(ctx), dg.SkipReason)  # launched: handled once
    with psycopg.connect(pipeline.conninfo) as conn:
        charge = conn.execute("select amount_refunded from stripe_staging.charges where id = 'ch_GOLD0003'").fetchone()[
            0
        ]
        r = conn.execute(
            "select amount, balance_transaction_id from stripe_staging.refunds where id = %s", (refund.id,)
        ).fetchone()
        posted = conn.execute(
            "select status, partition_date from sage_sync.posting_ledger where external_ref = %s", (r[1],)
        ).fetchone()
    assert charge == 1000 and r[0] == 1000
    assert posted == ("posted", datetime.strptime(req.partition_key, "%Y-%m-%d").date())
    after = pipeline.gl()
    # Detail mode: Dr Refunds 10.00 / Cr Clearing 10.00, posted on the refund's day.
    assert Decimal(after["4050"]) - Decimal(before.get("4050", "0")) == Decimal("10.00")
    assert Decimal(after["1150"]) - Decimal(before.get("1150", "0")) == Decimal("-10.00")

    # The safety net runs too: the same ledger rows, the same GL, one entry in Sage.
    ledger = pipeline.ledger()
    pipeline.run("update_path_job")
    assert pipeline.after_staging_changed() == []
    assert pipeline.ledger() == ledger
    assert pipeline.gl() == after
    sage, _ = make_client(pipeline.sage.base_url, "pipeline", "pipeline-secret")
    try:
        assert len(list(sage.list_all("/journal-entries", params={"external_ref": r[1]}))) == 1
    finally:
        sage.close()


def test_two_transforms_launched_together_never_overlap_and_build_what_one_build_does(pipeline, golden_path):
    """Two transform_job runs at once: their builds take turns (marts lock), and the marts equal one full build's."""
    import concurrent.futures

    pipeline.run(
        "stripe_history_job",
        run_config={"ops": {"extract_history": {"config": {"start": "2026-06-20-00:00", "end": "2026-07-16-23:00"}}}},
    )

    def transform_run(_: int) -> list[float]:
        """One transform_job run on its own instance; the times its dbt models were materialized."""
        with dg.DagsterInstance.ephemeral() as instance:  # disposed in the thread that used it
            result = pipeline.defs.resolve_job_def("transform_job").execute_in_process(instance=instance)
            assert result.success
            return [
                e.timestamp
                for e in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
                if e.dagster_event.asset_key != dg.AssetKey(["finance", "mapping"])
            ]

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        stamps = list(pool.map(transform_run, range(2)))
    # Every model a build writes is materialized while it holds the marts lock: the two windows are disjoint.
    windows = sorted((min(s), max(s)) for s in stamps)
    assert windows[0][1] < windows[1][0], windows

    # What one build of the golden history gives: the worked example's trial balance in both modes, each
    # line once (interleaved delete+insert builds would lose or double lines).
    from load_helpers import expected_tb
    from transform_helpers import golden, movement, query

    want = {k: v for k, v in expected_tb(golden(golden_path)).items() if v}
    for mode in ("detail", "payout_summary"):
        assert {k: v for k, v in movement(pipeline.conninfo, mode).items() if v} == want, mode
    [(lines, distinct)] = [
        tuple(r.values())
        for r in query(
            pipeline.conninfo,
            "select count(*) as n, count(distinct journal_line_id) as d from finance.fct_journal_lines",
        )
    ]
    assert lines == distinct > 0


def test_events_poll_sensor_starts_the_update_path_only_for_new_events(pipeline):
    """Without a public URL, the sensor polls the Events API: no new event → skip; a new event → one run request, once."""
    from stripe_sage_pipeline.defs.automation import stripe_events_poll_sensor

    def evaluate(cursor: str | None) -> tuple[dg.RunRequest | dg.SkipReason, str | None]:
        ctx = dg.build_sensor_context(
            instance=pipeline.instance,
            definitions=pipeline.defs,
            cursor=cursor,
            resources={"stripe": pipeline.defs.resources["stripe"]},
        )
        return stripe_events_poll_sensor(ctx), ctx.cursor

    first, cursor = evaluate(None)
    assert isinstance(first, dg.SkipReason) and cursor is None  # the golden account has no events yet
    client = stripe.StripeClient(KEY, base_addresses={"api": pipeline.emulator.url})
    client.v1.customers.update("cus_GOLD0001", params={"email": "ap2@acme.example"})
    [event] = client.v1.events.list(params={"limit": 1}).data
    assert event.type == "customer.updated"
    new, cursor = evaluate(cursor)
    assert isinstance(new, dg.RunRequest)
    assert (new.run_key, new.tags["stripe_sage/trigger"], cursor) == (f"events-{event.id}", "events_api", event.id)
    again, cursor = evaluate(cursor)
    assert isinstance(again, dg.SkipReason) and cursor == event.id  # processed once


def test_days_to_load_is_empty_before_the_first_build(fresh_db):
    """The load sensor's rule on a database without marts: nothing to load (tests/integration/test_days_to_load.py)."""
    assert automation.days_to_load(libpq_url(fresh_db), today=datetime(2026, 7, 20).date()) == []


class _AlertReceiver(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _AlertReceiver.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_failed_run_raises_an_alert_row_and_calls_the_webhook(fresh_db, monkeypatch):
    """A run that fails on bad Stripe credentials → alert row (credentials, with the next step) + Slack-style POST."""
    from stripe_sage_pipeline.defs.automation import run_failure_alert_sensor

    server = http.server.HTTPServer(("127.0.0.1", 0), _AlertReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _AlertReceiver.received = []
    state = EmulatorState(EmulatorConfig(api_key="sk_test_other"))
    emulator = EmulatorServer(state, port=0).start()
    monkeypatch.setenv("STRIPE_API_BASE", emulator.url)
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_wrong_key_123456")
    monkeypatch.setenv("STRIPE_SAGE_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
    try:
        from stripe_sage_pipeline.definitions import defs

        d = defs()
        instance = dg.DagsterInstance.ephemeral()
        result = d.resolve_job_def("update_path_job").execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        ctx = dg.build_run_status_sensor_context(
            sensor_name="run_failure_alert_sensor",
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            dagster_event=result.get_run_failure_event(),
        ).for_run_failure()
        run_failure_alert_sensor(ctx)
    finally:
        emulator.stop()
        server.shutdown()
    with psycopg.connect(libpq_url(fresh_db)) as conn:
        rows = conn.execute("select kind, title, next_step, message, webhook_status from sage_sync.alerts").fetchall()
    assert len(rows) == 1
    kind, title, next_step, message, webhook_status = rows[0]
    assert kind == "credentials" and title == "update_path_job failed"
    assert "STRIPE_API_KEY" in next_step
    assert "sk_test_wrong_key_123456" not in message  # secrets never reach the alert
    assert webhook_status == "sent 200"
    assert len(_AlertReceiver.received) == 1 and "update_path_job failed" in json.dumps(_AlertReceiver.received[0])


def test_a_payout_that_failed_before_the_first_load_posts_its_entry_and_its_reversal(pipeline):
    """Paid then failed before the pipeline ever saw it: the summary entry posts, then its reversal (bank nets to 0)."""
    import httpx

    httpx.post(
        f"{pipeline.emulator.url}/_emulator/payouts/po_GOLD0001/fail", headers={"Authorization": f"Bearer {KEY}"}
    ).raise_for_status()
    pipeline.first_load()
    gl = pipeline.gl()
    assert gl["1010"] == "77.38"  # po_GOLD0000 only: po_GOLD0001 went out and came back
    assert gl["1150"] == "245.41"
    assert gl["4000"] == "-475.00"  # the activity it swept is still booked
    with psycopg.connect(pipeline.conninfo) as conn:
        statuses = dict(
            conn.execute(
                "select external_ref, status from sage_sync.posting_ledger where resource = 'journal-entries'"
            ).fetchall()
        )
    assert statuses["po_GOLD0001"] == "posted"
