"""The mapping's effect on the GL, as pure functions: what the studio's preview computes.

The dbt models are the pipeline's truth; these functions restate the same rules (accounting.md, the
classification in int_balance_transactions__classified and the legs of macros/journal_legs.sql) in
Python so that a *draft* mapping can be tried on a month of marts in milliseconds, without building
anything or touching Sage. `tests/unit/test_studio_rules.py` checks them on hand-made rows, and the
integration tests check that under the active mapping they give exactly the legs and the journal
lines dbt built (so the two cannot drift apart unnoticed). The preview itself also compares them
with the marts every time and says so on the page when they differ.

Amounts are integers in minor units, positive = debit, negative = credit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from collections.abc import Mapping as MappingT
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from stripe_sage_pipeline.money import exponent
from stripe_sage_pipeline.transform.mapping import BUILT_IN_CATEGORIES, Mapping

PAYOUT_MOVEMENT_TYPES = frozenset({"payout", "payout_cancel", "payout_failure"})
PAYOUT_CATEGORIES = frozenset({"payout", "payout_reversal"})
# Categories that move their charge's tax pro rata (dbt: macros/invoices.sql tax_reversing_categories).
TAX_REVERSING_CATEGORIES = frozenset(
    {"refund", "refund_failure", "partial_capture_reversal", "dispute", "dispute_reversal"}
)

Legs = dict[str, int]  # account code -> signed amount (netted per account)


def accounting_category(m: Mapping, reporting_category: str | None, bt_type: str) -> tuple[str, str]:
    """(category, source) of a balance transaction: its reporting category when built in or mapped,
    else the type fallback, else unmapped (the category or type it carries, posted to suspense)."""
    rc = reporting_category or ""
    if rc in BUILT_IN_CATEGORIES:
        return rc, "reporting_category"
    if rc in m.categories:
        return rc, "reporting_category"
    if bt_type in m.type_fallback:
        return m.type_fallback[bt_type], "type_fallback"
    return (rc or bt_type), "unmapped"


def is_payout_movement(category: str, bt_type: str) -> bool:
    """Payouts and their failures are posted from the payout, not per transaction."""
    return category in PAYOUT_CATEGORIES or bt_type in PAYOUT_MOVEMENT_TYPES


def counter_account(m: Mapping, category: str, currency: str) -> str:
    """The account that takes the transaction's amount (less tax)."""
    if category == "charge":
        return m.accounts.revenue
    if category in PAYOUT_CATEGORIES:
        return m.bank_account(currency)
    return m.categories.get(category, m.accounts.suspense)


