"""Alerts: failure classification, the alerts row, the Slack-compatible webhook (a real local receiver), scrubbing."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from stripe_sage_pipeline.runtime import alerts
from stripe_sage_pipeline.runtime.alerts import NEXT_STEPS, classify_failure, raise_alert, scrub
from stripe_sage_pipeline.runtime.db import libpq_url


class Receiver:
    """A tiny chat-webhook stand-in on 127.0.0.1: records each POST; answers `statuses` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.requests: list[dict] = []
        self.statuses = list(statuses or [])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append({"headers": dict(self.headers), "json": json.loads(body)})
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/T000/B000"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def conninfo(fresh_db, monkeypatch) -> str:
    monkeypatch.delenv(alerts.WEBHOOK_URL_ENV, raising=False)
    monkeypatch.setattr(alerts, "_RETRY_BACKOFF_S", 0.05)
    return libpq_url(fresh_db)


def alert_rows(conninfo: str) -> list[dict]:
    with psycopg.connect(conninfo) as conn:
        cur = conn.execute("select * from sage_sync.alerts order by id")
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@pytest.mark.parametrize(
    "error_text, kind",
    [
        ("stripe._error.AuthenticationError: Request req_1: Invalid API Key provided: sk_test_****abcd", "credentials"),
        ("httpx: HTTP 401 from Stripe", "credentials"),
        ("CredentialsError: Sage answered 403 Forbidden: the user lacks the role `post`", "credentials"),
        ("SageError: status_code=401 Unauthorized", "credentials"),
        (
            "dagster._core.errors.DagsterAssetCheckFailedError: 1 blocking asset check failed with ERROR severity:\n"
            "finance/fct_journal_lines: ['journal_lines_balance']",
            "blocking_check",
        ),
        ("stripe._error.RateLimitError: Too many requests hit the API too quickly.", "rate_limit"),
        ("SageError: HTTP 429 TooManyRequests after 5 attempts", "rate_limit"),
        (
            "stripe_sage_pipeline.extract.extract.ExtractionError: charges window 2026-01-01-00:00: "
            "charge ch_123 field amount: expected integer; nothing committed for this window "
            "(the object is kept in stripe_staging._rejected_objects)",
            "malformed_source",
        ),
        ("KeyError: 'account'", "other"),
        ("ValueError: amount 4010 does not balance", "other"),  # a bare 401x is not an HTTP status
        ("", "other"),
    ],
)
def test_classify_failure(error_text, kind):
    got_kind, next_step = classify_failure(error_text)
    assert got_kind == kind
    assert next_step == NEXT_STEPS[kind]


def test_next_steps_say_what_to_do():
    assert "STRIPE_API_KEY" in NEXT_STEPS["credentials"] and "SAGEPRO_PASSWORD" in NEXT_STEPS["credentials"]
    assert "`post`" in NEXT_STEPS["credentials"] and "re-run" in NEXT_STEPS["credentials"]
    assert "metadata" in NEXT_STEPS["blocking_check"] and "offending rows" in NEXT_STEPS["blocking_check"]
    assert "stripe_staging._rejected_objects" in NEXT_STEPS["malformed_source"]


def test_scrub(monkeypatch):
    monkeypatch.setenv("SAGEPRO_PASSWORD", "hunter2-sage-pw")
    monkeypatch.setenv("STRIPE_API_KEY", "opaque-key-value-123")
    text = (
        "key sk_live_51Habc rk_test_9xyz whsec_abc123 Authorization: Basic dXNlcjpwYXNz= "
        "db postgresql://app:s3cr3t@db.example:5432/x pw hunter2-sage-pw key opaque-key-value-123"
    )
    clean = scrub(text)
    for secret in (
        "sk_live_51Habc",
        "rk_test_9xyz",
        "whsec_abc123",
        "dXNlcjpwYXNz",
        "s3cr3t",
        "hunter2-sage-pw",
        "opaque-key-value-123",
    ):
        assert secret not in clean
    assert "postgresql://app:***@db.example:5432/x" in clean
    assert scrub(None) is None


