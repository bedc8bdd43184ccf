"""Several posting dates in one run (`load.days`): date order, refused days skipped and named, other errors stop."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from stripe_sage_pipeline.load.days import (
    day_figures,
    load_days,
    refusal_details,
    refusal_text,
    sage_down,
    total_stats,
)
from stripe_sage_pipeline.load.engine import LoadStats, PartitionBlocked, PlanError
from stripe_sage_pipeline.sage.client import CircuitBreaker
from stripe_sage_pipeline.sage.errors import CredentialsError, SageUnavailable

JULY = [date(2026, 7, 1) + timedelta(days=i) for i in range(31)]


def stats(day: date) -> LoadStats:
    return LoadStats(planned=day.day, created=day.day, held=day.day % 2)


def test_days_run_once_each_in_date_order_whatever_order_they_come_in():
    seen: list[date] = []

    def one(day: date) -> LoadStats:
        seen.append(day)
        return stats(day)

    out = load_days([*reversed(JULY), JULY[3]], one)
    assert seen == JULY
    assert list(out.done) == JULY and out.refused == {}
    assert out.days == JULY
    assert out.done[JULY[9]].created == 10


def test_a_refused_day_is_recorded_and_every_later_day_still_runs():
    broken, unmappable = JULY[4], JULY[20]

    def one(day: date) -> LoadStats:
        if day == broken:
            raise PartitionBlocked(day, {"journal-entries txn_1": ["unbalanced: debit 101 != credit 100"]})
        if day == unmappable:
            raise PlanError("revenue_mode invoice_driven needs posting_mode detail")
        return stats(day)

    out = load_days(JULY, one)
    assert sorted(out.refused) == [broken, unmappable]
    assert list(out.done) == [d for d in JULY if d not in (broken, unmappable)]
    assert out.days == JULY
    text = refusal_text(out.refused, len(out.days))
    assert text.startswith("2 of 31 day(s) refused")
    assert "2026-07-05: PartitionBlocked: refusing to post 2026-07-05: 1 item(s) break" in text
    assert "2026-07-21: PlanError: revenue_mode invoice_driven needs posting_mode detail" in text
    details = refusal_details(out.refused)
    assert details["2026-07-05"]["problems"] == {"journal-entries txn_1": ["unbalanced: debit 101 != credit 100"]}
    assert "problems" not in details["2026-07-21"]


@pytest.mark.parametrize("error", [CredentialsError("401 from Sage"), RuntimeError("bug"), KeyboardInterrupt()])
def test_anything_but_a_refusal_stops_at_once(error):
    seen: list[date] = []

    def one(day: date) -> LoadStats:
        seen.append(day)
        if day == JULY[2]:
            raise error
        return stats(day)

    with pytest.raises(type(error)):
        load_days(JULY, one)
    assert seen == JULY[:3]


class Client:
    """Stands for a Sage client: what `sage_down` reads is its circuit breaker."""

    def __init__(self, breaker: CircuitBreaker | None):
        self.breaker = breaker


def test_sage_going_down_during_a_day_stops_the_run_after_that_day():
    breaker = CircuitBreaker("http://127.0.0.1:9/sagepro/v1/PRO01", threshold=3)
    seen: list[date] = []

    def one(day: date) -> LoadStats:
        seen.append(day)
        if day == JULY[1]:
            for _ in range(3):  # the day's items got no answer: the breaker opens
                breaker.failure("ConnectError: connection refused")
        return stats(day)

    with pytest.raises(SageUnavailable, match="unavailable at http://127.0.0.1:9/sagepro/v1/PRO01: ConnectError"):
        load_days(JULY, one, stop=sage_down(Client(breaker)))
    assert seen == JULY[:2]


def test_a_refused_day_still_asks_whether_sage_is_down():
    breaker = CircuitBreaker("http://127.0.0.1:9/sagepro/v1/PRO01", threshold=1)
    seen: list[date] = []

    def one(day: date) -> LoadStats:
        seen.append(day)
        breaker.failure("ReadTimeout")
        raise PlanError("never mind")

    with pytest.raises(SageUnavailable):
        load_days(JULY, one, stop=sage_down(Client(breaker)))
    assert seen == JULY[:1]


def test_a_closed_breaker_or_none_never_stops():
    assert sage_down(Client(CircuitBreaker("http://127.0.0.1:9")))() is None
    assert sage_down(Client(None))() is None
    assert sage_down(object())() is None
    out = load_days(JULY[:3], stats, stop=sage_down(Client(CircuitBreaker("http://127.0.0.1:9"))))
    assert list(out.done) == JULY[:3]


def test_per_day_table_and_totals():
    by_day = {d: stats(d) for d in JULY[:3]}
    by_day[JULY[1]].dead_lettered = 1
    by_day[JULY[1]].errors.append("422 on txn_2")
    assert day_figures(by_day) == {
        "2026-07-01": {"planned": 1, "posted": 1, "held": 1, "dead_lettered": 0},
        "2026-07-02": {"planned": 2, "posted": 2, "held": 0, "dead_lettered": 1},
        "2026-07-03": {"planned": 3, "posted": 3, "held": 1, "dead_lettered": 0},
    }
    total = total_stats(list(by_day.values()))
    assert (total.planned, total.created, total.posted, total.held, total.dead_lettered) == (6, 6, 6, 2, 1)
    assert total.errors == ["422 on txn_2"]
    assert total_stats([]) == LoadStats()
