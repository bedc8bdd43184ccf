"""The finance-editable mapping (mapping.yaml): load, validate, render, and hand to dbt.

Finance edits one YAML file; nothing in SQL carries an account code. Before dbt runs, the mapping is
written into small tables in the `finance_config` schema, which the dbt models read as sources.
Validation runs at load and reports every problem with the key path and the bad value, so a typo
(an unknown account, an unmapped category, a bad time zone) stops the run instead of posting.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stripe_sage_pipeline.settings import load_settings

log = logging.getLogger(__name__)

CONFIG_SCHEMA = "finance_config"

# Stripe's reporting categories (docs.stripe.com/reports/reporting-categories; the 2023 list of
# reference/stripe-openapi/enums.json plus what Stripe added since). Finance may map any string: one
# that is not listed here is a warning (a category Stripe adds later), never an error.
REPORTING_CATEGORIES: frozenset[str] = frozenset(
    {
        "advance",
        "advance_funding",
        "anticipation_repayment",
        "charge",
        "charge_failure",
        "climate_order_purchase",
        "climate_order_refund",
        "connect_collection_transfer",
        "connect_reserved_funds",
        "contribution",
        "dispute",
        "dispute_reversal",
        "fee",
        "financing_paydown",
        "financing_paydown_reversal",
        "financing_payout",
        "financing_payout_reversal",
        "issuing_authorization_hold",
        "issuing_authorization_release",
        "issuing_dispute",
        "issuing_transaction",
        "network_cost",
        "other_adjustment",
        "partial_capture_reversal",
        "payout",
        "payout_minimum_balance_hold",
        "payout_minimum_balance_release",
        "payout_reversal",
        "platform_earning",
        "platform_earning_refund",
        "refund",
        "refund_failure",
        "risk_reserved_funds",
        "tax",
        "topup",
        "topup_reversal",
        "transfer",
        "transfer_reversal",
        "unreconciled_customer_funds",
    }
)
# Categories whose counter account is not a mapping entry: charge splits into revenue + tax; payouts
# go to the currency's bank account.
BUILT_IN_CATEGORIES: frozenset[str] = frozenset({"charge", "payout", "payout_reversal"})
# Balance transaction types: the 2023 list plus the installed SDK's (stripe/_balance_transaction.py).
BT_TYPES: frozenset[str] = frozenset(
    {
        "adjustment",
        "advance",
        "advance_funding",
        "anticipation_repayment",
        "application_fee",
        "application_fee_refund",
        "charge",
        "climate_order_purchase",
        "climate_order_refund",
        "connect_collection_transfer",
        "contribution",
        "fee_credit_funding",
        "inbound_transfer",
        "inbound_transfer_reversal",
        "issuing_authorization_hold",
        "issuing_authorization_release",
        "issuing_dispute",
        "issuing_dispute_provisional_credit",
        "issuing_dispute_provisional_credit_reversal",
        "issuing_transaction",
        "obligation_inbound",
        "obligation_outbound",
        "obligation_payout",
        "obligation_payout_failure",
        "obligation_reversal_inbound",
        "obligation_reversal_outbound",
        "payment",
        "payment_failure_refund",
        "payment_network_reserve_hold",
        "payment_network_reserve_release",
        "payment_refund",
        "payment_reversal",
        "payment_unreconciled",
        "payout",
        "payout_cancel",
        "payout_failure",
        "payout_minimum_balance_hold",
        "payout_minimum_balance_release",
        "refund",
        "refund_failure",
        "reserve_hold",
        "reserve_release",
        "reserve_transaction",
        "reserved_funds",
        "stripe_balance_payment_debit",
        "stripe_balance_payment_debit_reversal",
        "stripe_fee",
        "stripe_fx_fee",
        "tax_fee",
        "tax_fund",
        "topup",
        "topup_reversal",
        "transfer",
        "transfer_cancel",
        "transfer_failure",
        "transfer_refund",
    }
)
FEE_TYPES: frozenset[str] = frozenset({"application_fee", "stripe_fee", "tax"})


class MappingError(ValueError):
    """The mapping file is invalid; `problems` lists (key path, bad value, message)."""

    def __init__(self, source: str, problems: list[tuple[str, Any, str]]):
        self.source = source
        self.problems = problems
        lines = [f"  {key}: {msg} (got {value!r})" for key, value, msg in problems]
        super().__init__(f"invalid mapping {source}:\n" + "\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CurrencyAccounts(_Strict):
    """Clearing and bank account of one settlement currency."""

    clearing: str
    bank: str


class PostingDate(_Strict):
    """Which timestamp dates activity, and the zone its calendar day is taken in."""

    activity_date: Literal["created", "available_on"] = "created"
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone") from None
        return v


class Tax(_Strict):
    """Where the tax part of a charge comes from."""

    source: Literal["invoice_then_metadata", "metadata", "none"] = "invoice_then_metadata"
    metadata_key: str = "tax_amount"
    # Refunds, lost disputes (and their reversals) take back the charge's tax pro rata.
    reverse_on_refunds: bool = True


class Accounts(_Strict):
    """Accounts that are not chosen per category or currency."""

    revenue: str
    sales_tax: str
    receivable: str
    fx_gain_loss: str
    suspense: str


class Fees(_Strict):
    """The account for the `fee` of a balance transaction."""

    default: str
    by_category: dict[str, str] = Field(default_factory=dict)
    by_fee_type: dict[str, str] = Field(default_factory=dict)


class ConditionalField(_Strict):
    """Populate `sage_field` only when the Stripe path (or metadata.<key>) is present."""

    sage_field: str
    when_present: str


class CustomerSync(_Strict):
    """Which customer fields Sage Pro owns: edited in Sage, copied to Stripe; the rest is Stripe's."""

    # Groups of Sage customer fields: name (company), email, phone, address (address1-2, city, state, zip, country).
    sage_owns: list[Literal["name", "email", "phone", "address"]] = Field(default_factory=lambda: ["email", "address"])


