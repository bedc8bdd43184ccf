"""Request validation for the Sage Pro sandbox: field rules, money strings and the error type.

Validation collects every problem of a body before answering, so one 422 tells the caller all that is
wrong with an item (the pipeline dead-letters it with those details).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from stripe_sage_pipeline.money import exponent

CUSTNO_RE = re.compile(r"^[A-Z0-9][A-Z0-9-]{0,9}$")
GLACNT_RE = re.compile(r"^[0-9A-Z-]{1,16}$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
AMOUNT_RE = re.compile(r"^(-?)(\d+)(?:\.(\d+))?$")
# Sage Pro stores money as numeric(15, n): keep well inside it.
MAX_MINOR = 10**15

# ISO 4217 active codes; Sage accepts any of them, the sandbox too.
ISO_CURRENCIES: frozenset[str] = frozenset(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD
    CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF
    GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP
    LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB
    PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP
    SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW
    ZWL""".split()
)


@dataclass
class Detail:
    """One problem with one field, as it appears in the error envelope's `details`."""

    field: str
    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: field, code, message plus any extra keys (existing_id, difference, ...)."""
        return {"field": self.field, "code": self.code, "message": self.message, **self.extra}


class ApiError(Exception):
    """An error answer: HTTP status, contract error code, message and details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[Detail] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}


def record_invalid(details: list[Detail]) -> ApiError:
    """The 422 RecordInvalid error for a list of field problems."""
    summary = "; ".join(f"{d.field}: {d.message}" for d in details[:5])
    return ApiError(422, "RecordInvalid", f"The record is invalid: {summary}", details)


def not_found(what: str, key: str) -> ApiError:
    """The 404 RecordNotFound error."""
    return ApiError(404, "RecordNotFound", f"{what} {key!r} was not found")


