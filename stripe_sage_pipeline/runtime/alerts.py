"""Alerts for the people on call: a row in `sage_sync.alerts`, a log line, and an optional chat webhook.

The run-failure sensor calls `classify_failure()` on the failed run's error and `raise_alert()` with the
result. Each alert carries a next step, so whoever reads it at 3 a.m. knows what to do. Every text field
goes through `scrub()` first: error messages from HTTP clients quote headers and URLs, and those may hold
API keys or passwords.

`STRIPE_SAGE_ALERT_WEBHOOK_URL` names a Slack-compatible incoming webhook (`{"text", "blocks"}`); unset,
alerts go to the table and the log only.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb

from stripe_sage_pipeline.settings import load_settings, secret_values

log = logging.getLogger(__name__)

WEBHOOK_URL_ENV = "STRIPE_SAGE_ALERT_WEBHOOK_URL"  # read through settings (alert_webhook_url)
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_RETRIES = 2
_RETRY_BACKOFF_S = 0.5

ALERTS_DDL = """
create schema if not exists sage_sync;
create table if not exists sage_sync.alerts (
    id bigserial primary key,
    raised_at timestamptz not null default now(),
    severity text not null,
    kind text not null,
    title text not null,
    message text,
    next_step text,
    run_id text,
    job_name text,
    details jsonb,
    webhook_status text
);
create index if not exists alerts_raised_at_idx on sage_sync.alerts (raised_at desc);
"""

NEXT_STEPS: dict[str, str] = {
    "credentials": (
        "Check STRIPE_API_KEY / SAGEPRO_USER and SAGEPRO_PASSWORD and the Sage role `post`; then re-run the failed run"
    ),
    "blocking_check": (
        "Open the check's metadata in the Dagster UI: it lists the offending rows; "
        "fix the source or the mapping, then re-run"
    ),
    "rate_limit": (
        "Stripe or Sage kept answering 429: lower STRIPE_RATE_LIMIT_PER_S or STRIPE_SAGE_MAX_CONCURRENT_RUNS "
        "(or wait for the other client using the same key), then re-run the failed run"
    ),
    "malformed_source": (
        "Look at stripe_staging._rejected_objects: it holds the object with the field and the problem; "
        "fix the object in Stripe or the mapping, then re-run the partition"
    ),
    "worker_died": (
        "Nothing to do at first: the run was marked failed because its worker process died (killed, OOM, reboot)"
        " and run_retries re-runs it from failure; if the retries die too, look for OOM kills (dmesg) and memory"
    ),
    "sage_unavailable": (
        "Sage did not answer (the message names the URL and the cause): check the Sage Pro facade (or Sage"
        " Intacct's status) and the network, then re-run the failed day; nothing was posted twice, the ledger"
        " resends the same keys"
    ),
    "quality_check": (
        "A staging Great Expectations check failed: the message names the check and the rows; fix the source or"
        " the check, then re-run (nothing downstream read the bad rows)"
    ),
    "other": "Open the run in the Dagster UI and read the failed step's log; fix the cause, then re-execute from failure",
}

# First match wins: a credentials failure can surface inside an extraction error, and it is the more
# actionable diagnosis. Bare status codes only count next to HTTP wording, so amounts such as 4010 do not.
_RULES: list[tuple[str, re.Pattern[str]]] = [
    (
        "credentials",
        re.compile(
            r"AuthenticationError|CredentialsError|Invalid API Key|\bUnauthorized\b|\bForbidden\b"
            r"|\b(?:HTTP|status(?:[ _]code)?|http_status)\s*[:=]?\s*40[13]\b|\b40[13]\s+(?:Unauthorized|Forbidden)",
            re.IGNORECASE,
        ),
    ),
    (
        "blocking_check",
        re.compile(r"blocking asset checks? failed|DagsterAssetCheckFailedError|blocking check", re.IGNORECASE),
    ),
    ("malformed_source", re.compile(r"ExtractionError|MalformedObject|_rejected_objects", re.IGNORECASE)),
    ("worker_died", re.compile(r"run worker \(pid \d+\) is gone", re.IGNORECASE)),
    ("sage_unavailable", re.compile(r"SageUnavailable|Sage (?:Pro|Intacct) is unavailable", re.IGNORECASE)),
    ("quality_check", re.compile(r"staging check(?:s|\(s\))? failed", re.IGNORECASE)),
    (
        "rate_limit",
        re.compile(
            r"RateLimitError|TooManyRequests|Too Many Requests|rate[ _-]?limit"
            r"|\b(?:HTTP|status(?:[ _]code)?|http_status)\s*[:=]?\s*429\b",
            re.IGNORECASE,
        ),
    ),
]

_SECRET_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(?:sk|rk)_(?:test|live)_\w+"), "***"),
    (re.compile(r"\bwhsec_\w+"), "***"),
    (re.compile(r"https://hooks\.slack\.com/\S+"), "***"),
    (re.compile(r"\b(Basic|Bearer)\s+[A-Za-z0-9+/=._~-]+"), r"\1 ***"),
    # user:password@ in any URL (database URLs above all)
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^@/?#\s]+@", re.IGNORECASE), r"\1***@"),
]


def ensure_alerts(conn: psycopg.Connection) -> None:
    """Create `sage_sync.alerts` (and its schema) if missing; commits unless in autocommit."""
    # Skip the DDL when the table exists: concurrent `create schema if not exists` can still collide.
    if conn.execute("select to_regclass('sage_sync.alerts')").fetchone()[0] is None:
        conn.execute(ALERTS_DDL)
    if not conn.autocommit:
        conn.commit()


def classify_failure(error_text: str) -> tuple[str, str]:
    """(kind, next_step) for a failed run's error text; kinds: credentials, blocking_check, malformed_source,
    worker_died, sage_unavailable, quality_check, rate_limit, other."""
    for kind, pattern in _RULES:
        if pattern.search(error_text or ""):
            return kind, NEXT_STEPS[kind]
    return "other", NEXT_STEPS["other"]


def scrub(text: str | None) -> str | None:
    """`text` with secrets replaced by `***`: the values of the secret env vars, API keys, webhook secrets,
    Basic/Bearer credentials and passwords in URLs."""
    if not text:
        return text
    # Longest first, so a value that contains another is replaced whole; very short values would
    # shred ordinary words and are not real secrets anyway.
    for value in secret_values(min_length=6):
        text = text.replace(value, "***")
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _scrub_json(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {str(k): _scrub_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub_json(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return scrub(str(value))


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_payload(
    *, severity: str, kind: str, title: str, message: str, next_step: str, run_id: str | None, job_name: str | None
) -> dict[str, Any]:
    """Slack-compatible JSON for an alert: `text` for notifications and clients without blocks, `blocks` for display."""
    icon = {"critical": ":rotating_light:", "error": ":red_circle:", "warning": ":warning:"}.get(
        severity.lower(), ":information_source:"
    )
    context = [f"*kind:* `{kind}`", f"*severity:* {severity}"]
    if job_name:
        context.append(f"*job:* `{job_name}`")
    if run_id:
        context.append(f"*run:* `{run_id}`")
    # Slack's limits: 150 characters in a header, 3000 in a section's text.
    return {
        "text": _truncate(f"{icon} [{severity.upper()}] {title}", 3000),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _truncate(f"[{severity.upper()}] {title}", 150)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _truncate(message or "(no message)", 3000)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _truncate(f"*Next step:* {next_step}", 3000)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]},
        ],
    }


def post_webhook(
    url: str, payload: dict[str, Any], retries: int = WEBHOOK_RETRIES, timeout_s: float = WEBHOOK_TIMEOUT_S
) -> str:
    """POST `payload` to `url`, retrying network errors, 429 and 5xx; returns "sent <status>" or "failed: …"."""
    status = "failed: not attempted"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(_RETRY_BACKOFF_S * attempt)
        try:
            response = httpx.post(url, json=payload, timeout=timeout_s)
        except httpx.HTTPError as exc:
            # The webhook URL itself is a credential (Slack's carry a token): keep it out of the status.
            detail = str(exc).replace(url, "<webhook url>")
            status = f"failed: {type(exc).__name__}: {scrub(detail)}"[:300]
            continue
        if response.is_success:
            return f"sent {response.status_code}"
        status = f"failed: HTTP {response.status_code}"
        if response.status_code != 429 and response.status_code < 500:
            break  # the receiver rejected the payload; sending it again will not change its mind
    return status


def raise_alert(
    conninfo: str,
    *,
    severity: str,
    kind: str,
    title: str,
    message: str,
    next_step: str,
    run_id: str | None = None,
    job_name: str | None = None,
    details: dict[str, Any] | None = None,
    webhook_url: str | None = None,
) -> int:
    """Record an alert in `sage_sync.alerts`, log it and, when a webhook is configured (`webhook_url` or
    `STRIPE_SAGE_ALERT_WEBHOOK_URL`), post it as Slack-compatible JSON. Returns the alert's id.

    Secrets are scrubbed from every text field and from `details` before anything is stored or sent.
    """
    title, message, next_step = scrub(title) or "", scrub(message) or "", scrub(next_step) or ""
    run_id, job_name = scrub(run_id), scrub(job_name)
    clean_details = _scrub_json(details) if details is not None else None
    url = webhook_url if webhook_url is not None else (load_settings().alert_webhook_url or "")

    # The row goes in first, so the alert survives even if the webhook call hangs or the process dies.
    with psycopg.connect(conninfo, autocommit=True) as conn:
        ensure_alerts(conn)
        alert_id = conn.execute(
            "insert into sage_sync.alerts (severity, kind, title, message, next_step, run_id, job_name, details, webhook_status) "
            "values (%s, %s, %s, %s, %s, %s, %s, %s, %s) returning id",
            (
                severity,
                kind,
                title,
                message,
                next_step,
                run_id,
                job_name,
                Jsonb(clean_details) if clean_details is not None else None,
                "pending" if url else "not configured",
            ),
        ).fetchone()[0]

    level = logging.ERROR if severity.lower() in ("error", "critical") else logging.WARNING
    log.log(
        level,
        "alert %d [%s/%s] %s: %s | next step: %s%s",
        alert_id,
        severity,
        kind,
        title,
        message,
        next_step,
        f" | run {run_id}" if run_id else "",
    )

    if url:
        payload = slack_payload(
            severity=severity,
            kind=kind,
            title=title,
            message=message,
            next_step=next_step,
            run_id=run_id,
            job_name=job_name,
        )
        status = post_webhook(url, payload)
        if not status.startswith("sent"):
            log.warning("alert %d: webhook %s", alert_id, status)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("update sage_sync.alerts set webhook_status = %s where id = %s", (status, alert_id))
    return alert_id


def recent_alerts(conninfo: str, limit: int = 50) -> list[dict[str, Any]]:
    """The latest alerts, newest first, as dicts (for the CLI, the UI and tests)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        ensure_alerts(conn)
        cur = conn.execute("select * from sage_sync.alerts order by id desc limit %s", (limit,))
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


__all__ = [
    "NEXT_STEPS",
    "classify_failure",
    "ensure_alerts",
    "post_webhook",
    "raise_alert",
    "recent_alerts",
    "scrub",
    "slack_payload",
]