def convert_minor(amount: int, from_currency: str, to_currency: str, rate: Decimal) -> int:
    """Minor units of one currency in another at a per-major-unit rate, half away from zero (as dbt)."""
    value = Decimal(amount) * Decimal(rate) * Decimal(10) ** (exponent(to_currency) - exponent(from_currency))
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _div_half_away(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half away from zero, exactly (integers, no float)."""
    q, r = divmod(abs(numerator), abs(denominator))
    if 2 * r >= abs(denominator):
        q += 1
    return q if (numerator < 0) == (denominator < 0) else -q


def charge_tax_presentment(m: Mapping, bt: MappingT[str, Any]) -> int:
    """The tax of the transaction's charge (its own, or the refunded / disputed one) in the charge's
    currency, per the mapping's tax source: the invoice's tax when the charge has an invoice (source
    `invoice_then_metadata`), else the metadata key when it is an integer, else 0."""
    if not (bt.get("related_charge_id") or bt.get("charge_id")) or m.tax.source == "none":
        return 0
    if m.tax.source == "invoice_then_metadata" and bt.get("invoice_id"):
        return int(bt.get("invoice_tax") or 0)
    raw = (bt.get("charge_metadata") or {}).get(m.tax.metadata_key)
    text = str(raw) if raw is not None else ""
    body = text[1:] if text.startswith("-") else text
    return int(text) if body.isdigit() and body.isascii() else 0


def tax_amount(m: Mapping, category: str, bt: MappingT[str, Any]) -> int:
    """The tax part of a transaction in the settlement currency (0 when it has none).

    A charge: its tax, converted at the transaction's rate when presented in another currency. A
    refund, dispute or their reversal (`TAX_REVERSING_CATEGORIES`, mapping `tax.reverse_on_refunds`):
    the charge's tax pro rata to the amount moved, `amount x tax / charge amount` (tax and charge
    amount both in the charge's currency), half away from zero; a full refund in the charge's
    currency moves exactly the charge's tax. Negative when tax is given back (a debit to sales tax).
    """
    presentment = charge_tax_presentment(m, bt)
    if presentment == 0:
        return 0
    if category == "charge":
        pc, rate = bt.get("presentment_currency"), bt.get("exchange_rate")
        if pc is None or pc == bt["currency"] or rate is None:
            return presentment
        return convert_minor(presentment, pc, bt["currency"], Decimal(str(rate)))
    if not m.tax.reverse_on_refunds or category not in TAX_REVERSING_CATEGORIES:
        return 0
    gross = int(bt.get("charge_amount") or 0)
    if gross == 0:
        return 0
    amount = int(bt["amount"])
    if bt.get("charge_currency") == bt["currency"] and amount == -gross:
        return -presentment
    return _div_half_away(amount * presentment, gross)


def transaction_legs(m: Mapping, bt: MappingT[str, Any]) -> tuple[str, bool, Legs]:
    """(accounting category, unmapped?, legs netted per account) of one balance transaction.

    `bt` carries the staged columns: amount, fee, net, currency, reporting_category,
    balance_transaction_type, fee_details (list of {amount, type}); for charges charge_id,
    presentment_currency, exchange_rate; and for a charge, refund or dispute the related charge's
    related_charge_id, charge_amount, charge_currency (its presentment amount and currency),
    invoice_id, invoice_tax and charge_metadata (its tax)."""
    category, source = accounting_category(m, bt.get("reporting_category"), bt["balance_transaction_type"])
    legs: Legs = defaultdict(int)
    if is_payout_movement(category, bt["balance_transaction_type"]):
        return category, source == "unmapped", {}
    cur = bt["currency"]
    tax = tax_amount(m, category, bt)
    legs[m.clearing_account(cur)] += int(bt["net"])
    legs[counter_account(m, category, cur)] += -(int(bt["amount"]) - tax)
    if tax:
        legs[m.accounts.sales_tax] += -tax
    override = m.fees.by_category.get(category)
    fee = int(bt["fee"])
    details = bt.get("fee_details") or []
    if override is None:
        for fd in details:
            legs[m.fees.by_fee_type.get(fd.get("type"), m.fees.default)] += int(fd["amount"])
        legs[m.fees.default] += fee - sum(int(fd["amount"]) for fd in details)
    else:
        legs[override] += fee
    return category, source == "unmapped", {a: v for a, v in legs.items() if v != 0}


def posting_date(m: Mapping, bt: MappingT[str, Any]) -> date:
    """The calendar day that dates a transaction's detail entry (activity_date, in the mapping's zone)."""
    ts: datetime = bt["available_at"] if m.posting_date.activity_date == "available_on" else bt["created_at"]
    return ts.astimezone(ZoneInfo(m.posting_date.timezone)).date()


def payout_bank_legs(m: Mapping, currency: str, amount: int, sign: int = 1) -> Legs:
    """Dr Bank / Cr Clearing for a paid payout (sign -1: its reversal)."""
    legs: Legs = defaultdict(int)
    legs[m.bank_account(currency)] += sign * amount
    legs[m.clearing_account(currency)] += -sign * amount
    return {a: v for a, v in legs.items() if v != 0}


@dataclass
class Entry:
    """A journal entry as it books: reference, date, currency and netted lines."""

    entry_id: str
    external_ref: str
    entry_type: str
    posting_date: date
    currency: str
    lines: Legs
    payout_id: str | None = None
    unmapped: bool = False

    def booked(self) -> tuple:
        """What a posted entry's content hash depends on (date, currency, accounts and amounts)."""
        return (self.posting_date, self.currency, tuple(sorted(self.lines.items())))


