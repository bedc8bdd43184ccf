"""How many Stripe requests to keep in flight, and how to cut a window into chunks: pure sizing rules.

Little's law: to sustain λ requests per second when each takes W seconds from send to answer
(plus the time the worker spends on the page), L = λ·W requests must be in flight. The rate limiter
caps λ whatever L is, so sizing L above λ·W never exceeds the limit; it only keeps it busy when
latency wobbles. Below λ·W the limit is never reached (the issue's 0.16 of 100 req/s at 300 ms).

Chunks: a list endpoint is paged with a cursor, so one chunk (a `created` range) has at most one
request in flight. More chunks keep more requests in flight, but each chunk ends on a partly filled
page; a chunk of at least `min_pages` pages keeps that waste under 1/(2·min_pages) of the requests.
"""

from __future__ import annotations

import math

PAGE_SIZE = 100  # Stripe's maximum page
DEFAULT_LATENCY_S = 0.3  # before any answer was timed: a typical Stripe list page
DEFAULT_PROCESSING_S = 0.02  # before any page was staged: converting and copying 100 objects on this machine
UNLIMITED_IN_FLIGHT = 8  # no rate limit to fill: enough to keep 2 cores busy converting and copying pages
MAX_IN_FLIGHT = 64  # threads are cheap while they wait on the network, not free
# Chunk counts a table is cut into: a coarse ladder, so a re-run over slightly more data cuts the same
# boundaries (a chunk's resume cursor is keyed by its boundaries).
CHUNK_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
MIN_PIECE_PAGES = 1.0  # a running chunk is cut in two only if each part keeps about this many pages ...
TAIL_PIECE_PAGES = 0.5  # ... or this many once the running chunks no longer keep the limit busy


def in_flight(
    rate_per_s: float | None,
    latency_s: float | None,
    *,
    explicit: int | None = None,
    headroom: float = 1.25,
    spare: int = 2,
    unlimited: int = UNLIMITED_IN_FLIGHT,
    ceiling: int = MAX_IN_FLIGHT,
) -> int:
    """Requests to keep in flight for a rate limit and the observed seconds per page (`seconds_per_page`).

    `explicit` (a worker setting) wins. No rate limit: `unlimited`. Else ⌈λ·W·headroom⌉ + spare, at
    least 1 and at most `ceiling`; e.g. 100 req/s at 0.3 s → 40, 25 req/s at 0.3 s → 12, 100 req/s at 5 ms → 3.
    """
    if explicit is not None and explicit > 0:
        return int(explicit)
    if not rate_per_s or rate_per_s <= 0:
        return max(1, unlimited)
    w = DEFAULT_LATENCY_S if latency_s is None or latency_s < 0 else latency_s
    return max(1, min(ceiling, math.ceil(rate_per_s * w * headroom) + spare))


def seconds_per_page(latency_s: float | None, processing_s: float | None) -> float:
    """W in Little's law: Stripe's answer time plus the worker's time on the page (convert, COPY, commit)."""
    return (DEFAULT_LATENCY_S if latency_s is None else latency_s) + (
        DEFAULT_PROCESSING_S if processing_s is None else processing_s
    )


def estimate_pages(objects_seen: int, newest: int, oldest_seen: int, start: int, has_more: bool) -> float:
    """Pages a `created` window [start, …) will take, from its first page.

    The first page holds `objects_seen` objects created between `oldest_seen` and `newest` (newest
    first); the rest of the window, down to `start`, is assumed as dense as that page.
    """
    if not has_more or objects_seen <= 0:
        return 1.0
    span = max(1, newest - oldest_seen + 1)
    rest = max(0, oldest_seen - start)
    return 1.0 + objects_seen * rest / span / PAGE_SIZE


def chunk_counts(
    pages: dict[str, float], slots: int, *, min_pages: float = 10.0, per_slot: float = 2.0
) -> dict[str, int]:
    """Chunks per table so that about `per_slot`·`slots` chunks run in all, each at least `min_pages` long.

    Tables get chunks in proportion to their pages (a table of 1 page gets 1 chunk), so the chains of
    pages are about equally long; the count is rounded down to the `CHUNK_LADDER`.
    """
    total = sum(max(0.0, p) for p in pages.values())
    out: dict[str, int] = {}
    for table, p in pages.items():
        if total <= 0 or p <= min_pages:
            out[table] = 1
            continue
        want = min(p / min_pages, per_slot * slots * p / total)
        out[table] = max(n for n in CHUNK_LADDER if n <= max(1.0, want))
    return out


def piece_pages(running: int, rate_per_s: float | None, seconds_per_page: float) -> float:
    """Pages each part of a running chunk must keep for an idle worker to cut it in two.

    A chunk has one request in flight. While `running` chunks are at least λ·W, the limit is busy and a
    cut only evens out the end: each part keeps `MIN_PIECE_PAGES` (every cut costs about one partly
    filled page). Below λ·W the limit idles and each page left is a round trip in a row, the window's
    tail: parts of `TAIL_PIECE_PAGES` are worth their extra request. No limit: there is no λ·W to fill.
    """
    if rate_per_s and running < rate_per_s * seconds_per_page:
        return TAIL_PIECE_PAGES
    return MIN_PIECE_PAGES
