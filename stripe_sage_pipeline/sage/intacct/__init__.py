"""Sage Intacct REST API v1 as a load target: `IntacctTarget` (adapter), `payloads` (what is posted where),
`errors` (`ia::error` → dead-letter reasons), and `make_intacct` (the factory the settings use)."""

from __future__ import annotations

from typing import Any

from stripe_sage_pipeline.sage.factory import CountingTransport
from stripe_sage_pipeline.sage.intacct.client import DEFAULT_BASE_URL, IntacctTarget


def parse_locations(spec: str | None) -> dict[str, str]:
    """`"usd=US-01,eur=EU-01"` → {"usd": "US-01", "eur": "EU-01"}; a malformed item names itself."""
    out: dict[str, str] = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        cur, sep, loc = item.partition("=")
        if not sep or not cur.strip() or not loc.strip():
            raise ValueError(f"INTACCT_LOCATIONS: {item.strip()!r} is not currency=location (e.g. usd=US-01)")
        out[cur.strip().lower()] = loc.strip()
    return out


def make_intacct(
    settings: Any,
    *,
    rate_per_minute: int | None = None,
    max_concurrency: int = 4,
    base_url: str | None = None,
    **kwargs: Any,
) -> tuple[IntacctTarget, CountingTransport]:
    """An `IntacctTarget` from settings (or a `SageResource`) whose requests are counted."""
    transport = CountingTransport()
    target = IntacctTarget(
        base_url or getattr(settings, "intacct_base_url", None) or DEFAULT_BASE_URL,
        settings.intacct_client_id,
        settings.intacct_client_secret,
        username=getattr(settings, "intacct_username", None),
        refresh_token=getattr(settings, "intacct_refresh_token", None),
        locations=parse_locations(getattr(settings, "intacct_locations", None)),
        rate_per_minute=rate_per_minute,
        max_concurrency=max_concurrency,
        transport=transport,
        **kwargs,
    )
    return target, transport


__all__ = ["DEFAULT_BASE_URL", "IntacctTarget", "make_intacct", "parse_locations"]
