"""Stripe's money-movement semantics, shared by the data generator, the API and the admin endpoints:
fees, refunds, disputes and automatic payouts, each creating its balance transaction and events.

All amounts are integers in the currency's minor unit (see `stripe_sage_pipeline.money`).
"""

from __future__ import annotations

from typing import Any

from stripe_sage_sandboxes.stripe_emulator.objects import DAY, DISPUTE_CARD_DETAILS, IdFactory
from stripe_sage_sandboxes.stripe_emulator.store import ApiError, EmulatorState, missing

# Processing fee per currency: (basis points, fixed minor units). USD is Stripe's 2.9% + 30c; the
# others are the local card rates, with the fixed part scaled to the currency's minor unit.
FEE_RULES: dict[str, tuple[int, int]] = {
    "usd": (290, 30),
    "eur": (150, 25),
    "gbp": (150, 20),
    "jpy": (360, 0),
    "kwd": (290, 100),
}
# Dispute fee, about USD 15 in each currency's minor units.
DISPUTE_FEES: dict[str, int] = {"usd": 1500, "eur": 1500, "gbp": 1500, "jpy": 2000, "kwd": 5000}
PAYOUT_FAILURES: dict[str, str] = {
    "account_closed": "The bank account has been closed.",
    "no_account": "The bank account details on file are probably incorrect. No bank account could be located with those details.",
    "account_frozen": "The bank account has been frozen.",
    "insufficient_funds": "Your Stripe account has insufficient funds to cover the payout.",
    "invalid_account_number": "The bank account number appears to be invalid.",
}
OPEN_DISPUTE_STATUSES = {"needs_response", "under_review", "warning_needs_response", "warning_under_review"}


def day_start(t: int) -> int:
    """00:00 UTC of the day containing `t`."""
    return t - t % DAY


def percent_fee(amount: int, currency: str) -> int:
    """The percentage part of the processing fee, rounded half up to the minor unit."""
    bp, _fixed = FEE_RULES.get(currency, FEE_RULES["usd"])
    return (amount * bp + 5000) // 10000


def processing_fee(amount: int, currency: str) -> int:
    """Stripe's processing fee for a charge of `amount` (e.g. USD 80.00 -> 262)."""
    return percent_fee(amount, currency) + FEE_RULES.get(currency, FEE_RULES["usd"])[1]


def fee_detail(amount: int, currency: str, description: str) -> dict[str, Any]:
    """One `fee_details` entry."""
    return {
        "amount": amount,
        "application": None,
        "currency": currency,
        "description": description,
        "type": "stripe_fee",
    }


def new_balance_transaction(
    state: EmulatorState,
    ids: IdFactory,
    *,
    amount: int,
    fee: int,
    fee_details: list[dict[str, Any]],
    currency: str,
    created: int,
    available_on: int,
    type: str,
    category: str,
    source: str,
    description: str | None = None,
    bulk: bool = False,
    pool: bool = True,
    exchange_rate: float | None = None,
) -> str:
    """Create a balance transaction (`net = amount - fee`) and queue it for the next automatic payout."""
    obj: dict[str, Any] = {
        "id": ids.new("txn"),
        "amount": amount,
        "available_on": available_on,
        "created": created,
        "currency": currency,
        "fee": fee,
        "net": amount - fee,
        "reporting_category": category,
        "source": source,
        "status": "available" if available_on <= state.now() else "pending",
        "type": type,
    }
    # The common single "Stripe processing fees" entry (or none for fee 0) is derived at render
    # time; storing it for every one of 200k balance transactions would cost ~60 MB.
    if fee_details != ([fee_detail(fee, currency, "Stripe processing fees")] if fee else []):
        obj["fee_details"] = fee_details
    if description is not None:
        obj["description"] = description
    if exchange_rate is not None:
        obj["exchange_rate"] = exchange_rate
    state.add("balance_transactions", obj, bulk=bulk)
    if pool:
        state.payout_pool.setdefault(currency, []).append((available_on, obj["id"], amount - fee))
    return obj["id"]


def refresh_balance_statuses(state: EmulatorState, at: int) -> int:
    """Flip `pending` balance transactions whose funds are available by `at`; returns how many."""
    n = 0
    with state.lock:
        bts = state.coll("balance_transactions")
        for oid, obj in bts.objs.items():
            if oid in bts.raw:
                continue
            want = "available" if obj["available_on"] <= at else "pending"
            if obj.get("status", "available") != want:
                obj["status"] = want
                bts.invalidate(oid)
                n += 1
    return n


