"""The Stripe webhook receiver: verify, de-duplicate, store in an inbox table, answer fast.

The receiver does no processing of its own. A valid event is written to `stripe_staging.webhook_inbox`
(keyed by event id, so Stripe's retries and replays land once) and answered with 200; a Dagster sensor
later reads `pending_events()` and turns them into runs, then calls `mark_processed()`. Keeping the
request path down to one INSERT is what keeps it inside Stripe's delivery timeout.

Nothing is refused silently: every rejected delivery (bad or missing signature, signed but not an event,
413, a timestamp far in the future, a known event id with a different body) is kept with its reason in
`stripe_staging.webhook_rejections` (the body too when it was validly signed), logged, and alerted
(`sage_sync.alerts`, at most one alert per ten minutes, with the counts per reason).

Run it with `stripe-sage webhooks [--host 127.0.0.1] [--port 8787]`; point a Stripe webhook endpoint (or
`stripe listen --forward-to`) at `http://HOST:PORT/stripe/webhooks`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import psycopg
import stripe
import uvicorn
from psycopg.pq import TransactionStatus
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/stripe/webhooks"
DEFAULT_MAX_BODY_BYTES = 256 * 1024
DEFAULT_TOLERANCE_S = 300  # Stripe's own default for signed timestamps
DEFAULT_PORT = 8787

INBOX_DDL = """
create schema if not exists stripe_staging;
create table if not exists stripe_staging.webhook_inbox (
    event_id text primary key,
    event_type text not null,
    object_type text,
    object_id text,
    event_created timestamptz,
    received_at timestamptz not null default now(),
    payload jsonb not null,
    processed_at timestamptz null,
    process_run_id text null
);
create index if not exists webhook_inbox_pending_idx
    on stripe_staging.webhook_inbox (event_created, received_at) where processed_at is null;
create table if not exists stripe_staging.webhook_rejections (
    id bigserial primary key,
    received_at timestamptz not null default now(),
    http_status integer not null,
    reason text not null,
    event_id text,
    signature_valid boolean not null,
    body_bytes bigint,
    body_sha256 text,
    body bytea
);
create index if not exists webhook_rejections_received_idx on stripe_staging.webhook_rejections (received_at desc);
"""

# Bodies of validly signed deliveries are kept (bounded) so the sender's mistake can be read; an unsigned
# body is anyone's, so only its size and hash are.
KEPT_BODY_BYTES = 64 * 1024
FUTURE_SKEW_S = 300  # an event or signature stamped further ahead than this is not believed
ALERT_EVERY_S = 600  # at most one alert per ten minutes about rejected deliveries, however many arrive

# One statement: the insert, and (for a duplicate id) whether the stored body equals this one. The outer
# select sees the table as it was before the insert, so a new event reads NULL there.
_INSERT = """
with ins as (
    insert into stripe_staging.webhook_inbox (event_id, event_type, object_type, object_id, event_created, payload)
    values (%(id)s, %(type)s, %(object_type)s, %(object_id)s, to_timestamp(%(created)s), %(payload)s::jsonb)
    on conflict (event_id) do nothing
    returning event_id
)
select (select event_id from ins),
       (select payload = %(payload)s::jsonb from stripe_staging.webhook_inbox where event_id = %(id)s)
