"""Great Expectations suites, as code, for staging and the finance marts.

A suite is a list of named checks, each one GX expectation on one table (or on the rows of that
table loaded since a moment, for incremental runs). Row-level rules that need SQL across columns
or rows (an entry balances, net = amount - fee) are `UnexpectedRowsExpectation`s: GX runs the
query in Postgres and returns the offending rows, so nothing large is pulled into Python.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from stripe_sage_pipeline.transform.mapping import BT_TYPES

log = logging.getLogger(__name__)

PAYOUT_STATUSES = ["paid", "pending", "in_transit", "canceled", "failed"]
CHARGE_STATUSES = ["succeeded", "pending", "failed"]
REFUND_STATUSES = ["pending", "succeeded", "failed", "requires_action", "canceled"]
BT_STATUSES = ["available", "pending"]


def iso_currencies() -> list[str]:
    """Lower-case ISO 4217 codes (from Babel's CLDR data, which dbt's agate already installs)."""
    from babel.numbers import list_currencies

    return sorted(c.lower() for c in list_currencies())


@dataclass(frozen=True)
class Check:
    """One named expectation on one table; `kind` picks the GX expectation class."""

    name: str
    schema: str
    table: str
    kind: str  # unexpected_rows | not_null | unique (of `columns`, reported per duplicated key) | in_set
    sql: str | None = None  # for unexpected_rows: a query over {batch} returning the offending rows
    column: str | None = None
    columns: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    time_column: str = "_loaded_at"  # rows newer than `since` are the window of an incremental run
    description: str = ""
    # Blocking: a failure stops everything downstream (the load). Not blocking: the failure is
    # reported (a warning, alerted) and what it affects is held by the loader itself, so the rest
    # posts; `holds` says what is held (README "Which checks block what").
    blocking: bool = True
    holds: str = ""


@dataclass
class CheckResult:
    """Outcome of one check: passed, how many rows failed, and the first few of them."""

    name: str
    passed: bool
    unexpected_count: int
    failing_rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


@dataclass
class Result:
    """Outcome of a suite: passed, the first failing rows (with their check's name), statistics."""

    suite: str
    passed: bool
    failing_rows_first_n: list[dict[str, Any]]
    stats: dict[str, Any]
    checks: list[CheckResult]

    def failed_checks(self) -> list[str]:
        """Names of the checks that failed."""
        return [c.name for c in self.checks if not c.passed]


def _staging_checks() -> list[Check]:
    s = "stripe_staging"
    t = "_extracted_at"
    checks = [
        Check(
            "staging_balance_transaction_ids_unique",
            s,
            "balance_transactions",
            "unique",
            columns=("stripe_account", "id"),
            time_column=t,
        ),
        Check(
            "staging_net_equals_amount_minus_fee",
            s,
            "balance_transactions",
            "unexpected_rows",
            time_column=t,
            sql="select stripe_account, id, amount, fee, net from {batch} where net <> amount - fee",
            description="Every balance transaction: net == amount - fee.",
            blocking=False,
            holds="its journal entry does not balance: the loader refuses its posting day (and its payout's summary)",
        ),
        # No or one fee detail (nearly every row) is read directly; only longer lists are expanded.
        Check(
            "staging_fee_equals_fee_details",
            s,
            "balance_transactions",
            "unexpected_rows",
            time_column=t,
            sql="select stripe_account, id, fee, fee_details_total from ("
            " select stripe_account, id, fee, coalesce(case jsonb_array_length(fee_details) when 0 then 0"
            " when 1 then (fee_details -> 0 ->> 'amount')::bigint end,"
            " (select coalesce(sum((d ->> 'amount')::bigint), 0)"
            " from jsonb_array_elements(fee_details) as d)) as fee_details_total from {batch}) as b"
            " where fee <> fee_details_total",
            description="Every balance transaction: fee == sum(fee_details.amount).",
            blocking=False,
            holds="nothing: the part fee_details do not explain is posted to the default fee account",
        ),
        Check(
            "staging_balance_transaction_currency_iso",
            s,
            "balance_transactions",
            "in_set",
            column="currency",
            values=tuple(iso_currencies()),
            time_column=t,
        ),
        Check(
            "staging_balance_transaction_type_known",
            s,
            "balance_transactions",
            "in_set",
            column="type",
            values=tuple(sorted(BT_TYPES)),
            time_column=t,
            blocking=False,
            description="Transaction types Stripe documents (a new one is data Stripe legitimately sends).",
            holds="nothing: an unmapped type posts to suspense, flagged",
        ),
        Check(
            "staging_balance_transaction_status_known",
            s,
            "balance_transactions",
            "in_set",
            column="status",
            values=tuple(BT_STATUSES),
            time_column=t,
            blocking=False,
            holds="nothing",
        ),
        Check("staging_charge_ids_unique", s, "charges", "unique", columns=("stripe_account", "id"), time_column=t),
        Check(
            "staging_charge_status_known",
            s,
            "charges",
            "in_set",
            column="status",
            values=tuple(CHARGE_STATUSES),
            time_column=t,
            blocking=False,
            holds="nothing: only succeeded charges become invoices",
        ),
        Check(
            "staging_charge_currency_iso",
            s,
            "charges",
            "in_set",
            column="currency",
            values=tuple(iso_currencies()),
            time_column=t,
        ),
        Check(
            "staging_refund_status_known",
            s,
            "refunds",
            "in_set",
            column="status",
            values=tuple(REFUND_STATUSES),
            time_column=t,
            blocking=False,
            holds="nothing: refunds post from their balance transactions",
        ),
        Check("staging_payout_ids_unique", s, "payouts", "unique", columns=("stripe_account", "id"), time_column=t),
        Check(
            "staging_payout_status_known",
            s,
            "payouts",
            "in_set",
            column="status",
            values=tuple(PAYOUT_STATUSES),
            time_column=t,
            blocking=False,
            holds="that payout: posted only once paid",
        ),
        Check(
            "staging_payout_members_staged",
            s,
            "payout_balance_transactions",
            "unexpected_rows",
            time_column=t,
            sql="select m.stripe_account, m.payout_id, m.balance_transaction_id from (select * from {batch}) as m"
            " where not exists (select 1 from stripe_staging.balance_transactions as b"
            " where b.stripe_account = m.stripe_account and b.id = m.balance_transaction_id)",
            description="Every transaction listed in a payout has been extracted.",
            blocking=False,
            holds="that payout's summary entry (its reconciliation is incomplete until the transaction arrives)",
        ),
    ]
    return checks


def _journal_checks() -> list[Check]:
    f = "finance"
    return [
        # Unbalanced entries are found with a hash aggregate (min <> max: more than one currency);
        # count(distinct), which needs sorting all lines, is only computed for those.
        Check(
            "journal_lines_balance",
            f,
            "fct_journal_lines",
            "unexpected_rows",
            sql="select entry_id, min(external_ref) as external_ref, sum(debit) as total_debit,"
            " sum(credit) as total_credit, sum(debit) - sum(credit) as difference,"
            " count(distinct currency) as currencies from {batch}"
            " where entry_id in (select entry_id from {batch} group by entry_id"
            " having sum(debit) <> sum(credit) or min(currency) <> max(currency))"
            " group by entry_id",
            description="Every entry: sum(debit) == sum(credit) to the minor unit, in one currency.",
            blocking=False,
            holds="the posting day of that entry (the loader refuses a day with an unbalanced entry)",
        ),
        Check(
            "journal_lines_one_sided",
            f,
            "fct_journal_lines",
            "unexpected_rows",
            sql="select journal_line_id, entry_id, account_code, debit, credit from {batch}"
            " where debit < 0 or credit < 0 or (debit > 0) = (credit > 0)",
            description="Every line is non-negative and on exactly one side.",
            blocking=False,
            holds="the posting day of that entry (the loader refuses it)",
        ),
        Check(
            "journal_lines_accounts_in_chart",
            f,
            "fct_journal_lines",
            "unexpected_rows",
            sql="select journal_line_id, entry_id, account_code from (select * from {batch}) as j where not exists"
            " (select 1 from finance_config.accounts as a where a.account_code = j.account_code)",
            description="Every account used is in the mapping's chart of accounts.",
            blocking=False,
            holds="that entry (dead-lettered by the loader's account check, re-driven once the account exists)",
        ),
        Check("journal_lines_posting_date_present", f, "fct_journal_lines", "not_null", column="posting_date"),
    ]


def _payout_checks() -> list[Check]:
    return [
        Check(
            "payout_reconciliation_zero_difference",
            "finance",
            "fct_payout_reconciliation",
            "unexpected_rows",
            sql="select payout_id, payout_status, payout_amount, net_of_items, difference from {batch}"
            " where is_complete and payout_status not in ('failed', 'canceled') and difference <> 0",
            description="Every complete automatic payout: amount == sum(net) of its items.",
            blocking=False,
            holds="that payout's summary entry (PayoutNotReconciled:difference)",
        ),
        Check(
            "payout_members_net_to_zero",
            "finance",
            "fct_payout_reconciliation",
            "unexpected_rows",
            sql="select payout_id, net_of_all from {batch}"
            " where is_complete and has_own_transaction and payout_status not in ('failed', 'canceled')"
            " and net_of_all <> 0",
            description="Every complete automatic payout: the net of all its transactions (its own included) is 0.",
            blocking=False,
            holds="that payout's summary entry",
        ),
    ]


def _invoice_checks() -> list[Check]:
    return [
        Check(
            "invoice_totals_equal_lines_plus_tax",
            "finance",
            "fct_invoice_lines",
            "unexpected_rows",
            sql="select document_key, max(document_total) as document_total, sum(line_amount) as lines_total,"
            " max(document_tax) as document_tax from {batch} group by document_key"
            " having max(document_total) <> sum(line_amount) + max(document_tax)",
            description="Every document: total == sum(line amounts) + tax (lines after discounts and included tax).",
            blocking=False,
            holds="the posting day of that invoice (the loader refuses it)",
        ),
        Check(
            "invoice_lines_revenue_account_present",
            "finance",
            "fct_invoice_lines",
            "not_null",
            column="revenue_account",
        ),
    ]


SUITES: dict[str, Any] = {
    "staging": _staging_checks,
    "journal_lines": _journal_checks,
    "payout_reconciliation": _payout_checks,
    "invoice_lines": _invoice_checks,
}


def suite_checks(name: str) -> list[Check]:
    """The checks of a suite by name (staging, journal_lines, payout_reconciliation, invoice_lines)."""
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    return SUITES[name]()


# Kinds run as one SQL query returning the offending rows (GX's UnexpectedRowsExpectation).
ROW_QUERY_KINDS = ("unexpected_rows", "unique")

# Session settings of the suites' connections: room for the hash aggregates over whole marts, and
# no JIT compilation, which costs more than it saves on these short scans (PostgreSQL 18).
SESSION_OPTIONS = "-c work_mem=256MB -c jit=off"


def _with_session_options(url: str) -> str:
    """`url` with SESSION_OPTIONS as libpq `options` (unless the URL already sets options)."""
    from urllib.parse import quote

    if "options=" in url:
        return url
    return url + ("&" if "?" in url else "?") + "options=" + quote(SESSION_OPTIONS)


def _expectation(check: Check):
    """The GX expectation of a check, tagged with the check's name (meta.check) to read its result back."""

    exp = _gx_expectation(check)
    exp.meta = {**(exp.meta or {}), "check": check.name}
    return exp


def _gx_expectation(check: Check):
    from stripe_sage_pipeline.quality.gx_import import gx

    if check.kind == "unexpected_rows":
        return gx.expectations.UnexpectedRowsExpectation(
            unexpected_rows_query=check.sql, description=check.description or check.name
        )
    if check.kind == "not_null":
        return gx.expectations.ExpectColumnValuesToNotBeNull(column=check.column)
    if check.kind == "unique":
        # One aggregate over the key (GX's compound-unique metric also lists every duplicated row).
        cols = ", ".join(check.columns)
        return gx.expectations.UnexpectedRowsExpectation(
            unexpected_rows_query=f"select {cols}, count(*) as duplicates from {{batch}} group by {cols} having count(*) > 1",
            description=check.description or check.name,
        )
    if check.kind == "in_set":
        return gx.expectations.ExpectColumnValuesToBeInSet(column=check.column, value_set=list(check.values))
    raise ValueError(f"unknown check kind {check.kind!r}")


@functools.lru_cache(maxsize=4)
def _datasource(url: str):
    """An ephemeral GX context's Postgres data source for `url`, kept for the process: the suites of
    one run (and the checks of one Dagster run) share its engine instead of each building one."""
    from stripe_sage_pipeline.quality.gx_import import ProgressBarsConfig, gx

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return ctx.data_sources.add_postgres("stripe_sage", connection_string=_with_session_options(url))


def forget_data_sources() -> None:
    """Drop the kept data sources (and their pooled connections), e.g. after their database was replaced."""
    _datasource.cache_clear()


def _rows_from(result: dict[str, Any], check: Check, n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if check.kind in ROW_QUERY_KINDS:
        rows = list((result.get("details") or {}).get("unexpected_rows") or [])
    else:
        values = result.get("partial_unexpected_list") or result.get("unexpected_list") or []
        rows = [v if isinstance(v, dict) else {check.column or "value": v} for v in values]
    return [{"check": check.name, **{k: _jsonable(v) for k, v in r.items()}} for r in rows[:n]]


def _raised(info: Any) -> str | None:
    """The first exception message in a GX result's exception_info (flat, or keyed by metric)."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for v in info.values():
        if isinstance(v, dict) and v.get("raised_exception"):
            return str(v.get("exception_message"))[:500]
    return None


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


# Per check, the newest row time a passing run validated (its high-water mark).
STATE_TABLE = "finance_config.quality_state"
STATE_DDL = (
    "create schema if not exists finance_config;"
    f" create table if not exists {STATE_TABLE} (check_name text primary key,"
    " validated_through timestamptz not null, updated_at timestamptz not null default now())"
)

SCOPES = ("changed", "all")


def _lookback(check: Check) -> timedelta:
    """How far before its mark a check re-reads: extraction transactions can commit rows stamped a
    little earlier than rows already validated (the dbt models' `extracted_lookback_minutes`);
    a mart's rows are stamped by the one dbt transaction that wrote them, so none there."""
    if check.time_column != "_extracted_at":
        return timedelta(0)
    from stripe_sage_pipeline.transform.build import dbt_vars

    return timedelta(minutes=int(dbt_vars()["extracted_lookback_minutes"]))


def _marks(url: str, checks: list[Check]) -> tuple[dict[str, datetime], dict[tuple[str, str, str], datetime | None]]:
    """The stored marks of `checks`, and the newest row time of each table they read (now)."""
    import psycopg

    from stripe_sage_pipeline.runtime.db import libpq_url

    tables = sorted({(c.schema, c.table, c.time_column) for c in checks})
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute(STATE_DDL)
        marks = dict(
            conn.execute(
                f"select check_name, validated_through from {STATE_TABLE} where check_name = any(%s)",
                ([c.name for c in checks],),
            ).fetchall()
        )
        newest = {t: conn.execute(f"select max({t[2]}) from {t[0]}.{t[1]}").fetchone()[0] for t in tables}
        conn.commit()
    return marks, newest


def _save_marks(url: str, marks: dict[str, datetime]) -> None:
    import psycopg

    from stripe_sage_pipeline.runtime.db import libpq_url

    with psycopg.connect(libpq_url(url)) as conn:
        conn.cursor().executemany(
            f"insert into {STATE_TABLE} (check_name, validated_through) values (%s, %s) on conflict (check_name)"
            " do update set validated_through = greatest(excluded.validated_through,"
            f" {STATE_TABLE}.validated_through), updated_at = now()",
            list(marks.items()),
        )
        conn.commit()


def run_suite(
    name: str,
    url: str,
    since: datetime | None = None,
    first_n: int = 20,
    *,
    scope: str = "all",
    checks: list[str] | None = None,
) -> Result:
    """Run one suite against the database at `url` (SQLAlchemy URL, TCP host).

    Which rows each check reads:
      * `since` given: the rows loaded (marts) or extracted (staging) at or after it;
      * `scope="changed"`: the rows newer than what the last passing run of that check validated
        (its mark in finance_config.quality_state, less the check's look-back) -- every row the
        first time, and every rebuilt row after a full refresh;
      * `scope="all"`: every row.
    Without `since`, a passing check moves its mark to the newest row time it saw, and a failing one
    keeps it, so its rows are read again until they pass. `checks` limits the run to those names.
    """
    from stripe_sage_pipeline.quality.gx_import import gx

    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; known: {', '.join(SCOPES)}")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    selected = [c for c in suite_checks(name) if checks is None or c.name in checks]
    marks, newest = _marks(url, selected) if since is None else ({}, {})

    def window(check: Check) -> tuple[str, datetime] | None:
        if since is not None:
            return (">=", since)
        if scope == "changed" and check.name in marks:
            return (">", marks[check.name] - _lookback(check))
        return None

    # One GX batch per table and window; the checks on it are validated together as one suite.
    groups: dict[tuple[str, tuple[str, datetime] | None], list[Check]] = {}
    for check in selected:
        groups.setdefault((f"{check.schema}.{check.table}", window(check)), []).append(check)
    ds = _datasource(url)
    by_name: dict[str, CheckResult] = {}
    for i, ((key, win), group) in enumerate(groups.items()):
        first = group[0]
        asset_name = f"{name}:{key}#{i}"
        suite = gx.ExpectationSuite(name=asset_name, expectations=[_expectation(c) for c in group])
        try:
            if win is None:
                asset = ds.add_table_asset(asset_name, table_name=first.table, schema_name=first.schema)
            else:
                asset = ds.add_query_asset(
                    asset_name,
                    query=f"select * from {key} where {first.time_column} {win[0]} '{win[1].isoformat()}'::timestamptz",
                )
            try:
                validation = (
                    asset.add_batch_definition_whole_table("all").get_batch().validate(suite, result_format="COMPLETE")
                )
            finally:
                ds.delete_asset(asset_name)
            outcomes = {(r.expectation_config.meta or {}).get("check"): r for r in validation.results}
        except Exception as exc:  # a check that cannot run must fail, never pass silently
            for c in group:
                by_name[c.name] = CheckResult(c.name, False, -1, [], f"{type(exc).__name__}: {exc}")
            continue
        for c in group:
            r = outcomes.get(c.name)
            if r is None:
                by_name[c.name] = CheckResult(c.name, False, -1, [], "no result from Great Expectations")
                continue
            res = r.result or {}
            error = _raised(r.exception_info)
            if error:
                by_name[c.name] = CheckResult(c.name, False, -1, [], error)
                continue
            count = res.get("unexpected_count")
            if count is None:
                count = res.get("observed_value") if c.kind in ROW_QUERY_KINDS else 0
            by_name[c.name] = CheckResult(c.name, bool(r.success), int(count or 0), _rows_from(res, c, first_n))
    results = [by_name[c.name] for c in selected]
    if since is None:
        _save_marks(
            url,
            {
                c.name: newest[(c.schema, c.table, c.time_column)]
                for c, r in zip(selected, results, strict=True)
                if r.passed and newest[(c.schema, c.table, c.time_column)] is not None
            },
        )
    failing = [row for c in results for row in c.failing_rows][:first_n]
    windows = {c.name: window(c) for c in selected}
    stats = {
        "evaluated": len(results),
        "failed": [c.name for c in results if not c.passed],
        "unexpected_counts": {c.name: c.unexpected_count for c in results},
        "errors": {c.name: c.error for c in results if c.error},
        "scope": "since" if since is not None else scope,
        "window_since": since.isoformat() if since else None,
        "windows": {k: (f"{w[0]} {w[1].isoformat()}" if w else "all rows") for k, w in windows.items()},
    }
    return Result(name, all(c.passed for c in results), failing, stats, results)