def _ids(state: EmulatorState, ids: IdFactory | None) -> IdFactory:
    return ids or state.ids


def settlement_of(state: EmulatorState, charge_id: str, amount: int) -> tuple[str, int, float | None]:
    """`amount` of a charge's currency in the currency the charge settled in, at the charge's
    exchange rate: (currency, amount, exchange_rate or None when it settled as presented)."""
    currency = state.field("charges", charge_id, "currency")
    bt_id = state.field("charges", charge_id, "balance_transaction")
    bt = state.get("balance_transactions", bt_id) if bt_id else None
    if not bt or bt.get("currency", "usd") == currency or not bt.get("exchange_rate"):
        return currency, amount, None
    rate = bt["exchange_rate"]
    return bt["currency"], int(round(amount * rate)), rate


def refund_charge(
    state: EmulatorState,
    charge_id: str,
    amount: int | None = None,
    *,
    at: int | None = None,
    reason: str | None = None,
    metadata: dict[str, str] | None = None,
    fee_return: bool = False,
    ids: IdFactory | None = None,
    bulk: bool = False,
    request_id: str | None = None,
    idem_key: str | None = None,
) -> str:
    """Refund (part of) a charge as Stripe does: refund + `refund` balance transaction (fee 0, or a
    returned share of the percentage fee), the charge's amount_refunded/refunded updated, and the
    `refund.created`, `charge.refunded`, `charge.refund.updated` events."""
    ids = _ids(state, ids)
    with state.lock:
        charge = state.get("charges", charge_id)
        if charge is None:
            raise missing("charges", charge_id, param="charge", status=400)
        at = state.now() if at is None else at
        total = state.field("charges", charge_id, "amount")
        already = state.field("charges", charge_id, "amount_refunded")
        currency = state.field("charges", charge_id, "currency")
        remaining = total - already
        if remaining <= 0:
            raise ApiError(400, f"Charge {charge_id} has already been refunded.", code="charge_already_refunded")
        amount = remaining if amount is None else amount
        if amount <= 0:
            raise ApiError(400, "Invalid positive integer", param="amount")
        if amount > remaining:
            raise ApiError(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})",
                code="amount_too_large",
                param="amount",
            )
        refund_id = ids.new("re")
        settle_currency, settle_amount, rate = settlement_of(state, charge_id, amount)
        fee, details = 0, []
        if fee_return:
            part = percent_fee(settle_amount, settle_currency)
            fee, details = -part, [fee_detail(-part, settle_currency, "Stripe processing fees")]
        bt = new_balance_transaction(
            state,
            ids,
            amount=-settle_amount,
            fee=fee,
            fee_details=details,
            currency=settle_currency,
            exchange_rate=rate,
            created=at,
            available_on=day_start(at) + 2 * DAY,
            type="refund",
            category="refund",
            source=refund_id,
            bulk=bulk,
        )
        refund: dict[str, Any] = {
            "id": refund_id,
            "amount": amount,
            "balance_transaction": bt,
            "charge": charge_id,
            "created": at,
            "currency": currency,
            "payment_intent": state.field("charges", charge_id, "payment_intent"),
            "reason": reason,
        }
        if metadata:
            refund["metadata"] = metadata
        state.add("refunds", refund, bulk=bulk)
        new_total = already + amount
        prev = state.update("charges", charge_id, {"amount_refunded": new_total, "refunded": new_total == total})
        common = {"created": at, "bulk": bulk, "ids": ids, "request_id": request_id, "idem_key": idem_key}
        state.emit("charge.refunded", "charges", charge_id, prev=prev, **common)
        state.emit("refund.created", "refunds", refund_id, **common)
        state.emit("charge.refund.updated", "refunds", refund_id, **common)
        return refund_id