def test_raise_alert_writes_row_posts_slack_json_and_scrubs(conninfo, monkeypatch, caplog):
    monkeypatch.setenv("STRIPE_API_KEY", "sk_live_supersecretvalue42")
    monkeypatch.setenv("SAGEPRO_PASSWORD", "correct-horse-battery")
    kind, next_step = classify_failure("AuthenticationError: Invalid API Key provided: sk_live_supersecretvalue42")
    with Receiver() as receiver, caplog.at_level(logging.WARNING, logger="stripe_sage_pipeline.runtime.alerts"):
        monkeypatch.setenv(alerts.WEBHOOK_URL_ENV, receiver.url)
        alert_id = raise_alert(
            conninfo,
            severity="error",
            kind=kind,
            title="Run failed: hourly_extract_job",
            message="AuthenticationError: Invalid API Key provided: sk_live_supersecretvalue42 "
            "(Sage login pipeline/correct-horse-battery)",
            next_step=next_step,
            run_id="run-abc",
            job_name="hourly_extract_job",
            details={"step": "extract_charges", "headers": {"Authorization": "Basic cGlwZWxpbmU6c2VjcmV0"}},
        )

    [row] = alert_rows(conninfo)
    assert row["id"] == alert_id
    assert (row["severity"], row["kind"], row["run_id"], row["job_name"]) == (
        "error",
        "credentials",
        "run-abc",
        "hourly_extract_job",
    )
    assert row["next_step"] == NEXT_STEPS["credentials"]
    assert row["webhook_status"] == "sent 200"
    assert row["raised_at"] is not None
    assert row["details"]["step"] == "extract_charges"

    [request] = receiver.requests
    payload = request["json"]
    assert request["headers"]["Content-Type"] == "application/json"
    assert set(payload) == {"text", "blocks"}
    assert "Run failed: hourly_extract_job" in payload["text"] and "ERROR" in payload["text"]
    header, message, step, context = payload["blocks"]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": "[ERROR] Run failed: hourly_extract_job"},
    }
    assert message["type"] == "section" and message["text"]["type"] == "mrkdwn"
    assert "Invalid API Key provided: *** (Sage login pipeline/***)" in message["text"]["text"]
    assert step["text"]["text"] == f"*Next step:* {NEXT_STEPS['credentials']}"
    assert context["type"] == "context" and "run-abc" in context["elements"][0]["text"]

    everything = json.dumps(payload) + json.dumps(row, default=str) + caplog.text
    for secret in ("sk_live_supersecretvalue42", "correct-horse-battery", "cGlwZWxpbmU6c2VjcmV0"):
        assert secret not in everything
    assert "credentials" in caplog.text and caplog.records[0].levelno == logging.ERROR


def test_raise_alert_without_webhook(conninfo, caplog):
    with caplog.at_level(logging.WARNING, logger="stripe_sage_pipeline.runtime.alerts"):
        alert_id = raise_alert(
            conninfo,
            severity="warning",
            kind="blocking_check",
            title="Blocking check failed",
            message="journal_lines_balance failed for 2026-01-05",
            next_step=NEXT_STEPS["blocking_check"],
        )
    [row] = alert_rows(conninfo)
    assert row["id"] == alert_id and row["webhook_status"] == "not configured" and row["details"] is None
    assert caplog.records[0].levelno == logging.WARNING


def test_webhook_retries_then_succeeds(conninfo):
    with Receiver(statuses=[503, 500]) as receiver:
        raise_alert(
            conninfo, severity="error", kind="other", title="t", message="m", next_step="n", webhook_url=receiver.url
        )
    assert len(receiver.requests) == 3  # two retries
    assert alert_rows(conninfo)[0]["webhook_status"] == "sent 200"


def test_webhook_failure_is_recorded_not_raised(conninfo):
    with Receiver(statuses=[500, 500, 500, 500]) as receiver:
        raise_alert(
            conninfo, severity="error", kind="other", title="t", message="m", next_step="n", webhook_url=receiver.url
        )
        assert len(receiver.requests) == 3
    with Receiver(statuses=[400]) as receiver:  # a client error is not retried
        raise_alert(
            conninfo, severity="error", kind="other", title="t", message="m", next_step="n", webhook_url=receiver.url
        )
        assert len(receiver.requests) == 1
    # Nothing listens here any more: a connection error, with the (secret-bearing) URL kept out of the status.
    raise_alert(
        conninfo, severity="error", kind="other", title="t", message="m", next_step="n", webhook_url=receiver.url
    )
    statuses = [r["webhook_status"] for r in alert_rows(conninfo)]
    assert statuses[:2] == ["failed: HTTP 500", "failed: HTTP 400"]
    assert statuses[2].startswith("failed: ConnectError")
    assert "/hooks/T000/B000" not in statuses[2]


