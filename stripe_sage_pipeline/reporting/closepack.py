"""The month-end close pack: what a controller checks before signing off a month of Stripe in Sage.

`collect` reads the month from three places -- Stripe's payouts (staging), the pipeline's marts and
ledger, and Sage's GL (read back through the Sage client) -- and the rules below (pure functions,
unit-tested) put them side by side:

* payouts against bank deposits per day and currency (Stripe paid out vs Sage's bank account);
* reconciliation status per payout (what the bank received against what the payout swept);
* GL movement per account and currency in Sage, next to what the marts booked;
* suspense items, dead letters and held entries, each with its reason;
* the tie-out: bank = paid out, and the trial balance nets to zero, per currency.

Amounts are integers in minor units throughout; decimals appear only when rendered.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Iterable
from collections.abc import Mapping as MappingT
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from stripe_sage_pipeline.load.plan import POSTABLE_PAYOUT_STATUSES
from stripe_sage_pipeline.money import from_decimal_str
from stripe_sage_pipeline.transform.mapping import Mapping

Key = tuple[str, str]  # (currency, account) or (currency, day)


# -- rules ---------------------------------------------------------------------------------------


def month_bounds(month: str) -> tuple[date, date]:
    """First and last day of a 'YYYY-MM' month (ValueError names the bad value)."""
    try:
        y, m = (int(x) for x in month.split("-"))
        return date(y, m, 1), date(y, m, calendar.monthrange(y, m)[1])
    except (ValueError, TypeError):
        raise ValueError(f"month must be YYYY-MM, got {month!r}") from None


def month_days(first: date, last: date) -> list[date]:
    """Every calendar day of [first, last]."""
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def stripe_paid_out_by_day(
    payouts: Iterable[MappingT[str, Any]], reversals: MappingT[str, date]
) -> dict[tuple[str, date], int]:
    """What Stripe sent to the bank per (currency, day): a paid payout on its arrival date; a payout
    that was paid and later failed (it has a reversal date) also, and minus its amount on that date."""
    out: dict[tuple[str, date], int] = defaultdict(int)
    for p in payouts:
        failed_at = reversals.get(p["payout_id"])
        if p["payout_status"] == "paid" or failed_at is not None:
            out[(p["currency"], p["arrival_date"])] += int(p["amount"])
        if failed_at is not None:
            out[(p["currency"], failed_at)] -= int(p["amount"])
    return dict(out)


def sage_bank_by_day(
    postings: Iterable[MappingT[str, Any]], bank_accounts: MappingT[str, str]
) -> dict[tuple[str, date], int]:
    """Net debit − credit on each currency's bank account per (currency, day), from Sage's GL postings."""
    out: dict[tuple[str, date], int] = defaultdict(int)
    for p in postings:
        cur = p["currency"].lower()
        if p["glacnt"] != bank_accounts.get(cur):
            continue
        out[(cur, date.fromisoformat(p["posting_date"]))] += from_decimal_str(p["debit"], cur) - from_decimal_str(
            p["credit"], cur
        )
    return dict(out)


def gl_movement(postings: Iterable[MappingT[str, Any]]) -> dict[Key, int]:
    """Net debit − credit per (currency, account) of Sage's GL postings."""
    out: dict[Key, int] = defaultdict(int)
    for p in postings:
        cur = p["currency"].lower()
        out[(cur, p["glacnt"])] += from_decimal_str(p["debit"], cur) - from_decimal_str(p["credit"], cur)
    return dict(out)


@dataclass
class DayRow:
    """One day of one currency: Stripe paid out vs the bank account's movement in Sage."""

    currency: str
    day: date
    stripe: int
    sage: int

    @property
    def difference(self) -> int:
        """Sage minus Stripe (0 when the day ties)."""
        return self.sage - self.stripe