def open_dispute(
    state: EmulatorState,
    charge_id: str,
    *,
    at: int,
    reason: str = "fraudulent",
    ids: IdFactory | None = None,
    bulk: bool = False,
) -> str:
    """A chargeback: dispute in `needs_response`, the funds and the dispute fee withdrawn by an
    `adjustment` balance transaction (reporting category `dispute`), the charge marked disputed."""
    ids = _ids(state, ids)
    with state.lock:
        amount = state.field("charges", charge_id, "amount")
        currency = state.field("charges", charge_id, "currency")
        dispute_id = ids.new("dp")
        settle_currency, settle_amount, rate = settlement_of(state, charge_id, amount)
        dfee = DISPUTE_FEES.get(settle_currency, 1500)
        bt = new_balance_transaction(
            state,
            ids,
            amount=-settle_amount,
            fee=dfee,
            fee_details=[fee_detail(dfee, settle_currency, "Dispute fee")],
            currency=settle_currency,
            exchange_rate=rate,
            created=at,
            available_on=day_start(at) + DAY,
            type="adjustment",
            category="dispute",
            source=dispute_id,
            description=f"Chargeback withdrawal for {charge_id}",
            bulk=bulk,
        )
        brand = state.field("charges", charge_id, "payment_method_details")["card"]["brand"]
        dispute = {
            "id": dispute_id,
            "amount": amount,
            "balance_transactions": [bt],
            "charge": charge_id,
            "created": at,
            "currency": currency,
            "evidence_details": {
                "due_by": day_start(at) + 8 * DAY - 1,
                "has_evidence": False,
                "past_due": False,
                "submission_count": 0,
            },
            "payment_intent": state.field("charges", charge_id, "payment_intent"),
            "payment_method_details": DISPUTE_CARD_DETAILS.get(brand, DISPUTE_CARD_DETAILS["visa"]),
            "reason": reason,
            "status": "needs_response",
        }
        state.add("disputes", dispute, bulk=bulk)
        state.update("charges", charge_id, {"disputed": True})
        state.emit("charge.dispute.created", "disputes", dispute_id, created=at, bulk=bulk, ids=ids)
        state.emit("charge.dispute.funds_withdrawn", "disputes", dispute_id, created=at, bulk=bulk, ids=ids)
        return dispute_id


def submit_dispute_evidence(
    state: EmulatorState, dispute_id: str, *, at: int, ids: IdFactory | None = None, bulk: bool = False
) -> None:
    """The merchant answers: `needs_response` -> `under_review` (`charge.dispute.updated`)."""
    with state.lock:
        charge_id = state.field("disputes", dispute_id, "charge")
        details = dict(state.field("disputes", dispute_id, "evidence_details"))
        details.update(has_evidence=True, submission_count=1)
        evidence = dict(state.field("disputes", dispute_id, "evidence"))
        evidence.update(
            product_description="Goods shipped as ordered.",
            uncategorized_text=f"Delivery confirmation for {charge_id}.",
        )
        prev = state.update(
            "disputes", dispute_id, {"status": "under_review", "evidence": evidence, "evidence_details": details}
        )
        state.emit("charge.dispute.updated", "disputes", dispute_id, created=at, prev=prev, bulk=bulk, ids=ids)


def close_dispute(
    state: EmulatorState,
    dispute_id: str,
    status: str,
    *,
    at: int | None = None,
    ids: IdFactory | None = None,
    bulk: bool = False,
    return_fee: bool = True,
) -> None:
    """Close a dispute `won` or `lost`. Won: a `dispute_reversal` balance transaction gives back the
    amount and (unless `return_fee` is false: Stripe keeps it for some networks) the dispute fee
    (fee negative), and `charge.dispute.funds_reinstated` follows."""
    ids = _ids(state, ids)
    if status not in ("won", "lost"):
        raise ApiError(400, "status must be 'won' or 'lost'", param="status")
    with state.lock:
        if state.get("disputes", dispute_id) is None:
            raise missing("disputes", dispute_id)
        current = state.field("disputes", dispute_id, "status")
        if current not in OPEN_DISPUTE_STATUSES:
            raise ApiError(400, f"Dispute {dispute_id} is already closed ({current}).", code="dispute_already_closed")
        at = state.now() if at is None else at
        changes: dict[str, Any] = {"status": status}
        if status == "won":
            charge_id = state.field("disputes", dispute_id, "charge")
            currency, amount, rate = settlement_of(state, charge_id, state.field("disputes", dispute_id, "amount"))
            dfee = DISPUTE_FEES.get(currency, 1500) if return_fee else 0
            bt = new_balance_transaction(
                state,
                ids,
                amount=amount,
                fee=-dfee,
                fee_details=[fee_detail(-dfee, currency, "Dispute fee refund")] if dfee else [],
                currency=currency,
                created=at,
                available_on=day_start(at) + DAY,
                type="adjustment",
                category="dispute_reversal",
                source=dispute_id,
                description=f"Chargeback reversal for {charge_id}",
                bulk=bulk,
                exchange_rate=rate,
            )
            changes["balance_transactions"] = [*state.field("disputes", dispute_id, "balance_transactions"), bt]
        old = state.update("disputes", dispute_id, changes)
        # previous_attributes shows the status; the internal list of balance transaction ids is not an API value.
        state.emit(
            "charge.dispute.closed",
            "disputes",
            dispute_id,
            created=at,
            prev={"status": old["status"]},
            bulk=bulk,
            ids=ids,
        )
        if status == "won":
            state.emit("charge.dispute.funds_reinstated", "disputes", dispute_id, created=at, bulk=bulk, ids=ids)


