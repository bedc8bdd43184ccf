"""Sage down is detected once: a day of many customers fails after a handful of attempts, naming the URL and
the cause, instead of retrying every item seven times (the circuit breaker in sage/client.py, which the Sage
Intacct adapter uses too)."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from stripe_sage_pipeline.defs.loading import _credentials_stop_the_run
from stripe_sage_pipeline.load.customers import push_customers
from stripe_sage_pipeline.load.post import CountingTransport
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.runtime.embedded_pg import free_port
from stripe_sage_pipeline.sage.client import BREAKER_THRESHOLD, CircuitBreaker, SageClient
from stripe_sage_pipeline.sage.intacct import IntacctTarget

CUSTOMERS = 40


def _dim_customers(url: str, n: int) -> None:
    cols = (
        "customer_id",
        "custno",
        "customer_name",
        "email",
        "phone",
        "address_line1",
        "address_line2",
        "address_city",
        "address_state",
        "address_postal_code",
        "address_country",
        "currency",
    )
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute("create schema finance")
        conn.execute(
            f"create table finance.dim_customers ({', '.join(c + ' text' for c in cols)},"
            " created_at timestamptz not null)"
        )
        with conn.cursor() as cur:
            cur.executemany(
                f"insert into finance.dim_customers ({', '.join(cols)}, created_at)"
                f" values ({', '.join(['%s'] * len(cols))}, '2026-07-01T10:00:00Z')",
                [
                    (
                        f"cus_{i:04d}",
                        f"C{i:04d}",
                        f"Customer {i}",
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        "us",
                        "usd",
                    )
                    for i in range(n)
                ],
            )


def test_sage_down_fails_the_day_after_a_few_attempts_naming_url_and_cause(fresh_db):
    """40 customers against a closed port: at most BREAKER_THRESHOLD connection attempts, every customer left
    `computed`, the backoff slept well under a minute in total, and the step's failure names URL and cause."""
    _dim_customers(fresh_db, CUSTOMERS)
    base_url = f"http://127.0.0.1:{free_port()}/sagepro/v1/PRO01"  # nothing listens there
    slept: list[float] = []
    transport = CountingTransport()
    client = SageClient(
        base_url,
        "pipeline",
        "pipeline-secret",
        transport=transport,
        sleep=slept.append,
        breaker=CircuitBreaker(base_url),
    )
    stats = push_customers(fresh_db, client, transport=transport)

    assert stats.transient_failures == CUSTOMERS and stats.created == 0
    assert transport.count <= BREAKER_THRESHOLD  # not 40 customers x 7 attempts
    assert sum(slept) < 60  # the client's own backoff before giving up: the day fails within a minute
    assert client.breaker.is_open
    with psycopg.connect(libpq_url(fresh_db)) as conn:
        statuses = conn.execute("select status, count(*) from sage_sync.posting_ledger group by 1").fetchall()
    assert statuses == [("computed", CUSTOMERS)]  # resent under the same keys once Sage is back

    with pytest.raises(dg.Failure) as failure, _credentials_stop_the_run(client):
        pass
    message = failure.value.description
    assert base_url in message and "ConnectError" in message and "refused" in message.lower()
    assert "pipeline-secret" not in message
    assert failure.value.allow_retries is False  # the pool slot is released now, not after step retries


def test_intacct_down_fails_the_day_after_a_few_attempts_naming_url_and_cause(fresh_db):
    """The same day against an Intacct URL where nothing listens: the token request is the attempt that gets no
    answer; at most BREAKER_THRESHOLD connection attempts in all, every customer left `computed`, and the step's
    failure names Sage Intacct, the URL and the cause, without the client secret."""
    _dim_customers(fresh_db, CUSTOMERS)
    base_url = f"http://127.0.0.1:{free_port()}/ia/api/v1"  # nothing listens there
    slept: list[float] = []
    transport = CountingTransport()
    target = IntacctTarget(
        base_url,
        "pipeline.app.sandbox",
        "intacct-client-secret-1",
        username="pipeline@STRIPESAGE",
        transport=transport,
        sleep=slept.append,
        breaker=CircuitBreaker(base_url, name="Sage Intacct"),
    )
    stats = push_customers(fresh_db, target, transport=transport)

    assert stats.transient_failures == CUSTOMERS and stats.created == 0
    assert transport.count <= BREAKER_THRESHOLD  # not 40 customers x 7 attempts
    assert sum(slept) < 60
    assert target.breaker.is_open
    with psycopg.connect(libpq_url(fresh_db)) as conn:
        statuses = conn.execute("select status, count(*) from sage_sync.posting_ledger group by 1").fetchall()
    assert statuses == [("computed", CUSTOMERS)]

    with pytest.raises(dg.Failure) as failure, _credentials_stop_the_run(target):
        pass
    message = failure.value.description
    assert message.startswith(f"Sage Intacct is unavailable at {base_url}")
    assert "ConnectError" in message and "refused" in message.lower()
    assert "intacct-client-secret-1" not in message
    assert failure.value.allow_retries is False
    target.close()
