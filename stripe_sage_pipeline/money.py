"""Money in integer minor units, converted to exact decimals with the currency's exponent.

Stripe sends every amount as an integer in the currency's smallest unit. Most currencies have two
decimals, but zero-decimal currencies (JPY, KRW, ...) are already whole units and three-decimal ones
(KWD, BHD, ...) have a thousandth. Dividing everything by 100 is the classic bug this module exists
to prevent. No float ever touches an amount.
"""

from __future__ import annotations

from decimal import Decimal

# From Stripe's published currency list (the vendored copy: reference/stripe-openapi/enums.json).
ZERO_DECIMAL: frozenset[str] = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)
THREE_DECIMAL: frozenset[str] = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def exponent(currency: str) -> int:
    """Number of decimals of a currency's major unit (0, 2 or 3)."""
    c = currency.lower()
    if c in ZERO_DECIMAL:
        return 0
    if c in THREE_DECIMAL:
        return 3
    return 2


def to_decimal(minor: int, currency: str) -> Decimal:
    """Exact Decimal for an integer amount in minor units (5000 JPY -> 5000, 12500 KWD -> 12.500)."""
    if not isinstance(minor, int) or isinstance(minor, bool):
        raise TypeError(f"amount must be an integer in minor units, got {type(minor).__name__}")
    return Decimal(minor).scaleb(-exponent(currency)).quantize(Decimal(1).scaleb(-exponent(currency)))


def to_decimal_str(minor: int, currency: str) -> str:
    """Decimal string with exactly the currency's decimals, as Sage wants it ("123.45", "5000", "12.500")."""
    return f"{to_decimal(minor, currency):f}"


def from_decimal_str(value: str, currency: str) -> int:
    """Integer minor units from a decimal string that has exactly the currency's decimals."""
    d = Decimal(value)
    exp = exponent(currency)
    if d.as_tuple().exponent != -exp and not (exp == 0 and d.as_tuple().exponent == 0):
        raise ValueError(f"{value!r} must have exactly {exp} decimals for {currency.upper()}")
    return int(d.scaleb(exp))