def daily_rows(
    currencies: Iterable[str],
    days: list[date],
    stripe: MappingT[tuple[str, date], int],
    sage: MappingT[tuple[str, date], int],
) -> list[DayRow]:
    """Every (currency, day) of the month, zero days included (a chart needs them)."""
    return [DayRow(c, d, stripe.get((c, d), 0), sage.get((c, d), 0)) for c in sorted(currencies) for d in days]


@dataclass
class GLRow:
    """One account of one currency: Sage's movement vs what the marts booked in the selected mode."""

    currency: str
    account: str
    name: str
    sage: int
    booked: int

    @property
    def difference(self) -> int:
        """Sage minus marts."""
        return self.sage - self.booked


def gl_rows(sage: MappingT[Key, int], booked: MappingT[Key, int], names: MappingT[str, str]) -> list[GLRow]:
    """The union of accounts moved in Sage or booked by the marts, by currency then account."""
    return [
        GLRow(c, a, names.get(a, ""), sage.get((c, a), 0), booked.get((c, a), 0))
        for c, a in sorted(set(sage) | set(booked))
    ]


@dataclass
class TieOut:
    """Per currency: bank = paid out, and the trial balance nets to zero."""

    currency: str
    bank_account: str
    sage_bank: int
    stripe_paid_out: int
    trial_balance: int

    @property
    def bank_ties(self) -> bool:
        """The bank account moved exactly what Stripe paid out."""
        return self.sage_bank == self.stripe_paid_out

    @property
    def balanced(self) -> bool:
        """Every debit has its credit."""
        return self.trial_balance == 0

    @property
    def ok(self) -> bool:
        """Both hold."""
        return self.bank_ties and self.balanced


def tie_out(
    currencies: Iterable[str],
    sage: MappingT[Key, int],
    stripe_by_day: MappingT[tuple[str, date], int],
    bank_accounts: MappingT[str, str],
) -> list[TieOut]:
    """The tie-out per currency from Sage's GL movement and Stripe's payouts of the month."""
    out = []
    for c in sorted(currencies):
        out.append(
            TieOut(
                currency=c,
                bank_account=bank_accounts[c],
                sage_bank=sage.get((c, bank_accounts[c]), 0),
                stripe_paid_out=sum(v for (cc, _), v in stripe_by_day.items() if cc == c),
                trial_balance=sum(v for (cc, _), v in sage.items() if cc == c),
            )
        )
    return out


# -- the pack --------------------------------------------------------------------------------------


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


@dataclass
class ClosePack:
    """Everything the rendered report shows for one month."""

    month: str
    first: date
    last: date
    posting_mode: str
    base_currency: str
    days: list[DayRow]
    payouts: list[dict[str, Any]]
    gl: list[GLRow]
    suspense: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    held: list[dict[str, Any]]
    tie_out: list[TieOut]
    sage_read: bool = True
    notes: list[str] = field(default_factory=list)

    def attention(self) -> list[str]:
        """What keeps the month from closing clean, one sentence each (empty when it closes clean)."""
        out = list(self.notes)
        for t in self.tie_out:
            if not t.bank_ties:
                out.append(f"{t.currency.upper()}: bank {t.bank_account} in Sage differs from what Stripe paid out")
            if not t.balanced:
                out.append(f"{t.currency.upper()}: the trial balance does not net to zero")
        bad = [p for p in self.payouts if p["reconciliation_status"] not in POSTABLE_PAYOUT_STATUSES]
        if bad:
            kinds = ", ".join(sorted({p["reconciliation_status"] for p in bad}))
            out.append(f"{_count(len(bad), 'payout')} not reconciled ({kinds})")
        for items, one, many in (
            (self.suspense, "transaction in suspense", "transactions in suspense"),
            (self.dead_letters, "dead letter", "dead letters"),
            (self.held, "held entry", "held entries"),
        ):
            if items:
                out.append(_count(len(items), one, many))
        return out

    @property
    def ok(self) -> bool:
        """The month closes clean: ties out, nothing in suspense, dead-lettered or held, every payout reconciled."""
        return self.sage_read and not self.attention()

    def summary(self) -> dict[str, Any]:
        """Small figures for the Dagster materialization and the demo."""
        return {
            "month": self.month,
            "ties_out": all(t.ok for t in self.tie_out) and self.sage_read,
            "payouts": len(self.payouts),
            "payouts_not_reconciled": sum(
                1 for p in self.payouts if p["reconciliation_status"] not in POSTABLE_PAYOUT_STATUSES
            ),
            "suspense_items": len(self.suspense),
            "dead_letters": len(self.dead_letters),
            "held_entries": len(self.held),
        }