def test_suspense_postings_and_held_items_raise_one_alert_each_per_distinct_set(conninfo):
    """A day with a line booked to 9999 Suspense and a held payout summary: one alert each, with the refs and the
    net per currency; loading the same day again does not alert again, a new suspense entry does."""
    from datetime import date
    from types import SimpleNamespace

    from stripe_sage_pipeline.automation.attention import Attention, held_items, raise_attention_alerts, suspense_lines

    day = date(2026, 7, 1)
    with psycopg.connect(conninfo) as conn:
        conn.execute("create schema finance")
        conn.execute(
            "create table finance.fct_journal_lines (entry_id text, external_ref text, posting_date date,"
            " is_selected_mode boolean, line_number int, account_code text, debit bigint, credit bigint,"
            " currency text, is_unmapped boolean, accounting_category text, balance_transaction_id text)"
        )
        conn.execute(
            "insert into finance.fct_journal_lines values"
            " ('je1', 'txn_MAPPED', '2026-07-01', true, 1, '1150', 1000, 0, 'usd', false, 'charge', 'txn_MAPPED'),"
            " ('je1', 'txn_MAPPED', '2026-07-01', true, 2, '4000', 0, 1000, 'usd', false, 'charge', 'txn_MAPPED'),"
            " ('je2', 'txn_ODD', '2026-07-01', true, 1, '1150', 250, 0, 'usd', false, 'climate', 'txn_ODD'),"
            " ('je2', 'txn_ODD', '2026-07-01', true, 2, '9999', 0, 250, 'usd', true, 'climate', 'txn_ODD'),"
            " ('je3', 'txn_OTHERMODE', '2026-07-01', false, 1, '9999', 0, 70, 'usd', true, 'climate', 'txn_OTHERMODE')"
        )
        lines = suspense_lines(conn, day, "9999")
    assert [(ln["external_ref"], ln["account_code"], ln["credit"]) for ln in lines] == [("txn_ODD", "9999", 250)]
    held = held_items(
        [
            SimpleNamespace(resource="journal-entries", external_ref="po_1", hold_reason="PayoutNotReconciled:pending"),
            SimpleNamespace(resource="journal-entries", external_ref="txn_MAPPED", hold_reason=None),
        ]
    )
    att = Attention(day, suspense=lines, held=held)

    first = raise_attention_alerts(conninfo, att, run_id="run-1", job_name="load_job")
    assert len(first) == 2
    rows = {r["kind"]: r for r in alert_rows(conninfo)}
    assert "txn_ODD" in rows["suspense_posting"]["message"] and "climate" in rows["suspense_posting"]["message"]
    assert "'usd': -250" in rows["suspense_posting"]["message"]
    assert rows["suspense_posting"]["severity"] == "warning" and rows["suspense_posting"]["run_id"] == "run-1"
    assert (
        "po_1" in rows["held_entries"]["message"] and "PayoutNotReconciled:pending" in rows["held_entries"]["message"]
    )
    assert att.metadata()["suspense_lines"] == 1

    assert raise_attention_alerts(conninfo, att, run_id="run-2") == []  # the same items: no second alert
    more = Attention(day, suspense=[*lines, {**lines[0], "external_ref": "txn_ODD2", "entry_id": "je4"}])
    assert len(raise_attention_alerts(conninfo, more)) == 1


def test_new_failure_kinds_and_database_url_passwords_are_scrubbed(monkeypatch):
    assert classify_failure("run worker (pid 4242) is gone: killed or crashed")[0] == "worker_died"
    assert (
        classify_failure("Sage Pro is unavailable at http://127.0.0.1:9/sagepro: ConnectError")[0] == "sage_unavailable"
    )
    assert classify_failure("Sage Intacct is unavailable at http://127.0.0.1:9/ia/api/v1: HTTP 503")[0] == (
        "sage_unavailable"
    )
    assert classify_failure("2 staging check(s) failed (nothing downstream ...)")[0] == "quality_check"
    monkeypatch.setenv("STRIPE_SAGE_DATABASE_URL", "postgresql://etl:Pa%24%24word-42@db.internal:5432/finance")
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", "postgresql+psycopg2://dagster:other-secret-7@db.internal/dagster")
    text = scrub("could not connect (password Pa$$word-42), also Pa%24%24word-42 and other-secret-7 at db.internal")
    assert "Pa$$word-42" not in text and "Pa%24%24word-42" not in text and "other-secret-7" not in text
    assert "db.internal" in text  # the host is not a secret