"""

_REJECT = """
insert into stripe_staging.webhook_rejections (http_status, reason, event_id, signature_valid, body_bytes, body_sha256, body)
values (%s, %s, %s, %s, %s, %s, %s)
"""


def ensure_inbox(conn: psycopg.Connection) -> None:
    """Create `stripe_staging.webhook_inbox` (and its schema) if missing; commits unless in autocommit."""
    # Skip the DDL when the tables exist: concurrent `create schema if not exists` can still collide.
    if (
        None
        in conn.execute(
            "select to_regclass('stripe_staging.webhook_inbox'), to_regclass('stripe_staging.webhook_rejections')"
        ).fetchone()
    ):
        conn.execute(INBOX_DDL)
    if not conn.autocommit:
        conn.commit()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"received": False, "error": message}, status_code=status)


class _BodyTooLarge(Exception):
    pass


async def _read_bounded(request: Request, limit: int) -> bytes:
    """The request body, refusing to buffer more than `limit` bytes whatever Content-Length claimed."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class _AsyncConnPool:
    """A handful of reusable async connections: psycopg_pool is not a dependency, and one INSERT per
    request does not justify it, but reconnecting on every delivery would double the latency."""

    def __init__(self, conninfo: str, max_idle: int = 4) -> None:
        self.conninfo = conninfo
        self.max_idle = max_idle
        self._idle: list[psycopg.AsyncConnection] = []

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        conn = self._idle.pop() if self._idle else await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        try:
            yield conn
        except BaseException:
            # The connection's state is unknown after a failure: drop it rather than hand it out again.
            await conn.close()
            raise
        if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE or len(self._idle) >= self.max_idle:
            await conn.close()
        else:
            self._idle.append(conn)

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()


async def _insert(pool: _AsyncConnPool, params: dict[str, Any]) -> tuple[Any, ...] | None:
    async with pool.connection() as conn:
        cur = await conn.execute(_INSERT, params)
        return await cur.fetchone()


def alert_rejections(conninfo: str, reason: str, status: int, event_id: str | None) -> int | None:
    """Raise one alert about rejected deliveries (with the counts per reason of the last hour), unless one was
    raised in the last `ALERT_EVERY_S` seconds: a burst of bad requests is one alert, the table keeps each."""
    from stripe_sage_pipeline.runtime.alerts import ensure_alerts, raise_alert

    lock = "select pg_advisory_{}(hashtext('stripe_staging.webhook_rejected_alert'))"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # Deliveries are rejected concurrently: one at a time decides, so a burst makes one alert.
        conn.execute(lock.format("lock"))
        try:
            ensure_alerts(conn)
            recent = conn.execute(
                "select exists (select 1 from sage_sync.alerts where kind = 'webhook_rejected'"
                " and raised_at > now() - make_interval(secs => %s))",
                (ALERT_EVERY_S,),
            ).fetchone()[0]
            if recent:
                return None
            counts = dict(
                conn.execute(
                    "select reason, count(*) from stripe_staging.webhook_rejections"
                    " where received_at > now() - interval '1 hour' group by 1 order by 2 desc"
                ).fetchall()
            )
            return raise_alert(
                conninfo,
                severity="warning",
                kind="webhook_rejected",
                title=f"Stripe webhook delivery rejected: {reason}",
                message=f"HTTP {status} for {event_id or 'a delivery without a usable event id'}; rejected in the"
                f" last hour: {counts}",
                next_step="Read stripe_staging.webhook_rejections (reason, event id, body of signed deliveries); a"
                " wrong STRIPE_WEBHOOK_SECRET rejects every delivery; the update path still re-reads"
                " Stripe's events",
                details={"reason": reason, "http_status": status, "event_id": event_id, "last_hour": counts},
            )
        finally:
            conn.execute(lock.format("unlock"))


def _event_fields(event: Any) -> tuple[str, str, str | None, str | None, int | None]:
    """(event_id, type, object_type, object_id, created) of a parsed event; ValueError when it is not one."""
    if not isinstance(event, dict):
        raise ValueError("body is not a JSON object")
    event_id, event_type = event.get("id"), event.get("type")
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str) or not event_type:
        raise ValueError("event has no id or type")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    obj = obj if isinstance(obj, dict) else {}
    created = event.get("created")
    created = created if isinstance(created, int) and not isinstance(created, bool) else None
    object_type = obj.get("object") if isinstance(obj.get("object"), str) else None
    object_id = obj.get("id") if isinstance(obj.get("id"), str) else None
    return event_id, event_type, object_type, object_id, created


