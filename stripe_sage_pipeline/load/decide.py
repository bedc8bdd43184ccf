"""The posting ledger's decision, as a pure function: `(current ledger row, planned item) → Action`.

    computed ──POST──▶ posted ──content changed──▶ reversed (then version + 1 is computed)
        └──422───────▶ dead_lettered ──re-drive (attempt + 1)──▶ posted

| current row            | planned item                 | action                                         |
|------------------------|------------------------------|------------------------------------------------|
| any                    | held (hold_reason set)       | HOLD: nothing is written or sent               |
| none                   |                              | POST_NEW: record v1 as computed, then POST     |
| computed               | same content                 | RESEND the stored body under the stored key    |
| computed               | other content                | LOOK_UP: did the earlier attempt commit?       |
| posted                 | same content                 | UNCHANGED                                      |
| posted                 | other content, reversible    | REVERSE_AND_REPOST: v+1, reversing v first     |
| posted                 | other content, no reversal   | MANUAL_CORRECTION: v+1 dead-lettered           |
| dead_lettered          | (not a re-drive)             | WAIT for a re-drive                            |
| dead_lettered          | re-drive                     | NEW_ATTEMPT: same version, next attempt's key  |
| reversed               |                              | POST_NEW_VERSION: v+1                          |

LOOK_UP resolves to `after_look_up(found)`: found → the earlier attempt committed, so it is posted and
outdated (then the posted/changed rule applies); not found → NEW_ATTEMPT under a new key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

# Resources whose posted records the target can reverse (a journal entry); others need a credit memo.
REVERSIBLE = frozenset({"journal-entries"})


class Kind(StrEnum):
    """What the engine does with one planned item."""

    HOLD = "hold"
    POST_NEW = "post_new"
    RESEND = "resend"
    LOOK_UP = "look_up"
    UNCHANGED = "unchanged"
    REVERSE_AND_REPOST = "reverse_and_repost"
    MANUAL_CORRECTION = "manual_correction"
    WAIT = "wait"
    NEW_ATTEMPT = "new_attempt"
    POST_NEW_VERSION = "post_new_version"


@dataclass(frozen=True)
class Action:
    """The decision: its kind and the ledger version it writes or sends (0 when nothing is sent)."""

    kind: Kind
    version: int = 0


class RowLike(Protocol):
    """What the decision reads of a ledger row."""

    status: str
    content_hash: str
    version: int


class ItemLike(Protocol):
    """What the decision reads of a planned item."""

    resource: str
    content_hash: str
    hold_reason: str | None


def decide(current: RowLike | None, item: ItemLike, *, redrive: bool = False) -> Action:
    """What to do so that the target holds `item`, given the latest ledger row of its external_ref."""
    if item.hold_reason:
        return Action(Kind.HOLD)
    if current is None:
        return Action(Kind.POST_NEW, 1)
    same = current.content_hash == item.content_hash
    if current.status == "computed":
        return Action(Kind.RESEND if same else Kind.LOOK_UP, current.version)
    if current.status == "posted":
        return _posted(current, item, same)
    if current.status == "dead_lettered":
        return Action(Kind.NEW_ATTEMPT, current.version) if redrive else Action(Kind.WAIT)
    if current.status == "reversed":
        return Action(Kind.POST_NEW_VERSION, current.version + 1)
    raise ValueError(f"ledger row of {item.resource} has an unknown status {current.status!r}")


def after_look_up(current: RowLike, item: ItemLike, found: bool) -> Action:
    """LOOK_UP resolved: a committed earlier attempt is posted-and-outdated; otherwise retry under a new key."""
    if not found:
        return Action(Kind.NEW_ATTEMPT, current.version)
    return _posted(current, item, current.content_hash == item.content_hash)


def _posted(current: RowLike, item: ItemLike, same: bool) -> Action:
    if same:
        return Action(Kind.UNCHANGED)
    kind = Kind.REVERSE_AND_REPOST if item.resource in REVERSIBLE else Kind.MANUAL_CORRECTION
    return Action(kind, current.version + 1)


__all__ = ["REVERSIBLE", "Action", "Kind", "after_look_up", "decide"]
