"""One rate limiter and one retry policy for every HTTP client of the pipeline (Stripe reader, Sage Pro
client, Intacct target) and every sandbox server (Stripe emulator, Sage Pro sandbox, Intacct emulator).

* `RateLimit`: at most N requests per window, a moving window from the `limits` library, shared by every
  thread that holds it. `acquire()` blocks until a request may start (clients); `take(key)` answers at
  once with None (granted) or the seconds until the window has room (servers: the `Retry-After`, written
  by `retry_after_header`), one budget per key (e.g. per user). `shared_rate_limit(key, ...)` gives one
  limiter per key per process, so every client of one account/company draws from the same budget.
* `RetryPolicy`: exponential backoff with full jitter from `tenacity`, never sooner than the server's
  `Retry-After` (`retry_after_seconds` reads it). It retries what the caller says is transient
  (exceptions and/or results) and nothing else.

Retries never duplicate: the policy re-runs the caller's attempt function as is, so a write must carry
its idempotency key from outside that function (decided once per logical request, sent on every attempt).

    limit = shared_rate_limit(("stripe", account), rate_per_s=90)
    policy = RetryPolicy(max_retries=8, backoff_base_s=0.25, backoff_cap_s=20)

    def attempt():
        limit.acquire()               # every attempt, retries included, counts against the limit
        return session.get(url)

    response = policy.call(attempt, retry_on_result=lambda r: r.status_code in (429, 500, 502, 503, 504),
                           retry_after=lambda r: retry_after_seconds(r.headers.get("retry-after")))
"""

from __future__ import annotations

import email.utils
import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import tenacity
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

T = TypeVar("T")

MAX_RETRY_AFTER_S = 120.0  # a server asking for more than this is treated as asking for this
# Paced starts are this share of window/amount apart: the moving window holds the rate, and the pace a
# tenth ahead of it lets a process that stalled (a GC pass, a core busy with Postgres) make up to 100 ms
# a second back, where exact pacing made up only its 5 late starts (DECISIONLOG 43).
PACE_SHARE = 0.9


def retry_after_seconds(
    value: str | None, now: datetime | None = None, *, cap_s: float = MAX_RETRY_AFTER_S
) -> float | None:
    """Seconds to wait from a `Retry-After` header value (delta-seconds or HTTP date), or None if absent/invalid.

    A wait above `cap_s` is read as `cap_s` (a misbehaving server cannot park a worker for an hour).
    """
    if value is None:
        return None
    value = str(value).strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), cap_s)


def retry_after_header(wait_s: float) -> str:
    """The `Retry-After` value a server sends for a wait: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait_s - 1e-9)))


def _window(rate_per_s: float) -> tuple[int, int]:
    """(amount, seconds) of the shortest moving window within 5% under `rate_per_s`, never above it.

    E.g. 22 → (22, 1), 22.7 → (22, 1), 110/60 → (7, 4), 0.5 → (1, 2). A short window keeps bursts small:
    a server's per-second bucket of the same rate never sees much more than it refills.
    """
    for seconds in range(1, 61):
        amount = math.floor(rate_per_s * seconds + 1e-9)
        if amount >= 1 and amount / seconds >= 0.95 * rate_per_s:
            return amount, seconds
    if rate_per_s * 60 >= 1:
        return math.floor(rate_per_s * 60 + 1e-9), 60
    return 1, math.ceil(1 / rate_per_s)


class RateLimit:
    """At most `rate_per_s` requests per second (a moving window), shared by every thread holding this object.

    `None` or 0 means unlimited; a fractional rate rounds down (22.7 → 22 per second). Clients use the
    shortest window (small bursts). A server passes a longer one, which tolerates the jitter of requests
    in flight as a token bucket does: `window_s=w` counts rate·w per w seconds, `per_minute=n` counts n
    per minute (a burst of up to n is allowed; pass `rate_per_s=n / 60` for a smooth rate); `burst=b`
    adds a second window, at most b in any one second. The moving window never lets more than the limit
    start inside any window, so a server limit of the same rate over a window as long or longer never
    answers 429. `pace=True` (a client under sustained load) spaces starts about window/amount apart once
    half the window is used, instead of releasing a whole window at once.
    """

    def __init__(
        self,
        rate_per_s: float | None = None,
        *,
        per_minute: float | None = None,
        window_s: int | None = None,
        burst: int | None = None,
        pace: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_minute:
            amount, seconds = max(1, math.floor(per_minute)), 60
        elif rate_per_s and rate_per_s > 0 and window_s:
            amount, seconds = max(1, math.floor(rate_per_s * window_s + 1e-9)), max(1, int(window_s))
        elif rate_per_s and rate_per_s > 0:
            amount, seconds = _window(float(rate_per_s))
        else:
            amount = seconds = 0
        self.amount, self.window_s = amount, seconds
        self.rate_per_s: float | None = amount / seconds if amount else None
        self.burst = max(1, burst) if amount and burst and (burst, 1) != (amount, seconds) else None
        self._sleep = sleep
        # Pacing: once half the window is used, `acquire` starts requests about window/amount apart
        # (`PACE_SHARE` of it), so a sustained load never fills the window in a burst (a full window
        # released at once made requests arrive in bunches that a server counting over a longer window
        # refused: 27-33 429s per 1,100 requests at 100 req/s in benchmarks/extract.py). A short burst
        # (a webhook's few re-fetches) still starts at once.
        self.gap_s = PACE_SHARE * seconds / amount if pace and amount else 0.0
        self._next_at = 0.0
        self._lock = threading.Lock()
        self._turn = threading.Lock()
        self._items: list[RateLimitItem] = []
        if amount:
            self._items.append(RateLimitItemPerSecond(amount, seconds))
            if self.burst:
                self._items.append(RateLimitItemPerSecond(self.burst, 1))
            self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def __repr__(self) -> str:
        if not self.amount:
            return "RateLimit(unlimited)"
        return f"RateLimit({self.amount}/{self.window_s}s" + (f", burst {self.burst}/1s)" if self.burst else ")")

    def take(self, key: str = "") -> float | None:
        """Take one request's place now if every window has room (None); else the seconds until they have.

        Never blocks and takes nothing when refused. `key` keeps a separate budget per caller (e.g. per
        user on a server); a server answers a refusal with 429 and `retry_after_header(seconds)`.
        """
        if not self.amount:
            return None
        ids = (key,) if key else ()
        with self._lock:
            full = [item for item in self._items if not self._limiter.test(item, *ids)]
            if not full:
                # `test` and `hit` disagree at the window's exact edge (an entry exactly one window old
                # is out for one, in for the other): a refused hit is a refusal, retried a moment later.
                if all(self._limiter.hit(item, *ids) for item in self._items):
                    return None
                return 0.001
            reset_at = max(self._limiter.get_window_stats(item, *ids).reset_time for item in full)
        return max(0.0, reset_at - time.time())

    def try_acquire(self, key: str = "") -> bool:
        """Take one request's place if the window has room; never blocks."""
        return self.take(key) is None

    def acquire(self, sleep: Callable[[float], None] | None = None) -> None:
        """Block until one request may start (`sleep` overrides the limiter's own, e.g. a client's test hook).

        Waiters take turns (one sleeps on the window, the others on a lock), so a full window wakes
        one thread per free place instead of all of them.
        """
        if not self.amount:
            return
        with self._turn:
            paced = bool(self.gap_s) and self._half_used()
            if paced and (early := self._next_at - time.monotonic()) > 0:
                (sleep or self._sleep)(early)
            while (wait := self.take()) is not None:
                (sleep or self._sleep)(min(self.window_s, max(0.001, wait)))
            if self.gap_s:
                # Paced: from the planned start, so a late start (a long sleep, a thread waiting for
                # the GIL among a hundred) does not slow the pace: up to 5 late starts are caught up
                # back to back. Not paced: a gap from now.
                now = time.monotonic()
                self._next_at = (max(self._next_at, now - 5 * self.gap_s) if paced else now) + self.gap_s

    def _half_used(self) -> bool:
        """Half or more of the (first) window's places are taken."""
        with self._lock:
            stats = self._limiter.get_window_stats(self._items[0])
        return stats.remaining <= self.amount / 2