def _add(into: Legs, legs: MappingT[str, int]) -> None:
    for a, v in legs.items():
        into[a] = into.get(a, 0) + v


def _prefix(stripe_account: str) -> str:
    return f"{stripe_account}:" if stripe_account else ""


@dataclass
class MonthData:
    """What the preview reads from the marts for one month (see `studio.data.month_data`)."""

    first: date
    last: date
    transactions: list[dict[str, Any]]  # classified balance transactions (staged columns + leg arrays)
    payouts: dict[tuple[str, str], dict[str, Any]]  # (stripe_account, payout_id) -> amount, currency, ...
    mart_lines: list[dict[str, Any]]  # fct_journal_lines of the month, both modes
    posted: dict[str, str] = field(default_factory=dict)  # external_ref -> ledger status of journal entries


def entries(m: Mapping, data: MonthData, mode: str | None = None) -> dict[str, Entry]:
    """The month's journal entries (posting date within the month) in `mode` (default: the mapping's)."""
    mode = mode or m.posting_mode
    out: dict[str, Entry] = {}
    members: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for bt in data.transactions:
        if bt.get("payout_id"):
            members[(bt["stripe_account"], bt["payout_id"])].append(bt)
        if mode != "detail":
            continue
        category, unmapped, legs = transaction_legs(m, bt)
        day = posting_date(m, bt)
        if not legs or not (data.first <= day <= data.last):
            continue
        eid = f"detail:{_prefix(bt['stripe_account'])}{bt['balance_transaction_id']}"
        out[eid] = Entry(
            eid,
            bt["balance_transaction_id"],
            "balance_transaction",
            day,
            bt["currency"],
            legs,
            bt.get("payout_id"),
            unmapped,
        )
    # Payout-level entries: which exist, and when, is the marts' (paid, automatic, failed later).
    heads: dict[str, dict[str, Any]] = {}
    for ln in data.mart_lines:
        if ln["posting_mode"] == mode and ln["entry_type"] != "balance_transaction":
            heads.setdefault(ln["entry_id"], ln)
    for eid, head in heads.items():
        key = (head["stripe_account"], head["payout_id"])
        p = data.payouts.get(key)
        if p is None:
            continue
        cur, amount = p["currency"], int(p["amount"])
        if head["entry_type"] == "payout_summary":
            legs: Legs = {}
            unmapped = False
            for bt in members.get(key, []):
                _, um, bt_legs = transaction_legs(m, bt)
                _add(legs, bt_legs)
                unmapped = unmapped or (um and bool(bt_legs))
            _add(legs, payout_bank_legs(m, cur, amount))
        else:
            legs = payout_bank_legs(m, cur, amount, -1 if head["entry_type"] == "payout_reversal" else 1)
            unmapped = False
        out[eid] = Entry(
            eid,
            head["external_ref"],
            head["entry_type"],
            head["posting_date"],
            cur,
            {a: v for a, v in legs.items() if v != 0},
            head["payout_id"],
            unmapped,
        )
    return out


def mart_entries(data: MonthData, mode: str) -> dict[str, Entry]:
    """The month's journal entries exactly as fct_journal_lines holds them, in `mode`."""
    out: dict[str, Entry] = {}
    for ln in data.mart_lines:
        if ln["posting_mode"] != mode:
            continue
        e = out.get(ln["entry_id"])
        if e is None:
            e = out[ln["entry_id"]] = Entry(
                ln["entry_id"],
                ln["external_ref"],
                ln["entry_type"],
                ln["posting_date"],
                ln["currency"],
                {},
                ln.get("payout_id"),
            )
        e.lines[ln["account_code"]] = e.lines.get(ln["account_code"], 0) + int(ln["debit"]) - int(ln["credit"])
        e.unmapped = e.unmapped or bool(ln.get("is_unmapped"))
    for e in out.values():
        e.lines = {a: v for a, v in e.lines.items() if v != 0}
    return out


