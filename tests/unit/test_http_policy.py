"""The shared rate limit and retry policy (runtime.http_policy), with a fake clock where waiting matters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stripe_sage_pipeline.runtime.http_policy import (
    RateLimit,
    RetryPolicy,
    retry_after_header,
    retry_after_seconds,
    shared_rate_limit,
)


def test_retry_after_seconds_reads_delta_seconds_and_http_dates():
    now = datetime(2026, 7, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds(" 1.5 ", now) == 1.5
    assert retry_after_seconds("Wed, 01 Jul 2026 12:00:07 GMT", now) == 7.0
    assert retry_after_seconds("Wed, 01 Jul 2026 11:00:00 GMT", now) == 0.0  # in the past: no wait
    assert retry_after_seconds("100000", now) == 120.0  # capped
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("") is None


def test_retry_after_seconds_cap_is_the_callers():
    assert retry_after_seconds("500", cap_s=600) == 500.0  # the Sage clients accept up to 10 minutes
    assert retry_after_seconds("900", cap_s=600) == 600.0


def test_retry_after_header_is_whole_seconds_rounded_up_at_least_one():
    assert [retry_after_header(s) for s in (0.0, 0.2, 1.0, 1.01, 9.5, 54.2)] == ["1", "1", "1", "2", "10", "55"]


def test_take_answers_the_seconds_until_the_window_has_room_per_key():
    limit = RateLimit(per_minute=2)
    assert limit.take("alice") is None and limit.take("alice") is None
    wait = limit.take("alice")  # the minute's two are spent: room when the first one leaves the window
    assert wait is not None and 50 < wait <= 60
    assert limit.take("bob") is None  # every key has its own budget
    assert RateLimit(None).take("alice") is None


def test_burst_caps_any_one_second_inside_a_longer_window():
    limit = RateLimit(per_minute=120, burst=3)
    assert (limit.amount, limit.window_s, limit.burst) == (120, 60, 3)
    assert [limit.take() is None for _ in range(5)] == [True] * 3 + [False] * 2
    wait = limit.take()
    assert wait is not None and wait <= 1.0  # the one-second window frees first; the minute has room
    refused = RateLimit(per_minute=2, burst=5)
    assert refused.take() is None and refused.take() is None and 50 < (refused.take() or 0) <= 60


def test_a_server_window_counts_rate_times_window():
    limit = RateLimit(25, window_s=3, burst=50)
    assert (limit.amount, limit.window_s, limit.burst, limit.rate_per_s) == (75, 3, 50, 25)
    assert (RateLimit(22, window_s=1, burst=22).burst) is None  # the same window twice is one window


def test_rate_limit_windows():
    assert (RateLimit(22).amount, RateLimit(22).window_s) == (22, 1)
    assert (RateLimit(0.5).amount, RateLimit(0.5).window_s) == (1, 2)
    assert (RateLimit(1.5).amount, RateLimit(1.5).window_s) == (3, 2)
    assert (RateLimit(110 / 60).amount, RateLimit(110 / 60).window_s) == (7, 4)  # 1.75/s: within 5% under 1.83/s
    assert (RateLimit(0.3).amount, RateLimit(0.3).window_s) == (2, 7)  # 0.286/s
    assert (RateLimit(per_minute=110).amount, RateLimit(per_minute=110).window_s) == (110, 60)
    assert RateLimit(None).rate_per_s is None and RateLimit(0).rate_per_s is None
    # A one-second window whenever possible: never a burst of more than a second's worth.
    assert (RateLimit(22.7).amount, RateLimit(22.7).window_s) == (22, 1)


def test_rate_limit_admits_at_most_the_limit_per_window():
    limit = RateLimit(5)
    assert [limit.try_acquire() for _ in range(7)] == [True] * 5 + [False] * 2
    assert RateLimit(None).try_acquire()


def test_acquire_sleeps_until_the_window_has_room():
    waits: list[float] = []
    limit = RateLimit(3, sleep=lambda s: (waits.append(s), limit._limiter.storage.reset()))
    for _ in range(3):
        limit.acquire()
    assert waits == []
    limit.acquire()  # the fourth must wait for the window (the fake sleep then empties it)
    assert len(waits) == 1 and 0 < waits[0] <= 1.0


def test_a_paced_limit_starts_requests_a_gap_apart_instead_of_a_full_window_at_once(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("stripe_sage_pipeline.runtime.http_policy.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("stripe_sage_pipeline.runtime.http_policy.time.time", lambda: clock[0])

    def sleep(seconds: float) -> None:
        clock[0] += seconds * 1.05  # sleeps run a little long

    def starts(limit: RateLimit, n: int) -> list[float]:
        out = []
        for _ in range(n):
            limit.acquire()
            out.append(clock[0])
        return out

    limit = RateLimit(100, pace=True, sleep=sleep)
    paced = starts(limit, 300)
    gaps = [b - a for a, b in zip(paced, paced[1:], strict=False)]
    assert paced[49] == paced[0] < paced[50]  # a short burst (half the window) starts at once
    assert sorted(gaps[50:])[len(gaps) // 2] >= 0.0085  # then about 9-10 ms apart ...
    assert max(sum(1 for t in paced[50:] if s <= t < s + 0.1) for s in paced[50:]) <= 15  # ... never a window at once
    assert 2.85 <= paced[-1] - paced[0] <= 3.03  # 100 a second
    assert all(sum(1 for t in paced if s <= t < s + 1) <= 100 for s in paced)  # never over the limit
    burst = starts(RateLimit(100, sleep=sleep), 100)
    assert burst[-1] == burst[0]  # unpaced: a full window at once


def test_a_paced_limit_makes_up_for_a_stalled_process_without_exceeding_the_window(monkeypatch):
    """The process stalls 100 ms once a second (a GC pass, a core busy with Postgres): the pace, a tenth
    ahead of the limit, makes the time up inside the moving window; paced exactly, it lost 3% of it."""
    clock = [1000.0]
    monkeypatch.setattr("stripe_sage_pipeline.runtime.http_policy.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("stripe_sage_pipeline.runtime.http_policy.time.time", lambda: clock[0])

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    def rate(share: float) -> tuple[float, int]:
        monkeypatch.setattr("stripe_sage_pipeline.runtime.http_policy.PACE_SHARE", share)
        limit = RateLimit(100, pace=True, sleep=sleep)
        started = []
        for i in range(1000):
            limit.acquire()
            started.append(clock[0])
            if i % 100 == 99:
                clock[0] += 0.1
        busiest = max(sum(1 for t in started if s <= t < s + 1 - 1e-9) for s in started)
        return (len(started) - 1) / (started[-1] - started[0]), busiest

    ahead, exact = rate(0.9), rate(1.0)
    assert ahead[0] >= 100.0 and ahead[1] == 100  # the limit kept busy, never exceeded
    assert exact[0] < 98.0 and exact[1] == 100


def test_shared_rate_limit_is_one_object_per_key():
    a = shared_rate_limit(("test", "acct_1"), 10)
    assert shared_rate_limit(("test", "acct_1"), 10) is a
    assert shared_rate_limit(("test", "acct_2"), 10) is not a


class Flaky(Exception):
    def __init__(self, retry_after: float | None = None):
        self.retry_after = retry_after


def test_retry_policy_retries_transient_failures_and_honours_retry_after():
    sleeps: list[float] = []
    events = []
    calls = iter([Flaky(retry_after=7), Flaky(), "ok"])

    def attempt():
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    policy = RetryPolicy(max_retries=5, backoff_base_s=0.01, backoff_cap_s=0.02)
    result = policy.call(
        attempt,
        retry_on_exception=lambda e: isinstance(e, Flaky),
        retry_after=lambda e: getattr(e, "retry_after", None),
        on_retry=events.append,
        sleep=sleeps.append,
    )
    assert result == "ok"
    assert sleeps[0] == 7  # never sooner than Retry-After
    assert 0 <= sleeps[1] <= 0.02  # full jitter under the cap
    assert [e.attempt for e in events] == [1, 2] and all(isinstance(e.exception, Flaky) for e in events)


def test_retry_policy_stops_after_max_retries_and_raises_the_last_error():
    attempts = []

    def attempt():
        attempts.append(1)
        raise Flaky()

    with pytest.raises(Flaky):
        RetryPolicy(max_retries=3).call(attempt, retry_on_exception=lambda e: True, sleep=lambda s: None)
    assert len(attempts) == 4


def test_a_final_error_is_not_retried():
    attempts = []

    def attempt():
        attempts.append(1)
        raise ValueError("bad request")

    with pytest.raises(ValueError):
        RetryPolicy().call(attempt, retry_on_exception=lambda e: isinstance(e, Flaky), sleep=lambda s: None)
    assert attempts == [1]


def test_retry_on_result_returns_the_last_result_when_retries_run_out():
    answers = iter([503, 503, 503])
    sleeps: list[float] = []
    got = RetryPolicy(max_retries=2, backoff_base_s=1, backoff_cap_s=4).call(
        lambda: next(answers), retry_on_result=lambda status: status >= 500, sleep=sleeps.append
    )
    assert got == 503 and len(sleeps) == 2
    assert 0 <= sleeps[0] <= 1 and 0 <= sleeps[1] <= 2  # uniform(0, base·2^(n-1))


def test_delay_is_full_jitter_under_the_cap_but_at_least_retry_after():
    policy = RetryPolicy(backoff_base_s=0.25, backoff_cap_s=20)
    assert all(0 <= policy.delay(n) <= min(20, 0.25 * 2 ** (n - 1)) for n in range(1, 12) for _ in range(20))
    assert policy.delay(1, retry_after_s=3) == 3


def test_a_paced_limit_catches_up_late_starts_without_exceeding_the_window(monkeypatch):
    """A thread that starts late (GIL, scheduling) does not slow the pace: 100 threads handing the turn
    to each other 3 ms late still start 100 requests a second."""
    clock = [1000.0]
    monkeypatch.setattr("stripe_sage_pipeline.runtime.http_policy.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("stripe_sage_pipeline.runtime.http_policy.time.time", lambda: clock[0])

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    limit = RateLimit(100, pace=True, sleep=sleep)
    started = []
    for _ in range(500):
        limit.acquire()
        started.append(clock[0])
        clock[0] += 0.003  # the next waiter gets the turn 3 ms later
    assert 4.8 <= started[-1] - started[0] <= 5.1  # 100 a second, not 1 / 13 ms = 77
    assert all(sum(1 for t in started if s <= t < s + 1 - 1e-6) <= 100 for s in started)