def now_utc() -> str:
    """RFC 3339 UTC timestamp with microseconds, so `updated_since` can order close updates."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(value: str) -> str:
    """Normalise an RFC 3339 timestamp or a date to the stored UTC form; ValueError if not one."""
    v = value.strip()
    if DATE_RE.match(v):
        d = date.fromisoformat(v)
        return f"{d.isoformat()}T00:00:00.000000Z"
    dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError("timestamp needs a time zone (Z or +00:00)")
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Checker:
    """Collects field problems of one body; `raise_if_any` turns them into a 422."""

    def __init__(self, body: dict[str, Any], allowed: set[str], prefix: str = "") -> None:
        self.body = body
        self.prefix = prefix
        self.details: list[Detail] = []
        for key in body:
            if key not in allowed:
                self.add(key, "InvalidValue", "unknown field")

    def name(self, key: str) -> str:
        """Full dotted field name for a key of this body."""
        return f"{self.prefix}{key}"

    def add(self, key: str, code: str, message: str, **extra: Any) -> None:
        """Record one problem."""
        self.details.append(Detail(self.name(key), code, message, extra))

    def string(
        self,
        key: str,
        *,
        max_len: int,
        required: bool = False,
        min_len: int = 0,
        pattern: re.Pattern[str] | None = None,
    ) -> str | None:
        """A string field with a length limit (FieldTooLong) and optional pattern (InvalidCharacters)."""
        value = self.body.get(key)
        if value is None:
            if required:
                self.add(key, "Required", "is required")
            return None
        if not isinstance(value, str):
            self.add(key, "InvalidValue", "must be a string")
            return None
        if len(value) > max_len:
            self.add(key, "FieldTooLong", f"is {len(value)} characters, at most {max_len} allowed", max_length=max_len)
            return None
        if len(value) < max(min_len, 1 if required else 0):
            self.add(key, "Required", f"must have at least {max(min_len, 1)} character(s)")
            return None
        if pattern is not None and not pattern.match(value):
            self.add(key, "InvalidCharacters", f"{value!r} does not match {pattern.pattern}")
            return None
        return value

    def key_code(self, key: str, *, required: bool = True, max_len: int = 10) -> str | None:
        """A Pro key (custno, invno): upper case letters, digits and '-', never folded."""
        value = self.string(key, max_len=max_len, required=required)
        if value is None:
            return None
        if not CUSTNO_RE.match(value):
            hint = " (lower case is not accepted: map it to upper case)" if value.upper() != value else ""
            self.add(key, "InvalidCharacters", f"{value!r} must match {CUSTNO_RE.pattern}{hint}")
            return None
        return value

    def date(self, key: str, *, required: bool = True) -> str | None:
        """A `YYYY-MM-DD` date."""
        value = self.body.get(key)
        if value is None:
            if required:
                self.add(key, "Required", "is required")
            return None
        if not isinstance(value, str) or not DATE_RE.match(value):
            self.add(key, "InvalidValue", "must be a date YYYY-MM-DD")
            return None
        try:
            date.fromisoformat(value)
        except ValueError:
            self.add(key, "InvalidValue", f"{value!r} is not a calendar date")
            return None
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
        """A value out of a fixed list."""
        value = self.body.get(key, default)
        if value is None:
            self.add(key, "Required", "is required")
            return None
        if value not in choices:
            self.add(key, "InvalidValue", f"must be one of {', '.join(choices)}")
            return None
        return value

    def currency(self, key: str, default: str) -> str | None:
        """An ISO 4217 code; case is normalised because Stripe sends lower case."""
        value = self.body.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or value.upper() not in ISO_CURRENCIES:
            self.add(key, "InvalidCurrency", f"{value!r} is not an ISO 4217 currency code")
            return None
        return value.upper()

    def glacnt(self, key: str, *, required: bool = True, default: str | None = None) -> str | None:
        """A GL account code (existence is checked against the chart later)."""
        value = self.body.get(key, default)
        if value is None:
            if required:
                self.add(key, "Required", "is required")
            return None
        if not isinstance(value, str) or not GLACNT_RE.match(value):
            self.add(key, "AccountNotFound", f"{value!r} is not a GL account code")
            return None
        return value

    def amount(
        self,
        key: str,
        currency: str | None,
        *,
        required: bool = True,
        allow_negative: bool = False,
        default: int | None = 0,
    ) -> int | None:
        """A money string with exactly the currency's decimals, returned in integer minor units."""
        value = self.body.get(key)
        if value is None:
            if required:
                self.add(key, "Required", "is required")
                return None
            return default
        return parse_amount(value, currency, self, key, allow_negative=allow_negative)

    def raise_if_any(self) -> None:
        """Raise the 422 when a problem was found."""
        if self.details:
            raise record_invalid(self.details)


def parse_amount(value: Any, currency: str | None, checker: Checker, key: str, *, allow_negative: bool) -> int | None:
    """Parse one money string strictly (no floats, no JSON numbers, no missing or extra decimals)."""
    if currency is None:  # the currency itself was invalid; that error is already recorded
        return None
    if not isinstance(value, str):
        checker.add(key, "InvalidAmount", 'must be a decimal string such as "12.34", not a JSON number')
        return None
    m = AMOUNT_RE.match(value)
    if not m:
        checker.add(key, "InvalidAmount", f"{value!r} is not a decimal amount")
        return None
    sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    exp = exponent(currency)
    if len(frac) != exp or (exp == 0 and "." in value):
        checker.add(key, "InvalidAmount", f"{value!r} must have exactly {exp} decimal(s) for {currency}", decimals=exp)
        return None
    minor = int(whole + frac) * (-1 if sign else 1)
    if minor < 0 and not allow_negative:
        checker.add(key, "InvalidAmount", f"{value!r} must not be negative")
        return None
    if abs(minor) >= MAX_MINOR:
        checker.add(key, "InvalidAmount", f"{value!r} is too large")
        return None
    return minor