def movement(entries_: Iterable[Entry]) -> dict[tuple[str, str], int]:
    """Net movement per (currency, account) of a set of entries."""
    out: dict[tuple[str, str], int] = defaultdict(int)
    for e in entries_:
        for a, v in e.lines.items():
            out[(e.currency, a)] += v
    return dict(out)


@dataclass
class MovementRow:
    """One (currency, account) of the preview: today's movement, the draft's, and the difference."""

    currency: str
    account: str
    current: int
    draft: int

    @property
    def difference(self) -> int:
        """Draft minus current, minor units."""
        return self.draft - self.current


@dataclass
class EntryChange:
    """A journal entry the draft books differently: what the next load does with it."""

    external_ref: str
    entry_id: str
    posting_date: date
    currency: str
    action: str  # reverse_and_repost | post_changed | reverse_only | post_new
    ledger_status: str | None
    current: Legs
    draft: Legs


@dataclass
class Preview:
    """GL movement of a month under the draft next to today's, and the entries that would change."""

    first: date
    last: date
    current_mode: str
    draft_mode: str
    rows: list[MovementRow]
    changes: list[EntryChange]
    model_gap: dict[tuple[str, str], int]  # rules (active mapping) minus marts: {} when they agree
    unmapped_current: int
    unmapped_draft: int

    @property
    def changed_rows(self) -> list[MovementRow]:
        """Only the rows that differ."""
        return [r for r in self.rows if r.difference]


def preview(current: Mapping, draft: Mapping, data: MonthData) -> Preview:
    """Compare the month's GL under the draft with today's (the marts), entry by entry.

    Today's side is the marts as built (the selected mode). The draft's side is the marts' lines
    with every transaction's legs re-derived under the draft; `model_gap` is what the same rules
    give under the *active* mapping minus the marts, which must be empty (it is shown if not).
    """
    today = mart_entries(data, current.posting_mode)
    draft_entries = entries(draft, data)
    replay = movement(entries(current, data).values())
    built = movement(today.values())
    gap = {
        k: replay.get(k, 0) - built.get(k, 0) for k in set(replay) | set(built) if replay.get(k, 0) != built.get(k, 0)
    }
    cur_mv, new_mv = built, movement(draft_entries.values())
    rows = [
        MovementRow(c, a, cur_mv.get((c, a), 0), new_mv.get((c, a), 0)) for c, a in sorted(set(cur_mv) | set(new_mv))
    ]
    changes: list[EntryChange] = []
    by_ref_today = {e.external_ref: e for e in today.values()}
    by_ref_draft = {e.external_ref: e for e in draft_entries.values()}
    for ref in sorted(set(by_ref_today) | set(by_ref_draft)):
        old, new = by_ref_today.get(ref), by_ref_draft.get(ref)
        if old is not None and new is not None and old.booked() == new.booked():
            continue
        status = data.posted.get(ref)
        if old is not None and new is not None:
            action = "reverse_and_repost" if status == "posted" else "post_changed"
        elif old is not None:
            action = "reverse_only" if status == "posted" else "drop"
        else:
            action = "post_new"
        e = new or old
        changes.append(
            EntryChange(
                ref,
                e.entry_id,
                e.posting_date,
                e.currency,
                action,
                status,
                dict(old.lines) if old else {},
                dict(new.lines) if new else {},
            )
        )
    return Preview(
        data.first,
        data.last,
        current.posting_mode,
        draft.posting_mode,
        rows,
        changes,
        gap,
        sum(1 for e in today.values() if e.unmapped),
        sum(1 for e in draft_entries.values() if e.unmapped),
    )


# -- inventory ----------------------------------------------------------------------------------------