def _payouts(conn: psycopg.Connection, first: date, last: date) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select r.payout_id, r.stripe_account, r.currency, r.arrival_date, r.payout_status, r.is_automatic,"
            " r.payout_amount as amount, r.gross, r.fees, r.net_of_items, r.difference, r.item_count,"
            " r.missing_count, r.reconciliation_status, r.balance_transaction_id"
            " from finance.fct_payout_reconciliation as r where r.arrival_date between %s and %s"
            " order by r.arrival_date, r.currency, r.payout_id",
            (first, last),
        ).fetchall()


def _reversal_dates(conn: psycopg.Connection) -> dict[str, date]:
    """Payouts that were paid and later failed: the date their reversal is booked (from the marts)."""
    rows = conn.execute(
        "select payout_id, min(posting_date) from finance.fct_journal_lines"
        " where entry_type = 'payout_reversal' and is_selected_mode group by 1"
    ).fetchall()
    return dict(rows)


def _booked(conn: psycopg.Connection, first: date, last: date) -> dict[Key, int]:
    rows = conn.execute(
        "select currency, account_code, sum(debit - credit)::bigint from finance.fct_journal_lines"
        " where is_selected_mode and posting_date between %s and %s group by 1, 2",
        (first, last),
    ).fetchall()
    return {(c, a): int(v) for c, a, v in rows}


def _suspense(conn: psycopg.Connection, first: date, last: date) -> list[dict[str, Any]]:
    """Every balance transaction whose amount went to suspense in an entry of the month (either mode)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select l.external_ref, c.balance_transaction_id, l.posting_date, c.currency, c.reporting_category,"
            " c.balance_transaction_type, c.accounting_category, (-c.amount)::bigint as amount, c.source_id"
            " from (select distinct external_ref, posting_date, entry_type, stripe_account, payout_id,"
            "       balance_transaction_id from finance.fct_journal_lines"
            "       where is_selected_mode and is_unmapped and posting_date between %s and %s) as l"
            " inner join finance_intermediate.int_balance_transactions__classified as c"
            "   on c.stripe_account = l.stripe_account and c.is_unmapped and not c.is_payout_movement"
            "   and (c.balance_transaction_id = l.balance_transaction_id"
            "        or (l.entry_type = 'payout_summary' and c.payout_id = l.payout_id))"
            " order by l.posting_date, l.external_ref, c.balance_transaction_id",
            (first, last),
        ).fetchall()


def _dead_letters(conn: psycopg.Connection, first: date, last: date) -> list[dict[str, Any]]:
    if not conn.execute("select to_regclass('sage_sync.dead_letters') is not null").fetchone()[0]:
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select resource, external_ref, partition_date, field, reason, message, attempt, dead_lettered_at"
            " from sage_sync.dead_letters where partition_date between %s and %s or partition_date is null"
            " order by partition_date, resource, external_ref",
            (first, last),
        ).fetchall()


def _held(conn: psycopg.Connection, first: date, last: date, mapping: Mapping) -> list[dict[str, Any]]:
    """Entries the load keeps back: a payout's summary while the payout does not reconcile."""
    if mapping.posting_mode != "payout_summary":
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "select distinct l.external_ref, l.posting_date, l.currency, r.reconciliation_status, r.difference,"
            " r.missing_count, 'PayoutNotReconciled:' || coalesce(r.reconciliation_status, 'missing') as reason"
            " from finance.fct_journal_lines as l"
            " left join finance.fct_payout_reconciliation as r"
            "   on r.stripe_account = l.stripe_account and r.payout_id = l.payout_id"
            " where l.is_selected_mode and l.entry_type = 'payout_summary' and l.posting_date between %s and %s"
            "   and not (coalesce(r.reconciliation_status, 'missing') = any(%s)"
            "        or (r.reconciliation_status = 'failed' and r.is_complete and r.difference = 0))"
            " order by l.posting_date, l.external_ref",
            (first, last, list(POSTABLE_PAYOUT_STATUSES)),
        ).fetchall()