class Mapping(_Strict):
    """The whole mapping file, typed."""

    version: Literal[1] = 1
    posting_mode: Literal["detail", "payout_summary"] = "payout_summary"
    revenue_mode: Literal["direct", "invoice_driven"] = "direct"
    base_currency: str = "usd"
    posting_date: PostingDate = PostingDate()
    tax: Tax = Tax()
    chart_of_accounts: dict[str, str]
    accounts: Accounts
    currencies: dict[str, CurrencyAccounts]
    categories: dict[str, str] = Field(default_factory=dict)
    type_fallback: dict[str, str] = Field(default_factory=dict)
    fees: Fees
    value_maps: dict[str, dict[str, str]] = Field(default_factory=dict)
    defaults: dict[str, str] = Field(default_factory=dict)
    conditional_fields: list[ConditionalField] = Field(default_factory=list)
    customer_sync: CustomerSync = CustomerSync()

    def clearing_account(self, currency: str) -> str:
        """Clearing account of a settlement currency."""
        return (self.currencies.get(currency.lower()) or self.currencies["default"]).clearing

    def bank_account(self, currency: str) -> str:
        """Bank account of a settlement currency."""
        return (self.currencies.get(currency.lower()) or self.currencies["default"]).bank

    def fingerprint(self) -> str:
        """Stable hash of the mapping's content: a change means incremental models must rebuild."""
        # customer_sync does not shape any model, so it does not force a rebuild.
        data = self.model_dump(exclude={"customer_sync"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _semantic_problems(m: Mapping) -> list[tuple[str, Any, str]]:
    """Checks across fields that the types alone cannot express."""
    problems: list[tuple[str, Any, str]] = []
    chart = m.chart_of_accounts

    def account(key: str, code: str) -> None:
        if code not in chart:
            problems.append((key, code, "account is not in chart_of_accounts"))

    for code in chart:
        if not (1 <= len(code) <= 20) or not code.replace("-", "").isalnum():
            problems.append((f"chart_of_accounts.{code}", code, "account code must be 1-20 letters, digits or '-'"))
    for name, code in m.accounts.model_dump().items():
        account(f"accounts.{name}", code)
    if "default" not in m.currencies:
        problems.append(("currencies.default", None, "a default clearing/bank pair is required"))
    for ccy, pair in m.currencies.items():
        if ccy != "default" and (len(ccy) != 3 or not ccy.isalpha() or ccy != ccy.lower()):
            problems.append((f"currencies.{ccy}", ccy, "currency must be a lower-case ISO 4217 code"))
        account(f"currencies.{ccy}.clearing", pair.clearing)
        account(f"currencies.{ccy}.bank", pair.bank)
    for cat, code in m.categories.items():
        if not _is_identifier(cat):
            problems.append((f"categories.{cat}", cat, "a reporting category is lower-case letters, digits and '_'"))
        elif cat in BUILT_IN_CATEGORIES:
            problems.append((f"categories.{cat}", cat, "this category is posted by a built-in rule; remove it"))
        account(f"categories.{cat}", code)
    for bt_type, cat in m.type_fallback.items():
        if not _is_identifier(bt_type):
            problems.append(
                (f"type_fallback.{bt_type}", bt_type, "a transaction type is lower-case letters, digits and '_'")
            )
        if cat not in m.categories and cat not in BUILT_IN_CATEGORIES:
            problems.append((f"type_fallback.{bt_type}", cat, "category has no mapping under categories"))
    account("fees.default", m.fees.default)
    for cat, code in m.fees.by_category.items():
        if not _is_identifier(cat):
            problems.append(
                (f"fees.by_category.{cat}", cat, "a reporting category is lower-case letters, digits and '_'")
            )
        account(f"fees.by_category.{cat}", code)
    for fee_type, code in m.fees.by_fee_type.items():
        if fee_type not in FEE_TYPES:
            problems.append((f"fees.by_fee_type.{fee_type}", fee_type, "unknown Stripe fee type"))
        account(f"fees.by_fee_type.{fee_type}", code)
    if len(m.base_currency) != 3 or not m.base_currency.isalpha():
        problems.append(("base_currency", m.base_currency, "currency must be an ISO 4217 code"))
    if not m.tax.metadata_key.strip():
        problems.append(("tax.metadata_key", m.tax.metadata_key, "must not be empty"))
    return problems


def _is_identifier(value: str) -> bool:
    return bool(value) and all(ch.islower() or ch.isdigit() or ch == "_" for ch in value)


def mapping_warnings(m: Mapping) -> list[tuple[str, Any, str]]:
    """What is legitimate but worth a look: categories and types Stripe does not document (yet).

    Such a key is used as written (a category Stripe adds later can be mapped before this list
    knows it); a typo simply never matches, so its transactions stay in suspense, flagged."""
    warnings: list[tuple[str, Any, str]] = []
    for cat in [*m.categories, *m.fees.by_category]:
        if cat not in REPORTING_CATEGORIES:
            warnings.append((f"categories.{cat}", cat, "not a reporting category Stripe documents; used as written"))
    for bt_type in m.type_fallback:
        if bt_type not in BT_TYPES:
            warnings.append(
                (
                    f"type_fallback.{bt_type}",
                    bt_type,
                    "not a balance transaction type Stripe documents; used as written",
                )
            )
    return warnings


def parse_mapping(data: Any, source: str = "<mapping>") -> Mapping:
    """Validate a mapping given as parsed YAML; raise MappingError naming every bad key and value."""
    if not isinstance(data, dict):
        raise MappingError(source, [("<root>", type(data).__name__, "the mapping must be a YAML mapping")])
    # YAML reads 1010 as an int; account codes are strings, so normalise before validation.
    data = _stringify_codes(data)
    try:
        m = Mapping.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<root>"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append((key, err.get("input"), msg))
        raise MappingError(source, problems) from None
    problems = _semantic_problems(m)
    if problems:
        raise MappingError(source, problems)
    for key, value, msg in mapping_warnings(m):
        log.warning("mapping %s: %s: %s (%r)", source, key, msg, value)
    return m


def _stringify_codes(data: dict) -> dict:
    out = dict(data)
    if isinstance(out.get("chart_of_accounts"), dict):
        out["chart_of_accounts"] = {str(k): v for k, v in out["chart_of_accounts"].items()}
    for key in ("accounts", "categories"):
        if isinstance(out.get(key), dict):
            out[key] = {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in out[key].items()}
    if isinstance(out.get("currencies"), dict):
        out["currencies"] = {
            k: {kk: str(vv) if isinstance(vv, int) else vv for kk, vv in v.items()} if isinstance(v, dict) else v
            for k, v in out["currencies"].items()
        }
    if isinstance(out.get("fees"), dict):
        fees = dict(out["fees"])
        if isinstance(fees.get("default"), int):
            fees["default"] = str(fees["default"])
        for sub in ("by_category", "by_fee_type"):
            if isinstance(fees.get(sub), dict):
                fees[sub] = {k: str(v) if isinstance(v, int) else v for k, v in fees[sub].items()}
        out["fees"] = fees
    return out


def load_mapping(path: str | Path | None = None) -> Mapping:
    """Read and validate the mapping file (default: settings.mapping_file, env STRIPE_SAGE_MAPPING)."""
    p = Path(path) if path is not None else load_settings().mapping_file
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise MappingError(str(p), [("<file>", str(p), "mapping file not found")]) from None
    except yaml.YAMLError as exc:
        raise MappingError(
            str(p), [("<yaml>", str(getattr(exc, "problem_mark", "")), f"not valid YAML: {exc}")]
        ) from None
    return parse_mapping(data, str(p))


def mapping_rows(m: Mapping) -> list[dict[str, str]]:
    """The mapping flattened to (section, key, value, account name) rows, for the UI and for review."""
    chart = m.chart_of_accounts
    rows: list[dict[str, str]] = []

    def add(section: str, key: str, value: str, is_account: bool = True) -> None:
        rows.append(
            {"section": section, "key": key, "value": value, "name": chart.get(value, "") if is_account else ""}
        )

    add("setting", "posting_mode", m.posting_mode, False)
    add("setting", "revenue_mode", m.revenue_mode, False)
    add("setting", "base_currency", m.base_currency, False)
    add("setting", "activity_date", m.posting_date.activity_date, False)
    add("setting", "timezone", m.posting_date.timezone, False)
    add("setting", "tax.source", m.tax.source, False)
    add("setting", "tax.metadata_key", m.tax.metadata_key, False)
    add("setting", "tax.reverse_on_refunds", str(m.tax.reverse_on_refunds).lower(), False)
    for name, code in m.accounts.model_dump().items():
        add("account", name, code)
    for ccy, pair in m.currencies.items():
        add("clearing", ccy, pair.clearing)
        add("bank", ccy, pair.bank)
    add("category", "charge", f"{m.accounts.revenue} + tax {m.accounts.sales_tax}", False)
    for cat, code in sorted(m.categories.items()):
        add("category", cat, code)
    for t, cat in sorted(m.type_fallback.items()):
        add("type fallback", t, cat, False)
    add("fee", "default", m.fees.default)
    for cat, code in sorted(m.fees.by_category.items()):
        add("fee by category", cat, code)
    for ft, code in sorted(m.fees.by_fee_type.items()):
        add("fee by type", ft, code)
    for name, vm in m.value_maps.items():
        for k, v in vm.items():
            add(f"value map {name}", k, v, False)
    for k, v in m.defaults.items():
        add("default", k, v, False)
    for cf in m.conditional_fields:
        add("conditional field", cf.sage_field, f"when {cf.when_present} is present", False)
    add("customer sync", "sage_owns", ", ".join(m.customer_sync.sage_owns) or "(nothing)", False)
    return rows


def mapping_markdown(m: Mapping) -> str:
    """The active mapping as a Markdown table (shown as asset metadata in the Dagster UI)."""
    out = ["| section | key | value | account name |", "|---|---|---|---|"]
    for r in mapping_rows(m):
        out.append(f"| {r['section']} | {r['key']} | {r['value']} | {r['name']} |")
    return "\n".join(out)


_CONFIG_DDL = f"""
create schema if not exists {CONFIG_SCHEMA};
create table if not exists {CONFIG_SCHEMA}.settings (
  singleton boolean primary key default true check (singleton),
  posting_mode text not null, revenue_mode text not null, base_currency text not null,
  activity_date text not null, timezone text not null, tax_source text not null, tax_metadata_key text not null,
  tax_reversal boolean not null default true,
  revenue_account text not null, sales_tax_account text not null, receivable_account text not null,
  fx_gain_loss_account text not null, suspense_account text not null, default_fee_account text not null,
  default_clearing_account text not null, default_bank_account text not null, fingerprint text not null,
  loaded_at timestamptz not null default now());
alter table {CONFIG_SCHEMA}.settings add column if not exists tax_reversal boolean not null default true;
create table if not exists {CONFIG_SCHEMA}.accounts (account_code text primary key, account_name text not null);
create table if not exists {CONFIG_SCHEMA}.currency_accounts (
  currency text primary key, clearing_account text not null, bank_account text not null);
create table if not exists {CONFIG_SCHEMA}.category_accounts (
  reporting_category text primary key, counter_account text not null);
create table if not exists {CONFIG_SCHEMA}.type_fallback (
  balance_transaction_type text primary key, reporting_category text not null);
create table if not exists {CONFIG_SCHEMA}.value_maps (
  map_name text not null, stripe_value text not null, sage_value text not null, primary key (map_name, stripe_value));
create table if not exists {CONFIG_SCHEMA}.field_defaults (field text primary key, default_value text not null);
create table if not exists {CONFIG_SCHEMA}.fee_accounts (
  match_kind text not null, match_value text not null, fee_account text not null,
  primary key (match_kind, match_value));
"""


def write_config(conn: psycopg.Connection, m: Mapping) -> None:
    """Replace the finance_config tables with this mapping (one transaction; dbt reads them as sources)."""
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('finance_config'))")
        conn.execute(_CONFIG_DDL)
        for t in (
            "settings",
            "accounts",
            "currency_accounts",
            "category_accounts",
            "type_fallback",
            "fee_accounts",
            "value_maps",
            "field_defaults",
        ):
            conn.execute(f"delete from {CONFIG_SCHEMA}.{t}")
        d = m.currencies["default"]
        conn.execute(
            f"insert into {CONFIG_SCHEMA}.settings (posting_mode, revenue_mode, base_currency, activity_date, timezone,"
            " tax_source, tax_metadata_key, tax_reversal, revenue_account, sales_tax_account, receivable_account,"
            " fx_gain_loss_account, suspense_account, default_fee_account, default_clearing_account,"
            " default_bank_account, fingerprint) values (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (
                m.posting_mode,
                m.revenue_mode,
                m.base_currency.lower(),
                m.posting_date.activity_date,
                m.posting_date.timezone,
                m.tax.source,
                m.tax.metadata_key,
                m.tax.reverse_on_refunds,
                m.accounts.revenue,
                m.accounts.sales_tax,
                m.accounts.receivable,
                m.accounts.fx_gain_loss,
                m.accounts.suspense,
                m.fees.default,
                d.clearing,
                d.bank,
                m.fingerprint(),
            ),
        )
        with conn.cursor() as cur:
            cur.executemany(f"insert into {CONFIG_SCHEMA}.accounts values (%s, %s)", list(m.chart_of_accounts.items()))
            cur.executemany(
                f"insert into {CONFIG_SCHEMA}.currency_accounts values (%s, %s, %s)",
                [(c, p.clearing, p.bank) for c, p in m.currencies.items() if c != "default"],
            )
            cur.executemany(
                f"insert into {CONFIG_SCHEMA}.category_accounts values (%s, %s)", list(m.categories.items())
            )
            cur.executemany(f"insert into {CONFIG_SCHEMA}.type_fallback values (%s, %s)", list(m.type_fallback.items()))
            cur.executemany(
                f"insert into {CONFIG_SCHEMA}.fee_accounts values (%s, %s, %s)",
                [("category", k, v) for k, v in m.fees.by_category.items()]
                + [("fee_type", k, v) for k, v in m.fees.by_fee_type.items()],
            )
            cur.executemany(
                f"insert into {CONFIG_SCHEMA}.value_maps values (%s, %s, %s)",
                [(name, k, v) for name, vm in m.value_maps.items() for k, v in vm.items()],
            )
            cur.executemany(f"insert into {CONFIG_SCHEMA}.field_defaults values (%s, %s)", list(m.defaults.items()))
