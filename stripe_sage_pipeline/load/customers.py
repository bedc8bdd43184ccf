"""The customer master in both directions.

Stripe → Sage (`push_customers`): every dim_customers row becomes a Sage customer under its custno.
A new customer is created with all its fields; later, only the fields Stripe owns are PATCHed (a 404
on update → create). Which fields Sage owns is the mapping's `customer_sync.sage_owns`.

Sage → Stripe (`pull_sage_changes`): Sage customers changed since a persisted cursor
(`updated_since`) whose Sage-owned fields differ from what this sync last saw in Sage are copied to the
Stripe customer through the official SDK. No ping-pong: `customer_sync_state` records, per customer,
the hash of the Sage-owned fields as Sage last had them (set when we create the customer and when we
copy a change), so our own writes to Sage never look like a user's edit; and the Stripe → Sage push
never sends Sage-owned fields after creation, so a change we copied to Stripe never returns to Sage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg
import stripe

from stripe_sage_pipeline.load import ledger as L
from stripe_sage_pipeline.load.engine import LoadStats, error_reason
from stripe_sage_pipeline.load.plan import (
    CUSTOMER_FIELD_GROUPS,
    CUSTOMERS,
    PlannedItem,
    customer_rows,
    owned_fields,
    plan_customer,
)
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.sage.errors import CredentialsError, NotFound, SageError, TransientError
from stripe_sage_pipeline.sage.factory import CountingTransport
from stripe_sage_pipeline.sage.keys import idempotency_key
from stripe_sage_pipeline.sage.target import Target, as_target
from stripe_sage_pipeline.settings import load_settings
from stripe_sage_pipeline.transform.mapping import Mapping, load_mapping

log = logging.getLogger(__name__)
CURSOR = "sage_customers_updated_since"


def sage_owned_hash(record: dict[str, Any], sage_owns: Iterable[str]) -> str:
    """Hash of the Sage-owned fields of a Sage customer record (missing and empty are the same)."""
    return L.content_hash({f: (record.get(f) or None) for f in sorted(owned_fields(sage_owns))})


def _remember_sage_side(
    conn: psycopg.Connection, customer_id: str, custno: str, record: dict[str, Any], sage_owns: Iterable[str]
) -> None:
    conn.execute(
        f"insert into {L.SCHEMA}.customer_sync_state (customer_id, custno, sage_owned_hash, sage_updated_at)"
        " values (%s, %s, %s, %s) on conflict (customer_id) do update set custno = excluded.custno,"
        " sage_owned_hash = excluded.sage_owned_hash, sage_updated_at = excluded.sage_updated_at, updated_at = now()",
        (customer_id, custno, sage_owned_hash(record, sage_owns), record.get("updated_at")),
    )


# -- Stripe → Sage -----------------------------------------------------------------------------------


def _update_body(item: PlannedItem, sage_owns: Iterable[str]) -> dict[str, Any]:
    skip = owned_fields(sage_owns) | {"custno"}
    return {k: v for k, v in item.payload.items() if k not in skip}


def _row(item: PlannedItem, version: int, attempt: int, payload: dict[str, Any]) -> L.LedgerRow:
    op = "create" if version == 1 else "update"
    return L.LedgerRow(
        resource=CUSTOMERS,
        external_ref=item.external_ref,
        version=version,
        item_key=item.item_key,
        sage_ref=item.external_ref if version == 1 else f"{item.external_ref}@{version}",
        partition_date=None,
        posting_mode=op,
        status="computed",
        content_hash=item.content_hash,
        payload=payload,
        attempt=attempt,
        idempotency_key=L.item_idempotency_key(
            CUSTOMERS, f"{item.external_ref}:{op}:{version}", L.content_hash(payload), attempt
        ),
    )


def push_customers(
    url: str,
    client: Any,
    *,
    up_to: date | None = None,
    mapping: Mapping | None = None,
    customer_ids: list[str] | None = None,
    redrive: bool = False,
    transport: CountingTransport | None = None,
) -> LoadStats:
    """Create or update the Sage customer of every Stripe customer created on or before `up_to`."""
    mapping = mapping or load_mapping()
    owns = mapping.customer_sync.sage_owns
    target = as_target(client)
    stats = LoadStats()
    before = transport.count if transport else 0
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        L.ensure_schema(conn)
        conn.execute("select pg_advisory_lock(hashtext('sage_load:customers'))")
        try:
            items = [plan_customer(r, owns) for r in customer_rows(conn, up_to, customer_ids)]
            stats.planned = len(items)
            current = L.current_versions(conn, CUSTOMERS, [i.external_ref for i in items])
            for item in items:
                cur = current.get(item.external_ref)
                if cur is None:
                    row = _row(item, 1, 1, item.payload)
                elif cur.status == "posted":
                    if cur.content_hash == item.content_hash:
                        stats.unchanged += 1
                        continue
                    row = _row(item, cur.version + 1, 1, {"custno": item.payload["custno"], **_update_body(item, owns)})
                elif cur.status == "dead_lettered" and not redrive:
                    stats.dead_letters_waiting += 1
                    continue
                elif cur.content_hash == item.content_hash and cur.status == "computed":
                    row = cur  # resend exactly what a killed run sent
                else:  # computed with other content, or a re-drive: same version, next attempt
                    payload = (
                        item.payload
                        if cur.version == 1
                        else {"custno": item.payload["custno"], **_update_body(item, owns)}
                    )
                    row = _row(item, cur.version, cur.attempt + 1, payload)
                    L.replace_attempt(conn, row)
                if cur is None or row.version != cur.version:
                    L.insert_computed(conn, [row])
                _push_one(conn, target, row, item, owns, stats)
        finally:
            conn.execute("select pg_advisory_unlock(hashtext('sage_load:customers'))")
    if transport:
        stats.requests = transport.count - before
    return stats


def _push_one(
    conn: psycopg.Connection, target: Target, row: L.LedgerRow, item: PlannedItem, owns: Iterable[str], stats: LoadStats
) -> None:
    custno = item.payload.get("custno", "")
    try:
        if row.version == 1:
            result = target.post(
                CUSTOMERS, row.payload, idempotency_key=row.idempotency_key, external_ref=item.external_ref
            )
            record, outcome, request_id = result.record, result.status, result.request_id
        else:
            body = {k: v for k, v in row.payload.items() if k != "custno"}
            try:
                record = target.update_customer(custno, body, row.idempotency_key)
                outcome, request_id = "created", ""
            except NotFound:
                # Deleted in Sage (or never there): create it whole.
                key = idempotency_key(CUSTOMERS, f"{item.external_ref}:recreate:{row.version}", row.content_hash)
                result = target.post(CUSTOMERS, item.payload, idempotency_key=key, external_ref=item.external_ref)
                record, outcome, request_id = result.record, result.status, result.request_id
    except CredentialsError:
        raise
    except TransientError as err:
        stats.transient_failures += 1
        stats.errors.append(f"customer {item.external_ref}: {err}")
        return
    except SageError as err:  # 422 (e.g. a custno Sage cannot take), an unresolvable 409
        code, message, details, request_id = error_reason(err)
        L.mark_dead_lettered(conn, row, code, message, details, request_id)
        stats.dead_lettered += 1
        log.warning("dead letter: customer %s (custno %r): %s %s", item.external_ref, custno, code, message)
        return
    L.mark_posted(conn, row, str(record.get("custno", custno)), request_id, outcome)
    setattr(stats, outcome, getattr(stats, outcome) + 1)
    _remember_sage_side(conn, item.external_ref, str(record.get("custno", custno)), record, owns)


# -- Sage → Stripe -----------------------------------------------------------------------------------


@dataclass
class PullStats:
    """What one Sage → Stripe sync did."""

    read: int = 0
    updated: int = 0
    skipped_own_writes: int = 0
    skipped_not_stripe: int = 0
    cursor: str | None = None
    updated_customers: list[str] = field(default_factory=list)


def stripe_params(record: dict[str, Any], sage_owns: Iterable[str]) -> dict[str, Any]:
    """Stripe customer update params for the Sage-owned fields of a Sage record ("" clears a field)."""
    owns = set(sage_owns)
    params: dict[str, Any] = {}
    if "name" in owns:
        params["name"] = record.get("company") or ""
    if "email" in owns:
        params["email"] = record.get("email") or ""
    if "phone" in owns:
        params["phone"] = record.get("phone") or ""
    if "address" in owns:
        params["address"] = {
            "line1": record.get("address1") or "",
            "line2": record.get("address2") or "",
            "city": record.get("city") or "",
            "state": record.get("state") or "",
            "postal_code": record.get("zip") or "",
            "country": record.get("country") or "",
        }
    return params


def stripe_client(api_key: str, api_base: str | None = None, stripe_account: str | None = None) -> stripe.StripeClient:
    """The official SDK client (the emulator when `api_base` points at it)."""
    kwargs: dict[str, Any] = {"base_addresses": {"api": api_base}} if api_base else {}
    if stripe_account:
        kwargs["stripe_account"] = stripe_account
    # Every Stripe request at one explicit version (STRIPE_API_VERSION).
    return stripe.StripeClient(
        api_key, max_network_retries=3, stripe_version=load_settings().stripe_api_version, **kwargs
    )


def pull_sage_changes(
    url: str, client: Any, stripe_sdk: stripe.StripeClient, mapping: Mapping | None = None
) -> PullStats:
    """Copy Sage-side changes of Sage-owned fields to the Stripe customers, once each."""
    mapping = mapping or load_mapping()
    owns = mapping.customer_sync.sage_owns
    out = PullStats()
    if not owns:
        return out
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        L.ensure_schema(conn)
        conn.execute("select pg_advisory_lock(hashtext('sage_sync:customers_pull'))")
        try:
            cursor = L.get_cursor(conn, CURSOR)
            newest = cursor
            for rec in as_target(client).changed_customers(cursor):
                out.read += 1
                updated_at = rec.get("updated_at")
                if updated_at and (newest is None or updated_at > newest):
                    newest = updated_at
                customer_id = rec.get("external_ref") or ""
                if not customer_id.startswith("cus_"):
                    out.skipped_not_stripe += 1
                    continue
                h = sage_owned_hash(rec, owns)
                state = conn.execute(
                    f"select sage_owned_hash, stripe_told_hash from {L.SCHEMA}.customer_sync_state where customer_id = %s",
                    (customer_id,),
                ).fetchone()
                if state is not None and state[0] == h:
                    out.skipped_own_writes += 1
                    continue
                sparams = stripe_params(rec, owns)
                told = L.content_hash(sparams)
                if state is None or state[1] != told:
                    stripe_sdk.v1.customers.update(
                        customer_id,
                        params=sparams,
                        options={"idempotency_key": idempotency_key("stripe-customer", customer_id, told)},
                    )
                    out.updated += 1
                    out.updated_customers.append(customer_id)
                    log.info("copied Sage-owned fields of %s (%s) to Stripe", rec.get("custno"), customer_id)
                conn.execute(
                    f"insert into {L.SCHEMA}.customer_sync_state (customer_id, custno, sage_owned_hash, stripe_told_hash,"
                    " sage_updated_at) values (%s, %s, %s, %s, %s) on conflict (customer_id) do update set"
                    " sage_owned_hash = excluded.sage_owned_hash, stripe_told_hash = excluded.stripe_told_hash,"
                    " sage_updated_at = excluded.sage_updated_at, updated_at = now()",
                    (customer_id, rec.get("custno"), h, told, updated_at),
                )
            if newest and newest != cursor:
                L.set_cursor(conn, CURSOR, newest)
            out.cursor = newest
        finally:
            conn.execute("select pg_advisory_unlock(hashtext('sage_sync:customers_pull'))")
    return out


__all__ = [
    "CUSTOMER_FIELD_GROUPS",
    "PullStats",
    "pull_sage_changes",
    "push_customers",
    "sage_owned_hash",
    "stripe_client",
    "stripe_params",
]
