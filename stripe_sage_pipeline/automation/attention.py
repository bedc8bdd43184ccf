"""What a posted day leaves for a person to look at: postings to Suspense and entries held back.

Both are legitimate outcomes of a load (an unmapped reporting category books to the suspense account so
the entry still balances; a payout summary waits until its payout reconciles), so neither fails the run.
But neither may be silent: each becomes an alert (once per distinct set of items, not on every re-load)
and run metadata on the load asset.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg
from psycopg.rows import dict_row

from stripe_sage_pipeline.runtime.alerts import ensure_alerts, raise_alert

SUSPENSE_NEXT_STEP = (
    "Map the reporting category in mapping.yaml (categories / fallbacks), rebuild the marts: the entry is reversed"
    " and re-posted to the right account; or reclassify it in Sage by hand"
)
HELD_NEXT_STEP = (
    "Nothing to do while a payout is in transit; if it stays held, open finance.fct_payout_reconciliation for the"
    " payout (missing or extra balance transactions) and re-run the update path"
)


@dataclass
class Attention:
    """Suspense postings and held items of one load."""

    day: date
    suspense: list[dict[str, Any]] = field(default_factory=list)
    held: list[dict[str, Any]] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        """Plain values for the asset's metadata (the step wraps lists as JSON)."""
        return {
            "suspense_lines": len(self.suspense),
            "suspense_detail": self.suspense[:50],
            "held_detail": self.held[:50],
        }


def suspense_lines(conn: psycopg.Connection, day: date, suspense_account: str) -> list[dict[str, Any]]:
    """Lines of the day's selected-mode entries that book to the suspense account (unmapped categories)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "select entry_id, external_ref, account_code, debit, credit, currency, accounting_category,"
            " balance_transaction_id from finance.fct_journal_lines"
            " where posting_date = %s and is_selected_mode and (is_unmapped or account_code = %s)"
            " order by entry_id, line_number",
            (day, suspense_account),
        ).fetchall()
    return [{k: (int(v) if k in ("debit", "credit") and v is not None else v) for k, v in r.items()} for r in rows]


def held_items(items: list[Any]) -> list[dict[str, Any]]:
    """The planned items that were held back, with why (`PlannedItem.hold_reason`)."""
    return [
        {"resource": i.resource, "external_ref": i.external_ref, "reason": i.hold_reason}
        for i in items
        if getattr(i, "hold_reason", None)
    ]


def _fingerprint(kind: str, day: date, refs: list[str]) -> str:
    return hashlib.sha256(json.dumps([kind, str(day), sorted(refs)]).encode()).hexdigest()[:16]


def _already_alerted(conninfo: str, kind: str, fingerprint: str) -> bool:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        ensure_alerts(conn)
        return conn.execute(
            "select exists (select 1 from sage_sync.alerts where kind = %s and details ->> 'fingerprint' = %s)",
            (kind, fingerprint),
        ).fetchone()[0]


def raise_attention_alerts(
    conninfo: str, att: Attention, *, run_id: str | None = None, job_name: str | None = None
) -> list[int]:
    """One alert for the day's suspense postings and one for its held items, each raised once per distinct
    set of items (a re-load of the same day does not alert again); returns the new alerts' ids."""
    raised = []
    if att.suspense:
        refs = sorted({str(s["external_ref"]) for s in att.suspense})
        fp = _fingerprint("suspense_posting", att.day, refs)
        if not _already_alerted(conninfo, "suspense_posting", fp):
            per_currency: dict[str, int] = {}
            for s in att.suspense:
                per_currency[s["currency"]] = (
                    per_currency.get(s["currency"], 0) + (s["debit"] or 0) - (s["credit"] or 0)
                )
            categories = sorted({str(s["accounting_category"]) for s in att.suspense})
            raised.append(
                raise_alert(
                    conninfo,
                    severity="warning",
                    kind="suspense_posting",
                    title=f"{len(refs)} entr{'y' if len(refs) == 1 else 'ies'} of {att.day} booked to Suspense",
                    message=f"Unmapped reporting categories ({', '.join(categories)}) posted to the suspense account:"
                    f" {', '.join(refs[:20])}{' …' if len(refs) > 20 else ''}"
                    f" (net per currency, minor units: {per_currency})",
                    next_step=SUSPENSE_NEXT_STEP,
                    run_id=run_id,
                    job_name=job_name,
                    details={"fingerprint": fp, "day": str(att.day), "lines": att.suspense[:100]},
                )
            )
    if att.held:
        refs = sorted(h["external_ref"] for h in att.held)
        fp = _fingerprint("held_entries", att.day, refs)
        if not _already_alerted(conninfo, "held_entries", fp):
            reasons = sorted({h["reason"] for h in att.held})
            raised.append(
                raise_alert(
                    conninfo,
                    severity="warning",
                    kind="held_entries",
                    title=f"{len(refs)} item(s) of {att.day} held back from Sage",
                    message=f"Not posted yet ({', '.join(reasons)}): {', '.join(refs[:20])}{' …' if len(refs) > 20 else ''}",
                    next_step=HELD_NEXT_STEP,
                    run_id=run_id,
                    job_name=job_name,
                    details={"fingerprint": fp, "day": str(att.day), "items": att.held[:100]},
                )
            )
    return raised


__all__ = ["Attention", "held_items", "raise_attention_alerts", "suspense_lines"]
