"""The automation's rules as pure functions: what a load would send, which day an event loads, lost launches."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from stripe_sage_pipeline.automation import rules
from stripe_sage_pipeline.load.ledger import LedgerRow
from stripe_sage_pipeline.load.plan import PlannedItem


def _item(**kw) -> PlannedItem:
    return PlannedItem(
        **{
            "resource": "journal-entries",
            "external_ref": "txn_1",
            "item_key": "txn_1",
            "partition_date": date(2026, 7, 1),
            "posting_mode": "detail",
            "payload": {},
            "content_hash": "h1",
            **kw,
        }
    )


def _row(status: str, content_hash: str = "h1") -> LedgerRow:
    return LedgerRow(
        resource="journal-entries",
        external_ref="txn_1",
        version=1,
        item_key="txn_1",
        sage_ref="txn_1",
        partition_date=date(2026, 7, 1),
        posting_mode="detail",
        status=status,
        content_hash=content_hash,
        payload={},
        attempt=1,
        idempotency_key="k",
    )


@pytest.mark.parametrize(
    ("item", "row", "expected"),
    [
        (_item(), None, True),  # new
        (_item(), _row("computed"), True),  # in flight: resent under its key
        (_item(), _row("posted"), False),  # unchanged
        (_item(content_hash="h2"), _row("posted"), True),  # changed: reversed and re-posted
        (_item(), _row("reversed"), True),  # the next version posts
        (_item(content_hash="h2"), _row("dead_lettered"), False),  # waits for a re-drive
        (_item(hold_reason="PayoutNotReconciled:incomplete"), None, False),  # held: loading changes nothing
        (_item(hold_reason="InvoiceNotPosted"), None, False),
        (_item(problems=["unbalanced"]), _row("posted"), True),  # the load refuses it, loudly
    ],
)
def test_needs_posting_follows_the_ledger_rules(item, row, expected):
    assert rules.needs_posting(item, row) is expected


def test_event_day_is_the_newest_event_in_the_posting_time_zone():
    events = [
        {"event_created": datetime(2026, 7, 16, 23, 30, tzinfo=UTC)},
        {"event_created": datetime(2026, 7, 17, 2, 0, tzinfo=UTC)},
    ]
    assert rules.event_day(events, "UTC", today=date(2026, 7, 20)) == date(2026, 7, 17)
    assert rules.event_day(events, "America/New_York", today=date(2026, 7, 20)) == date(2026, 7, 16)
    assert rules.event_day(events, "UTC", today=date(2026, 7, 16)) == date(2026, 7, 16)  # never a future day


def test_claims_without_a_run_are_requested_again():
    claims = {"inbox-evt_1": [{"event_id": "evt_1"}], "inbox-evt_3": [{"event_id": "evt_2"}, {"event_id": "evt_3"}]}
    assert rules.unlaunched_claims(claims, lambda key: key == "inbox-evt_1") == {"inbox-evt_3": claims["inbox-evt_3"]}
    assert rules.unlaunched_claims(claims, lambda key: True) == {}


def test_split_events_leaves_payout_status_events_to_the_payout_sensor():
    events = [{"event_type": "payout.paid"}, {"event_type": "refund.created"}, {"event_type": "payout.failed"}]
    payouts, others = rules.split_events(events)
    assert [e["event_type"] for e in payouts] == ["payout.paid", "payout.failed"]
    assert [e["event_type"] for e in others] == ["refund.created"]