def bank_account(state: EmulatorState, currency: str, ids: IdFactory | None = None) -> str:
    """The (not stored) bank account payouts in a currency go to."""
    if currency not in state.bank_accounts:
        state.bank_accounts[currency] = _ids(state, ids).new("ba")
    return state.bank_accounts[currency]


def run_automatic_payouts(
    state: EmulatorState,
    *,
    at: int | None = None,
    ids: IdFactory | None = None,
    bulk: bool = False,
    manual_currencies: frozenset[str] = frozenset(),
) -> list[str]:
    """Sweep, per currency, every balance transaction available by `at` into one automatic payout
    (`payout` balance transaction of -amount; membership queryable with `?payout=`). A negative
    available balance is debited from the bank: a payout of a negative amount. Currencies on a
    manual schedule are skipped."""
    ids = _ids(state, ids)
    created: list[str] = []
    with state.lock:
        at = state.now() if at is None else at
        for currency in sorted(state.payout_pool):
            if currency in manual_currencies:
                continue
            pool = state.payout_pool[currency]
            due = [item for item in pool if item[0] <= at]
            total = sum(net for _avail, _bt, net in due)
            if not due or total == 0:
                continue
            state.payout_pool[currency] = [item for item in pool if item[0] > at]
            payout_id = ids.new("po")
            bt = new_balance_transaction(
                state,
                ids,
                amount=-total,
                fee=0,
                fee_details=[],
                currency=currency,
                created=at,
                available_on=at,
                type="payout",
                category="payout",
                source=payout_id,
                bulk=bulk,
                pool=False,
            )
            payout = {
                "id": payout_id,
                "amount": total,
                "arrival_date": at + 2 * DAY,
                "balance_transaction": bt,
                "created": at,
                "currency": currency,
                "destination": bank_account(state, currency, ids),
                "status": "in_transit",
            }
            state.add("payouts", payout, bulk=bulk)
            for _avail, member, _net in due:
                state.set_extern("balance_transactions", "payout", member, payout_id, bulk=bulk)
            state.set_extern("balance_transactions", "payout", bt, payout_id, bulk=bulk)
            state.emit("payout.created", "payouts", payout_id, created=at, bulk=bulk, ids=ids)
            created.append(payout_id)
    return created


def create_manual_payout(
    state: EmulatorState,
    currency: str,
    *,
    at: int | None = None,
    ids: IdFactory | None = None,
    bulk: bool = False,
) -> str | None:
    """A manual payout (`automatic: false`) of the whole available balance in `currency`: Stripe
    does not itemise it (no `?payout=` membership). None when nothing is available."""
    ids = _ids(state, ids)
    with state.lock:
        at = state.now() if at is None else at
        pool = state.payout_pool.get(currency, [])
        due = [item for item in pool if item[0] <= at]
        total = sum(net for _avail, _bt, net in due)
        if total <= 0:
            return None
        state.payout_pool[currency] = [item for item in pool if item[0] > at]
        payout_id = ids.new("po")
        bt = new_balance_transaction(
            state,
            ids,
            amount=-total,
            fee=0,
            fee_details=[],
            currency=currency,
            created=at,
            available_on=at,
            type="payout",
            category="payout",
            source=payout_id,
            bulk=bulk,
            pool=False,
        )
        payout = {
            "id": payout_id,
            "amount": total,
            "arrival_date": at + 2 * DAY,
            "automatic": False,
            "balance_transaction": bt,
            "created": at,
            "currency": currency,
            "description": None,
            "destination": bank_account(state, currency, ids),
            "reconciliation_status": "not_applicable",
            "status": "pending",
        }
        state.add("payouts", payout, bulk=bulk)
        state.emit("payout.created", "payouts", payout_id, created=at, bulk=bulk, ids=ids)
        return payout_id


