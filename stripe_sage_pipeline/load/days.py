"""Several posting dates in one run (a month-end backfill): each day as a one-day run posts it, in date order.

A day the load refuses (`PartitionBlocked`: its lines break the pre-post invariants; `PlanError`: the mapping
asks for something the load cannot do) does not stop the other days: every other day is posted, and the
caller fails at the end naming each refused day and why. Anything else (credentials, Sage down, a bug)
propagates at once, and so does Sage going down during a day (`stop`, e.g. `sage_down`): the days after
it are not attempted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Generic, TypeVar

from stripe_sage_pipeline.load.engine import LoadStats, PartitionBlocked, PlanError

T = TypeVar("T")
REFUSALS: tuple[type[Exception], ...] = (PartitionBlocked, PlanError)


@dataclass
class DaysOutcome(Generic[T]):
    """Per-day results of the days that ran, in date order, and the refused days with their refusal."""

    done: dict[date, T] = field(default_factory=dict)
    refused: dict[date, Exception] = field(default_factory=dict)

    @property
    def days(self) -> list[date]:
        """Every day that was attempted, in date order."""
        return sorted([*self.done, *self.refused])


def load_days(
    days: Iterable[date],
    load_day: Callable[[date], T],
    refusals: tuple[type[Exception], ...] = REFUSALS,
    stop: Callable[[], Exception | None] | None = None,
) -> DaysOutcome[T]:
    """Run `load_day` for each distinct day in date order; a refusal is recorded and the next day goes on.

    After each day `stop()` is asked whether to go on: an error it returns is raised (items of a day that
    failed one by one against a Sage that went down stay `computed`; the later days would only do the same).
    """
    out: DaysOutcome[T] = DaysOutcome()
    for day in sorted(set(days)):
        try:
            out.done[day] = load_day(day)
        except refusals as err:
            out.refused[day] = err
        error = stop() if stop is not None else None
        if error is not None:
            raise error
    return out


def sage_down(client: object) -> Callable[[], Exception | None]:
    """A `stop` for `load_days`: the client's circuit-breaker error while it is open (a target without a
    breaker never stops)."""

    def check() -> Exception | None:
        breaker = getattr(client, "breaker", None)
        return breaker.error() if breaker is not None and breaker.is_open else None

    return check


def refusal_reason(err: Exception) -> str:
    """One line on why a day was refused (the first line of the error; the problems follow in metadata)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def refusal_text(refused: dict[date, Exception], attempted: int) -> str:
    """The failure message of a multi-day run with refused days: every refused day, and why."""
    lines = [f"  {day}: {refusal_reason(err)}" for day, err in sorted(refused.items())]
    return (
        f"{len(refused)} of {attempted} day(s) refused (nothing of them posted; every other day was posted):\n"
        + "\n".join(lines)
    )


def refusal_details(refused: dict[date, Exception]) -> dict[str, dict]:
    """Refused days as JSON-able metadata: the reason and, for broken invariants, each item's problems."""
    return {
        day.isoformat(): {
            "reason": refusal_reason(err),
            **({"problems": err.problems} if isinstance(err, PartitionBlocked) else {}),
        }
        for day, err in sorted(refused.items())
    }


def day_figures(stats_by_day: dict[date, LoadStats]) -> dict[str, dict[str, int]]:
    """Day → posted / held / dead-lettered / planned, in date order (the run's per-day table)."""
    return {
        day.isoformat(): {
            "planned": s.planned,
            "posted": s.posted,
            "held": s.held,
            "dead_lettered": s.dead_lettered,
        }
        for day, s in sorted(stats_by_day.items())
    }


def total_stats(stats: Sequence[LoadStats]) -> LoadStats:
    """The counts of several days summed (errors concatenated)."""
    total = LoadStats()
    for s in stats:
        for f in fields(LoadStats):
            if f.name.startswith("_") or f.name == "errors":
                continue
            setattr(total, f.name, getattr(total, f.name) + getattr(s, f.name))
        total.errors.extend(s.errors)
    return total


__all__ = [
    "REFUSALS",
    "DaysOutcome",
    "day_figures",
    "load_days",
    "refusal_details",
    "refusal_reason",
    "refusal_text",
    "sage_down",
    "total_stats",
]