@dataclass
class InventoryRow:
    """One value found in staging (a category, type, fee type or currency) and where it goes today."""

    kind: str  # reporting_category | balance_transaction_type | fee_type | currency
    value: str
    currency: str
    count: int
    amount: int  # Σ amount (fee types: Σ fee) in minor units of `currency`
    account: str  # where it posts under the mapping ("" when not applicable)
    route: str  # how: "categories", "type_fallback → refund", "built-in", "suspense", ...
    suspense: bool = False


def route_category(m: Mapping, reporting_category: str, bt_type: str, currency: str) -> tuple[str, str, bool]:
    """(account, how, to suspense?) of a (reporting_category, type) pair under the mapping."""
    category, source = accounting_category(m, reporting_category, bt_type)
    if is_payout_movement(category, bt_type):
        return m.bank_account(currency), "built-in: bank of the currency", False
    if category == "charge":
        return m.accounts.revenue, "built-in: revenue (+ sales tax)", False
    if source == "unmapped":
        return m.accounts.suspense, "no mapping: suspense", True
    how = "categories" if source == "reporting_category" else f"type_fallback → {category}"
    if category not in m.categories:
        return m.accounts.suspense, f"{how} (category not mapped): suspense", True
    return m.categories[category], how, False


def inventory(
    m: Mapping, groups: Sequence[MappingT[str, Any]], fee_groups: Sequence[MappingT[str, Any]]
) -> list[InventoryRow]:
    """Everything the money contains, with where it goes; suspense first (largest amount first).

    `groups`: counts and Σ amount per (reporting_category, balance_transaction_type, currency);
    `fee_groups`: counts and Σ amount per (fee type, reporting_category, currency)."""
    rows: list[InventoryRow] = []
    by_cat: dict[tuple[str, str], list] = defaultdict(lambda: [0, 0, "", "", False])
    by_type: dict[tuple[str, str], list] = defaultdict(lambda: [0, 0, "", "", False])
    by_ccy: dict[str, list] = defaultdict(lambda: [0, 0])
    for g in groups:
        rc, t, cur, n, amt = (
            g["reporting_category"] or "",
            g["balance_transaction_type"],
            g["currency"],
            int(g["n"]),
            int(g["amount"]),
        )
        account, how, susp = route_category(m, rc, t, cur)
        for bucket, key in ((by_cat, (rc or f"(none: {t})", cur)), (by_type, (t, cur))):
            b = bucket[key]
            b[0] += n
            b[1] += amt
            if susp or not b[2]:
                b[2], b[3] = account, how
            b[4] = b[4] or susp
        by_ccy[cur][0] += n
        by_ccy[cur][1] += amt
    for (v, cur), (n, amt, acct, how, susp) in by_cat.items():
        rows.append(InventoryRow("reporting_category", v, cur, n, amt, acct, how, susp))
    for (v, cur), (n, amt, acct, how, susp) in by_type.items():
        rows.append(InventoryRow("balance_transaction_type", v, cur, n, amt, acct, how, susp))
    for g in fee_groups:
        ft, rc, cur = g["fee_type"], g["accounting_category"], g["currency"]
        if rc in m.fees.by_category:
            acct, how = m.fees.by_category[rc], f"fees.by_category.{rc}"
        elif ft in m.fees.by_fee_type:
            acct, how = m.fees.by_fee_type[ft], "fees.by_fee_type"
        else:
            acct, how = m.fees.default, "fees.default"
        rows.append(InventoryRow("fee_type", f"{ft} ({rc})", cur, int(g["n"]), int(g["amount"]), acct, how))
    for cur, (n, amt) in by_ccy.items():
        pair = m.currencies.get(cur)
        how = f"currencies.{cur}" if pair else "currencies.default"
        rows.append(
            InventoryRow("currency", cur, cur, n, amt, f"{m.clearing_account(cur)} / {m.bank_account(cur)}", how)
        )
    order = {"reporting_category": 0, "balance_transaction_type": 1, "fee_type": 2, "currency": 3}
    rows.sort(key=lambda r: (not r.suspense, order[r.kind], -abs(r.amount) if r.suspense else 0, r.value, r.currency))
    return rows