def balance_adjustment(
    state: EmulatorState,
    currency: str,
    amount: int,
    *,
    type: str,
    category: str,
    at: int,
    description: str,
    source: str | None = None,
    ids: IdFactory | None = None,
    bulk: bool = False,
) -> str:
    """A balance transaction that is not a payment: a Stripe fee or fee credit, VAT on fees, a
    reserve or minimum-balance hold and release, a top-up, an adjustment (fee 0, available at once)."""
    return new_balance_transaction(
        state,
        _ids(state, ids),
        amount=amount,
        fee=0,
        fee_details=[],
        currency=currency,
        created=at,
        available_on=at,
        type=type,
        category=category,
        source=source,
        description=description,
        bulk=bulk,
    )


def fail_refund(
    state: EmulatorState, refund_id: str, *, at: int, ids: IdFactory | None = None, bulk: bool = False
) -> None:
    """A refund the bank returns (e.g. a closed card): status `failed`, a `refund_failure` balance
    transaction credits the amount back, the charge's amount_refunded goes down."""
    ids = _ids(state, ids)
    with state.lock:
        amount = state.field("refunds", refund_id, "amount")
        charge_id = state.field("refunds", refund_id, "charge")
        currency, settle_amount, rate = settlement_of(state, charge_id, amount)
        bt = new_balance_transaction(
            state,
            ids,
            amount=settle_amount,
            fee=0,
            fee_details=[],
            currency=currency,
            exchange_rate=rate,
            created=at,
            available_on=day_start(at) + DAY,
            type="adjustment",
            category="refund_failure",
            source=refund_id,
            description=f"Refund failure for {charge_id}",
            bulk=bulk,
        )
        prev = state.update(
            "refunds",
            refund_id,
            {"status": "failed", "failure_balance_transaction": bt, "failure_reason": "expired_or_canceled_card"},
        )
        refunded = state.field("charges", charge_id, "amount_refunded") - amount
        state.update("charges", charge_id, {"amount_refunded": refunded, "refunded": False})
        state.emit("charge.refund.updated", "refunds", refund_id, created=at, prev=prev, bulk=bulk, ids=ids)


def mark_payout_paid(
    state: EmulatorState, payout_id: str, *, at: int | None = None, ids: IdFactory | None = None, bulk: bool = False
) -> None:
    """The payout reached the bank: `in_transit`/`pending` -> `paid` (`payout.paid`)."""
    with state.lock:
        if state.get("payouts", payout_id) is None:
            raise missing("payouts", payout_id)
        status = state.field("payouts", payout_id, "status")
        if status not in ("pending", "in_transit"):
            raise ApiError(400, f"Payout {payout_id} is {status}, not in transit.", param="id")
        at = state.now() if at is None else at
        prev = state.update("payouts", payout_id, {"status": "paid"})
        state.emit("payout.paid", "payouts", payout_id, created=at, prev=prev, bulk=bulk, ids=ids)


def fail_payout(
    state: EmulatorState,
    payout_id: str,
    *,
    code: str = "account_closed",
    at: int | None = None,
    ids: IdFactory | None = None,
    bulk: bool = False,
) -> None:
    """A payout bounces, after it was paid or while in transit: status `failed` with a failure
    code, a `payout_failure` balance transaction credits the amount back (swept into a later
    payout), `payout.failed` is sent."""
    ids = _ids(state, ids)
    with state.lock:
        if state.get("payouts", payout_id) is None:
            raise missing("payouts", payout_id)
        status = state.field("payouts", payout_id, "status")
        if status not in ("paid", "in_transit", "pending"):
            raise ApiError(400, f"Only a paid or in-transit payout can fail; {payout_id} is {status}.", param="id")
        at = state.now() if at is None else at
        amount = state.field("payouts", payout_id, "amount")
        currency = state.field("payouts", payout_id, "currency")
        bt = new_balance_transaction(
            state,
            ids,
            amount=amount,
            fee=0,
            fee_details=[],
            currency=currency,
            created=at,
            available_on=at,
            type="payout_failure",
            category="payout_reversal",
            source=payout_id,
            description="Payout failure",
            bulk=bulk,
        )
        prev = state.update(
            "payouts",
            payout_id,
            {
                "status": "failed",
                "failure_balance_transaction": bt,
                "failure_code": code,
                "failure_message": PAYOUT_FAILURES.get(code, "The payout failed."),
            },
        )
        state.emit("payout.failed", "payouts", payout_id, created=at, prev=prev, bulk=bulk, ids=ids)