_SHARED: dict[Hashable, RateLimit] = {}
_SHARED_LOCK = threading.Lock()


def shared_rate_limit(
    key: Hashable, rate_per_s: float | None = None, *, per_minute: float | None = None, pace: bool = False
) -> RateLimit:
    """The process's one `RateLimit` for `key` (e.g. `("stripe", account, rate)`): created on first use."""
    with _SHARED_LOCK:
        limit = _SHARED.get(key)
        if limit is None:
            limit = _SHARED[key] = RateLimit(rate_per_s, per_minute=per_minute, pace=pace)
        return limit


@dataclass(frozen=True)
class RetryEvent:
    """What `on_retry` is told before each wait: the attempt that failed, its outcome, the wait chosen."""

    attempt: int  # 1 for the first attempt
    delay_s: float
    exception: BaseException | None
    result: Any


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `max_retries` retries, waiting uniform(0, min(cap, base·2^(n-1))) but at least the server's Retry-After."""

    max_retries: int = 8
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 20.0

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """The wait after failed attempt number `attempt` (1-based): full jitter, floored by Retry-After."""
        jitter = tenacity.wait_random_exponential(multiplier=self.backoff_base_s, max=self.backoff_cap_s, exp_base=2)
        state = tenacity.RetryCallState(None, None, (), {})
        state.attempt_number = attempt
        return max(jitter(state), retry_after_s or 0.0)

    def call(
        self,
        attempt: Callable[[], T],
        *,
        retry_on_exception: Callable[[BaseException], bool] = lambda exc: False,
        retry_on_result: Callable[[T], bool] = lambda result: False,
        retry_after: Callable[[Any], float | None] = lambda outcome: None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """Run `attempt()` until it returns a final answer or retries run out.

        Out of retries, the last outcome is what the caller gets: its exception re-raised, or its result
        returned (so the caller can turn a last 503 into its own error). `retry_after(outcome)` reads the
        server's wait from the exception or result that failed.
        """

        def wait(state: tenacity.RetryCallState) -> float:
            outcome = state.outcome
            failed = (
                outcome.exception()
                if outcome is not None and outcome.failed
                else (outcome.result() if outcome is not None else None)
            )
            return self.delay(state.attempt_number, retry_after(failed))

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if on_retry is None or state.outcome is None or state.next_action is None:
                return
            failed = state.outcome.failed
            on_retry(
                RetryEvent(
                    state.attempt_number,
                    state.next_action.sleep,
                    state.outcome.exception() if failed else None,
                    None if failed else state.outcome.result(),
                )
            )

        def give_up(state: tenacity.RetryCallState) -> T:
            assert state.outcome is not None
            return state.outcome.result()  # re-raises the last exception, or returns the last result

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=wait,
            retry=tenacity.retry_if_exception(retry_on_exception) | tenacity.retry_if_result(retry_on_result),
            before_sleep=before_sleep,
            retry_error_callback=give_up,
            sleep=sleep,
            reraise=True,
        )
        return retrying(attempt)