def _ledger_status(conn: psycopg.Connection, refs: list[str]) -> dict[str, str]:
    if not refs or not conn.execute("select to_regclass('sage_sync.posting_ledger') is not null").fetchone()[0]:
        return {}
    rows = conn.execute(
        "select distinct on (external_ref) external_ref, status from sage_sync.posting_ledger"
        " where resource = 'journal-entries' and external_ref = any(%s)"
        " order by external_ref, version desc",
        (refs,),
    ).fetchall()
    return dict(rows)


def collect(
    conn: psycopg.Connection,
    sage_postings: list[dict[str, Any]] | None,
    mapping: Mapping,
    month: str,
    account_names: MappingT[str, str] | None = None,
    sage_error: str | None = None,
) -> ClosePack:
    """Build the close pack of `month` ('YYYY-MM') from the database and Sage's GL postings of the month.

    `sage_postings`: `GET /gl-postings?from=&to=` of the month (None when Sage could not be read:
    the pack then says so and does not tie out)."""
    first, last = month_bounds(month)
    payouts = _payouts(conn, first, last)
    # A payout's entry is referenced by the payout (summary mode) or its balance transaction (detail mode).
    status = _ledger_status(
        conn,
        [p["payout_id"] for p in payouts]
        + [p["balance_transaction_id"] for p in payouts if p["balance_transaction_id"]],
    )
    for p in payouts:
        p["sage_status"] = status.get(p["payout_id"]) or status.get(p["balance_transaction_id"] or "", "")
    reversals = _reversal_dates(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        staged = cur.execute(
            "select payout_id, currency, payout_status, amount, (arrival_at at time zone 'UTC')::date as arrival_date"
            " from finance_staging.stg_stripe__payouts"
        ).fetchall()
    stripe_days = {k: v for k, v in stripe_paid_out_by_day(staged, reversals).items() if first <= k[1] <= last}
    booked = _booked(conn, first, last)
    sage_read = sage_postings is not None
    sage_mv = gl_movement(sage_postings or [])
    currencies = {c for c, _ in stripe_days} | {c for c, _ in booked} | {c for c, _ in sage_mv}
    banks = {c: mapping.bank_account(c) for c in currencies}
    sage_days = sage_bank_by_day(sage_postings or [], banks)
    names = {**mapping.chart_of_accounts, **(account_names or {})}
    notes = []
    if not sage_read:
        notes.append(
            f"Sage could not be read ({sage_error or 'no answer'}): its GL is missing from this pack and"
            " nothing ties out."
        )
    return ClosePack(
        month=month,
        first=first,
        last=last,
        posting_mode=mapping.posting_mode,
        base_currency=mapping.base_currency,
        days=daily_rows(currencies, month_days(first, last), stripe_days, sage_days),
        payouts=payouts,
        gl=gl_rows(sage_mv, booked, names),
        suspense=_suspense(conn, first, last),
        dead_letters=_dead_letters(conn, first, last),
        held=_held(conn, first, last, mapping),
        tie_out=tie_out(currencies, sage_mv, stripe_days, banks),
        sage_read=sage_read,
        notes=notes,
    )


def read_sage_postings(client: Any, first: date, last: date) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(Sage's GL postings dated within [first, last], None) or (None, why Sage could not be read)."""
    try:
        return list(client.list_all("/gl-postings", {"from": first.isoformat(), "to": last.isoformat()})), None
    except Exception as err:  # the pack is still written, saying Sage was not read
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
