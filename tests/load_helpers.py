"""Helpers for the load tests: a Sage sandbox over a socket, mappings, the marts, Sage's state."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import yaml

from stripe_sage_pipeline.load.customers import push_customers
from stripe_sage_pipeline.load.post import LoadStats, Poster, load_partition, make_client
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.sage.client import SageClient
from stripe_sage_pipeline.settings import PROJECT_ROOT
from stripe_sage_pipeline.transform.mapping import Mapping, parse_mapping
from stripe_sage_sandboxes.sage import SageSandboxConfig, SageSandboxServer

USER, PASSWORD = "pipeline", "pipeline-secret"


@contextlib.contextmanager
def sage_sandbox(data_dir: Path, **config: Any) -> Iterator[SageSandboxServer]:
    """A fresh Sage Pro sandbox on an ephemeral port (no rate limit to speak of unless given)."""
    config.setdefault("rate_per_minute", 60_000)
    config.setdefault("max_concurrent", 16)
    config.setdefault("fault_retry_after_s", 0)
    srv = SageSandboxServer(SageSandboxConfig(data_dir=data_dir, **config)).start()
    try:
        yield srv
    finally:
        srv.stop()


def client_for(srv: SageSandboxServer, **kwargs: Any) -> tuple[SageClient, Any]:
    """A counted client with fast retries (tests inject faults by the dozen)."""
    kwargs.setdefault("backoff_base_s", 0.01)
    kwargs.setdefault("backoff_cap_s", 0.2)
    kwargs.setdefault("max_retries", 10)
    return make_client(srv.base_url, USER, PASSWORD, **kwargs)


def write_mapping(tmp_path: Path, monkeypatch: Any, **changes: Any) -> Mapping:
    """mapping.yaml with top-level changes (deep-merged for dicts), made the active mapping."""
    data = yaml.safe_load((PROJECT_ROOT / "mapping.yaml").read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp_path / f"mapping-{abs(hash(repr(sorted(changes.items())))) % 10**8}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("STRIPE_SAGE_MAPPING", str(path))
    return parse_mapping(data, str(path))


def posting_dates(url: str) -> list[date]:
    """Posting dates of the selected mode's journal entries (and of invoices), ascending."""
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "select distinct posting_date from finance.fct_journal_lines where is_selected_mode"
            " union select distinct posting_date from finance.fct_invoice_lines order by 1"
        ).fetchall()
    return [r[0] for r in rows]


def post_everything(
    url: str,
    client: SageClient,
    mapping: Mapping,
    transport: Any = None,
    workers: int = 4,
    days: list[date] | None = None,
) -> dict[str, LoadStats]:
    """Customers, then every posting date in order, through the plain posting modules."""
    poster = Poster(url, client, workers=workers, transport=transport)
    total: dict[str, LoadStats] = {}
    try:
        for day in days or posting_dates(url):
            res = load_partition(
                url, poster, day, mapping, customers=lambda d=day: push_customers(url, client, up_to=d, mapping=mapping)
            )
            for k, v in res.items():
                total.setdefault(k, LoadStats()).merge(v)
    finally:
        poster.close()
    return total


def movement(client: SageClient, accounts: list[str]) -> dict[str, Decimal]:
    """Net debit − credit per account, as the sandbox reports it (`/accounts/{glacnt}/balance`)."""
    out = {}
    for code in accounts:
        bal = client.account_balance(code, None, None)["balances"]
        out[code] = sum((Decimal(b["net"]) for b in bal.values()), Decimal("0.00"))
    return out


def expected_tb(g: dict) -> dict[str, Decimal]:
    """The golden trial balance change per account."""
    return {k: Decimal(v) for k, v in g["expected"]["trial_balance_change_after_both_payouts"].items() if k != "note"}


def sage_state(client: SageClient) -> dict[str, Any]:
    """What Sage holds, independent of ids and timestamps: GL postings and records per external_ref."""
    postings = Counter(
        (p["external_ref"], p["glacnt"], p["posting_date"], p["debit"], p["credit"], p["currency"], p["doc_type"])
        for p in client.list_all("/gl-postings")
    )
    refs = {}
    for resource in ("journal-entries", "invoices", "cash-receipts", "customers"):
        refs[resource] = Counter(r["external_ref"] for r in client.list_all(f"/{resource}"))
    return {"postings": postings, "refs": refs}


def ledger(
    url: str,
    sql: str = "select * from sage_sync.posting_ledger order by resource, external_ref, version",
    params: tuple = (),
) -> list[dict[str, Any]]:
    """Ledger rows as dicts."""
    with psycopg.connect(libpq_url(url)) as conn:
        cur = conn.execute(sql, params)
        cols = [c.name for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