def _signature_time(header: str | None) -> int | None:
    """The `t=` of a Stripe-Signature header (already verified), or None."""
    for part in (header or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            return int(value)
    return None


def _alert_quietly(conninfo: str, reason: str, status: int, event_id: str | None) -> None:
    """The alert about a rejection, after the answer went out; its own failure is logged, never raised."""
    try:
        alert_rejections(conninfo, reason, status, event_id)
    except Exception as exc:  # an alert that cannot be raised must not break the receiver
        log.error("alert about a rejected webhook failed: %s", type(exc).__name__)


def create_app(
    conninfo: str,
    secret: str,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> Starlette:
    """The receiver as an ASGI app: `POST /stripe/webhooks` and `GET /health`.

    `conninfo` is a libpq URL (see `db.libpq_url`); `secret` the endpoint's `whsec_…` signing secret.
    The inbox table is created on startup if missing.
    """
    pool = _AsyncConnPool(conninfo)

    async def reject(
        status: int,
        reason: str,
        *,
        body: bytes | None = None,
        size: int | None = None,
        signed: bool = False,
        event_id: str | None = None,
        answer: JSONResponse | None = None,
    ) -> JSONResponse:
        """Keep the rejection with its reason (and the body of a signed delivery), log it, alert after answering."""
        log.warning("rejected webhook (HTTP %d): %s%s", status, reason, f" [{event_id}]" if event_id else "")
        digest = hashlib.sha256(body).hexdigest() if body is not None else None
        kept = body[:KEPT_BODY_BYTES] if body is not None and signed else None
        try:
            async with pool.connection() as conn:
                await conn.execute(
                    _REJECT,
                    (
                        status,
                        reason,
                        event_id,
                        signed,
                        size if size is not None else (len(body) if body is not None else None),
                        digest,
                        kept,
                    ),
                )
        except psycopg.Error as exc:  # the answer must not depend on the bookkeeping
            log.error("webhook rejection not recorded: %s", type(exc).__name__)
        response = answer or _error(status, reason)
        response.background = BackgroundTask(_alert_quietly, conninfo, reason, status, event_id)
        return response

    async def receive(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > max_body_bytes:
                    return await reject(413, f"body larger than {max_body_bytes} bytes", size=int(declared))
            except ValueError:
                return await reject(400, "invalid Content-Length")
        try:
            body = await _read_bounded(request, max_body_bytes)
        except _BodyTooLarge:
            return await reject(413, f"body larger than {max_body_bytes} bytes (chunked)")

        header = request.headers.get("stripe-signature")
        try:
            stripe.WebhookSignature.verify_header(body, header, secret, tolerance_s)
        except stripe.SignatureVerificationError as exc:
            # The SDK's message says which check failed (missing, mismatch, stale) and carries no secret.
            return await reject(
                400, "invalid Stripe-Signature: " + (exc.user_message or "verification failed"), body=body
            )
        except UnicodeDecodeError:
            return await reject(400, "body is not UTF-8", body=body)

        now = time.time()
        signed_at = _signature_time(header)
        if signed_at is not None and signed_at > now + FUTURE_SKEW_S:
            return await reject(400, f"signature timestamp {signed_at} is in the future", body=body, signed=True)
        try:
            text = body.decode("utf-8")
            fields = _event_fields(json.loads(text))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            return await reject(400, f"not a Stripe event: {exc}", body=body, signed=True)

        event_id, event_type, object_type, object_id, created = fields
        if created is not None and created > now + FUTURE_SKEW_S:
            return await reject(
                400, f"event created {created} is in the future", body=body, signed=True, event_id=event_id
            )
        params = {
            "id": event_id,
            "type": event_type,
            "object_type": object_type,
            "object_id": object_id,
            "created": created,
            "payload": text,
        }
        try:
            try:
                inserted, same_body = await _insert(pool, params)
            except psycopg.OperationalError:
                # A pooled connection the server has since closed: one fresh attempt before giving up.
                inserted, same_body = await _insert(pool, params)
        except psycopg.DataError as exc:
            # e.g. a \u0000 escape, which jsonb refuses: retrying would never help, so do not ask Stripe to.
            return await reject(
                400,
                f"payload cannot be stored as jsonb ({type(exc).__name__})",
                body=body,
                signed=True,
                event_id=event_id,
            )
        except psycopg.Error as exc:
            # Any other database failure: 500 makes Stripe retry the delivery later.
            log.error("webhook %s not stored: %s", event_id, type(exc).__name__)
            return _error(500, "could not store the event; retry later")

        duplicate = inserted is None
        if duplicate and same_body is False:
            # Stripe's retries carry the same body: a different one under a known id is kept and reported, and
            # answered 200 (the first body stays; a retry would not change that).
            return await reject(
                200,
                "duplicate event id with a different body (the first one is kept)",
                body=body,
                signed=True,
                event_id=event_id,
                answer=JSONResponse({"received": True, "duplicate": True, "conflict": True}),
            )
        log.info("webhook %s %s %s", event_id, event_type, "duplicate" if duplicate else "stored")
        return JSONResponse({"received": True, "duplicate": duplicate})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        def _ensure() -> None:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                ensure_inbox(conn)

        await asyncio.to_thread(_ensure)
        try:
            yield
        finally:
            await pool.close()

    return Starlette(
        routes=[Route(WEBHOOK_PATH, receive, methods=["POST"]), Route("/health", health, methods=["GET"])],
        lifespan=lifespan,
    )


def serve(host: str, port: int, conninfo: str, secret: str) -> None:
    """Run the receiver with uvicorn in the foreground until interrupted."""
    log.info("webhook receiver on http://%s:%d%s", host, port, WEBHOOK_PATH)
    uvicorn.run(create_app(conninfo, secret), host=host, port=port, log_level="info")


class WebhookServer:
    """The receiver on a background thread (tests, demos): `start()`, then `url`, then `stop()`."""

    def __init__(self, conninfo: str, secret: str, host: str = "127.0.0.1", port: int = 0, **app_kwargs: Any) -> None:
        self.host = host
        self.app = create_app(conninfo, secret, **app_kwargs)
        # Bind here so that port=0 yields a known free port before the server thread starts.
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:54321`; the endpoint is `url + WEBHOOK_PATH`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The full webhook endpoint URL."""
        return self.url + WEBHOOK_PATH

    def start(self, timeout_s: float = 10.0) -> WebhookServer:
        """Start serving and wait until the server accepts requests."""
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("webhook receiver did not start (see the log)")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pending_events(conninfo: str, limit: int = 500) -> list[dict[str, Any]]:
    """Unprocessed inbox events, oldest first: event_id, event_type, object_type, object_id, event_created, payload."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        ensure_inbox(conn)
        cur = conn.execute(
            "select event_id, event_type, object_type, object_id, event_created, payload "
            "from stripe_staging.webhook_inbox where processed_at is null "
            "order by event_created nulls last, received_at, event_id limit %s",
            (limit,),
        )
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def mark_processed(conninfo: str, event_ids: Iterable[str], run_id: str) -> int:
    """Mark events as handled by `run_id`; returns how many were newly marked (already-marked ones stay as they are)."""
    ids: Sequence[str] = list(event_ids)
    if not ids:
        return 0
    with psycopg.connect(conninfo, autocommit=True) as conn:
        ensure_inbox(conn)
        cur = conn.execute(
            "update stripe_staging.webhook_inbox set processed_at = now(), process_run_id = %s "
            "where event_id = any(%s) and processed_at is null",
            (run_id, ids),
        )
        return cur.rowcount


def main(argv: list[str] | None = None) -> int:
    """`stripe-sage webhooks [--host 127.0.0.1] [--port 8787]`: the receiver on the configured database and secret."""
    from stripe_sage_pipeline.runtime.db import database_url, libpq_url
    from stripe_sage_pipeline.settings import load_settings

    parser = argparse.ArgumentParser(prog="stripe-sage webhooks", description="Stripe webhook receiver (inbox)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    serve(args.host, args.port, libpq_url(database_url(settings)), settings.stripe_webhook_secret)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
