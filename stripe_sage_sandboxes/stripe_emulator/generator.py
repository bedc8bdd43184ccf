"""Deterministic, realistic Stripe history: customers, charges in five currencies (JPY zero-decimal,
KWD three-decimal; a share of EUR charges settled in USD at an exchange rate), tax in metadata or on
invoices (exclusive or tax-inclusive, some with a coupon), payment intents, refunds (some returning
part of the fee, some failing later), disputes won (some keeping their fee) and lost, daily automatic
payouts per currency (a negative balance debited from the bank), GBP switching to manual payouts
halfway through, one payout that fails after it was paid and one that fails in transit, Stripe fees
and fee credits, VAT on fees, reserve and minimum-balance holds and releases, a top-up, and an event
for every creation and change.

The simulation walks time forward: each day starts with the automatic payouts (at 00:00 UTC, sweeping
what became available), then the day's charges and every scheduled follow-up (refund, dispute step,
payout arrival/failure) are applied in time order, so every event snapshot is the object as it was.
`load_golden` serves a file in the layout of examples/payout_worked_example.json instead.
"""

from __future__ import annotations

import heapq
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stripe_sage_sandboxes.stripe_emulator import ops
from stripe_sage_sandboxes.stripe_emulator.objects import CARD_DETAILS, DAY, OUTCOMES, IdFactory
from stripe_sage_sandboxes.stripe_emulator.store import EVENT_RETENTION_S, EmulatorState

# (currency, share of charges, country of its customers)
CURRENCIES = [("usd", 70, "US"), ("eur", 12, "DE"), ("gbp", 9, "GB"), ("jpy", 5, "JP"), ("kwd", 4, "KW")]
# Typical basket in minor units (lognormal median, step the amount is rounded to).
AMOUNTS = {"usd": (4500, 50), "eur": (3900, 50), "gbp": (3500, 50), "jpy": (5000, 100), "kwd": (12500, 250)}
# Sales tax / VAT rate in basis points, used for tax carried in metadata and on invoices.
TAX_BP = {"usd": 800, "eur": 1900, "gbp": 2000, "jpy": 1000, "kwd": 0}
# A share of EUR charges is presented in EUR and settles in USD (the account's settlement currency
# for EUR is USD for these): USD per EUR.
EUR_SETTLED_IN_USD = 0.25
USD_PER_EUR = 1.0842
# From halfway through the window GBP is paid out manually (no automatic payouts), every few days.
MANUAL_CURRENCY = "gbp"
MANUAL_PAYOUT_EVERY_DAYS = 4
# Share of the day's charges per UTC hour: a business day in the Americas and Europe.
HOUR_WEIGHTS = [2, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 8, 8, 7, 6, 5, 4, 3, 3]
BASE_CHARGES_PER_DAY = 110

FIRST = "Ada Alan Grace Linus Margaret Ken Barbara Dennis Frances Guido Radia John Hedy Tim Sophie Yukihiro Mary Niklaus Anita Bjarne Carol Edsger Jean Donald Shafi".split()
LAST = "Lovelace Turing Hopper Torvalds Hamilton Thompson Liskov Ritchie Allen Rossum Perlman McCarthy Lamarr Berners-Lee Wilson Matsumoto Keller Wirth Borg Stroustrup Shaw Dijkstra Sammet Knuth Goldwasser".split()
COMPANIES = "Acme Globex Initech Umbrella Stark Wayne Hooli Vandelay Soylent Tyrell Cyberdyne Wonka Aperture Gringotts Monarch".split()
SUFFIX = {"US": "Inc.", "DE": "GmbH", "GB": "Ltd", "JP": "K.K.", "KW": "W.L.L."}
PLACES: dict[str, list[tuple[str, str | None, str]]] = {
    "US": [
        ("San Francisco", "CA", "94102"),
        ("Austin", "TX", "73301"),
        ("New York", "NY", "10001"),
        ("Seattle", "WA", "98101"),
        ("Chicago", "IL", "60601"),
    ],
    "DE": [("Berlin", None, "10115"), ("Munich", None, "80331"), ("Hamburg", None, "20095")],
    "GB": [("London", None, "EC1A 1BB"), ("Manchester", None, "M1 1AE"), ("Leeds", None, "LS1 1UR")],
    "JP": [("Tokyo", "Tokyo", "100-0001"), ("Osaka", "Osaka", "530-0001")],
    "KW": [("Kuwait City", None, "13001"), ("Hawalli", None, "32001")],
}
STREETS = ["Market St", "Main St", "High Street", "Hauptstrasse", "Business Ave", "Harbour Rd", "Chuo-dori"]
PRODUCTS = ["Starter plan", "Pro plan", "Widget", "Support hours", "Setup fee", "Add-on seats", "Consulting"]
CARD_BY_COUNTRY = {"US": [0, 1, 2, 4], "DE": [5, 2], "GB": [3, 0], "JP": [6, 0], "KW": [7, 2]}


def _default_end() -> int:
    now = datetime.now(UTC)
    return int(datetime(now.year, now.month, now.day, tzinfo=UTC).timestamp())


class _Gen:
    """One generation run: the RNG, the id factory and the schedule of future actions."""

    def __init__(self, state: EmulatorState, seed: int, days: int, volume: float, end: int) -> None:
        self.state = state
        self.rng = random.Random(seed)
        self.ids = IdFactory(f"gen:{seed}")
        self.days = days
        self.volume = volume
        self.end = end
        self.start = end - days * DAY
        self.heap: list[tuple[int, int, str, tuple[Any, ...]]] = []
        self.seq = 0
        self.customers: list[tuple[int, str, str]] = []  # (created, id, country)
        self.customer_created: list[int] = []
        self.order_no = 1000
        self.invoice_no = 0
        self.fail_after = self.start + max(1, days // 3) * DAY
        self.fail_chosen = False
        self.transit_fail_after = self.start + max(2, days // 2) * DAY
        self.transit_fail_chosen = False
        self.manual_from = self.start + max(1, days // 2) * DAY
        self.tax_rates = {cur: self.ids.new("txr") for cur, *_ in CURRENCIES}
        self.cur_names = [c for c, _w, _cc in CURRENCIES]
        self.cur_weights = [w for _c, w, _cc in CURRENCIES]
        self.country = {c: cc for c, _w, cc in CURRENCIES}

    # ---- helpers -----------------------------------------------------------------------------
    def schedule(self, at: int, action: str, *args: Any) -> None:
        if at <= self.end:
            self.seq += 1
            heapq.heappush(self.heap, (at, self.seq, action, args))

    def emit(self, type_: str, coll: str, oid: str, at: int, prev: dict[str, Any] | None = None) -> None:
        self.state.emit(type_, coll, oid, created=at, prev=prev, bulk=True, ids=self.ids)

    def amount(self, currency: str) -> int:
        median, step = AMOUNTS[currency]
        value = int(self.rng.lognormvariate(0, 0.8) * median)
        return max(step * 2, value - value % step)

    # ---- customers ---------------------------------------------------------------------------
    def plan_customers(self, n_charges: int) -> None:
        n = max(5, n_charges // 4)
        rng = self.rng
        times = []
        for i in range(n):
            if i < n * 2 // 5:  # customers who signed up before the window (a week at most: a
                # longer lead would make every demo backfill span months of empty hourly partitions)
                times.append(self.start - rng.randrange(DAY, 7 * DAY))
            else:
                times.append(self.start + rng.randrange(0, max(1, self.days * DAY - 3600)))
        times.sort()
        for t in times:
            cur = rng.choices(self.cur_names, self.cur_weights)[0]
            cid = self.ids.new("cus")
            self.customers.append((t, cid, self.country[cur]))
            self.customer_created.append(t)
            if t < self.start:
                self.create_customer(t, cid, self.country[cur])
            else:
                self.schedule(t, "customer", cid, self.country[cur])

    def create_customer(self, at: int, cid: str, country: str) -> None:
        rng = self.rng
        if rng.random() < 0.3:
            name = f"{rng.choice(COMPANIES)} {SUFFIX[country]}"
            email = f"billing@{name.split()[0].lower()}{rng.randrange(100)}.example"
        else:
            first, last = rng.choice(FIRST), rng.choice(LAST)
            name = f"{first} {last}"
            email = f"{first.lower()}.{last.lower().replace('-', '')}{rng.randrange(1000)}@example.com"
        city, region, postal = rng.choice(PLACES[country])
        address = {
            "city": city,
            "country": country,
            "line1": f"{rng.randrange(1, 999)} {rng.choice(STREETS)}",
            "line2": None if rng.random() < 0.7 else f"Suite {rng.randrange(1, 50)}",
            "postal_code": postal,
            "state": region,
        }
        obj: dict[str, Any] = {"id": cid, "address": address, "created": at, "email": email, "name": name}
        if rng.random() < 0.4:
            obj["phone"] = f"+1555{rng.randrange(1000000, 9999999)}"
        if rng.random() < 0.2:
            obj["metadata"] = {"crm_id": f"CRM-{rng.randrange(10000, 99999)}"}
        self.state.add("customers", obj, bulk=True)
        self.emit("customer.created", "customers", cid, at)

    def pick_customer(self, at: int) -> str | None:
        from bisect import bisect_right

        n = bisect_right(self.customer_created, at)
        if n == 0 or self.rng.random() < 0.08:
            return None  # guest checkout
        return self.customers[self.rng.randrange(n)][1]

    # ---- charges -----------------------------------------------------------------------------
    def charge(self, at: int) -> None:
        rng, state = self.rng, self.state
        currency = rng.choices(self.cur_names, self.cur_weights)[0]
        amount = self.amount(currency)
        customer = self.pick_customer(at - 3600)
        with_invoice = customer is not None and rng.random() < 0.10
        with_pi = with_invoice or rng.random() < 0.5
        charge_id = self.ids.new("ch")
        country = self.country[currency]
        card = CARD_DETAILS[rng.choice(CARD_BY_COUNTRY[country])]
        settle_currency, settle_amount, rate = currency, amount, None
        if currency == "eur" and rng.random() < EUR_SETTLED_IN_USD:
            settle_currency, settle_amount, rate = "usd", int(round(amount * USD_PER_EUR)), USD_PER_EUR
        fee = ops.processing_fee(settle_amount, settle_currency)
        bt = ops.new_balance_transaction(
            state,
            self.ids,
            amount=settle_amount,
            fee=fee,
            fee_details=[ops.fee_detail(fee, settle_currency, "Stripe processing fees")],
            currency=settle_currency,
            exchange_rate=rate,
            created=at,
            available_on=ops.day_start(at) + 2 * DAY,
            type="charge",
            category="charge",
            source=charge_id,
            bulk=True,
        )
        self.order_no += 1
        charge: dict[str, Any] = {
            "id": charge_id,
            "amount": amount,
            "amount_captured": amount,
            "balance_transaction": bt,
            "created": at,
            "currency": currency,
            "description": f"Order {self.order_no}",
        }
        if customer is not None:
            cust = state.get("customers", customer)
            assert cust is not None
            charge["customer"] = customer
            charge["billing_details"] = {
                "address": cust["address"],
                "email": cust["email"],
                "name": cust["name"],
                "phone": cust.get("phone"),
            }
            charge["receipt_email"] = cust["email"]
        if card is not CARD_DETAILS[0]:
            charge["payment_method_details"] = card
        outcome = OUTCOMES[min(3, int(rng.random() ** 3 * 4))]
        if outcome is not OUTCOMES[0]:
            charge["outcome"] = outcome
        tax_bp = TAX_BP[currency]
        invoice_id = pi_id = None
        if with_invoice:
            invoice_id = self.ids.new("in")
            charge["invoice"] = invoice_id
            charge["description"] = "Payment for Invoice"
        elif tax_bp and rng.random() < 0.35:
            # Tax-inclusive price: the tax part of the amount, in minor units, as a string.
            tax = amount - (amount * 10000 + (10000 + tax_bp) // 2) // (10000 + tax_bp)
            charge["metadata"] = {"tax_amount": str(tax), "order_id": str(self.order_no)}
        if with_pi:
            pi_id = self.ids.new("pi")
            charge["payment_intent"] = pi_id
        if invoice_id is not None:
            self.invoice(invoice_id, at, amount, currency, customer, charge_id, pi_id, tax_bp)
        if pi_id is not None:
            self.payment_intent(pi_id, at, amount, currency, customer, invoice_id, charge)
        state.add("charges", charge, bulk=True)
        self.emit("charge.succeeded", "charges", charge_id, at)
        if pi_id is not None:
            prev = state.update(
                "payment_intents",
                pi_id,
                {"amount_received": amount, "latest_charge": charge_id, "status": "succeeded"},
            )
            self.emit("payment_intent.succeeded", "payment_intents", pi_id, at, prev)
        if invoice_id is not None:
            prev = state.update(
                "invoices",
                invoice_id,
                {
                    "amount_paid": amount,
                    "amount_remaining": 0,
                    "attempt_count": 1,
                    "attempted": True,
                    "charge": charge_id,
                    "paid": True,
                    "status": "paid",
                    "status_transitions": {**state.field("invoices", invoice_id, "status_transitions"), "paid_at": at},
                },
            )
            self.emit("invoice.paid", "invoices", invoice_id, at, prev)
            self.emit("invoice.payment_succeeded", "invoices", invoice_id, at)
        self.follow_ups(charge_id, at, amount, currency)

    def payment_intent(
        self,
        pi_id: str,
        at: int,
        amount: int,
        currency: str,
        customer: str | None,
        invoice_id: str | None,
        charge: dict[str, Any],
    ) -> None:
        created = at - 5
        pi: dict[str, Any] = {
            "id": pi_id,
            "amount": amount,
            "created": created,
            "currency": currency,
            "customer": customer,
            "description": charge["description"],
            "invoice": invoice_id,
            "payment_method": "pm_" + charge["id"].partition("_")[2],
            "receipt_email": charge.get("receipt_email"),
            "status": "requires_payment_method",
        }
        if "metadata" in charge:
            pi["metadata"] = charge["metadata"]
        self.state.add("payment_intents", pi, bulk=True)
        self.emit("payment_intent.created", "payment_intents", pi_id, created)

    def invoice(
        self,
        invoice_id: str,
        at: int,
        amount: int,
        currency: str,
        customer: str | None,
        charge_id: str,
        pi_id: str | None,
        tax_bp: int,
    ) -> None:
        rng, state = self.rng, self.state
        created = at - 3600
        # Net of tax and discount; the tax on it; a 10 % coupon on some; tax-inclusive prices on some.
        net = (amount * 10000 + (10000 + tax_bp) // 2) // (10000 + tax_bp)
        tax = amount - net
        inclusive = tax_bp > 0 and rng.random() < 0.3
        discount = net // 9 if rng.random() < 0.3 else 0  # 10 % of the pre-discount net
        discount_id = self.ids.new("di") if discount else None
        # Line amounts are before discounts; tax-inclusive ones include their tax.
        subtotal = net + discount + (tax if inclusive else 0)
        n_lines = rng.choice([1, 1, 2, 3])
        # Split the subtotal and tax over the lines; the last line takes the rounding remainder.
        shares = sorted(rng.sample(range(1, 100), n_lines - 1)) if n_lines > 1 else []
        cuts = [0, *shares, 100]
        lines, used_amt, used_tax, used_disc = [], 0, 0, 0
        for i in range(n_lines):
            if i == n_lines - 1:
                line_amt, line_tax, line_disc = subtotal - used_amt, tax - used_tax, discount - used_disc
            else:
                line_amt = subtotal * (cuts[i + 1] - cuts[i]) // 100
                line_tax = tax * (cuts[i + 1] - cuts[i]) // 100
                line_disc = discount * (cuts[i + 1] - cuts[i]) // 100
            used_amt += line_amt
            used_tax += line_tax
            used_disc += line_disc
            lines.append(
                {
                    "id": self.ids.new("il"),
                    "object": "line_item",
                    "amount": line_amt,
                    "amount_excluding_tax": line_amt - (line_tax if inclusive else 0),
                    "currency": currency,
                    "description": rng.choice(PRODUCTS),
                    "discount_amounts": [{"amount": line_disc, "discount": discount_id}] if discount else [],
                    "discountable": True,
                    "discounts": [],
                    "invoice_item": self.ids.new("ii"),
                    "livemode": False,
                    "metadata": {},
                    "period": {"end": created, "start": created},
                    "price": None,
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "quantity": 1,
                    "subscription": None,
                    "tax_amounts": [
                        {
                            "amount": line_tax,
                            "inclusive": inclusive,
                            "tax_rate": self.tax_rates[currency],
                            "taxability_reason": "standard_rated" if tax_bp else "not_subject_to_tax",
                            "taxable_amount": line_amt - line_disc - (line_tax if inclusive else 0),
                        }
                    ],
                    "tax_rates": [],
                    "type": "invoiceitem",
                    "unit_amount_excluding_tax": str(line_amt - (line_tax if inclusive else 0)),
                }
            )
        cust = state.get("customers", customer) if customer else None
        self.invoice_no += 1
        inv: dict[str, Any] = {
            "id": invoice_id,
            "amount_due": amount,
            "amount_remaining": amount,
            "created": created,
            "currency": currency,
            "customer": customer,
            "customer_address": cust["address"] if cust else None,
            "customer_email": cust["email"] if cust else None,
            "customer_name": cust["name"] if cust else None,
            "effective_at": created,
            "lines": {
                "object": "list",
                "data": lines,
                "has_more": False,
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
            "payment_intent": pi_id,
            "period_end": created,
            "period_start": created,
            "subtotal": subtotal,
            "subtotal_excluding_tax": subtotal - (tax if inclusive else 0),
            "tax": tax,
            "total": amount,
            "total_excluding_tax": amount - tax,
            "total_tax_amounts": [
                {
                    "amount": tax,
                    "inclusive": inclusive,
                    "tax_rate": self.tax_rates[currency],
                    "taxability_reason": "standard_rated" if tax_bp else "not_subject_to_tax",
                    "taxable_amount": net,
                }
            ],
        }
        if discount:
            inv["discounts"] = [discount_id]
            inv["total_discount_amounts"] = [{"amount": discount, "discount": discount_id}]
        state.add("invoices", inv, bulk=True)
        self.emit("invoice.created", "invoices", invoice_id, created)
        finalized = created + 60
        prev = state.update(
            "invoices",
            invoice_id,
            {
                "number": f"EMU-{self.invoice_no:06d}",
                "status": "open",
                "status_transitions": {
                    "finalized_at": finalized,
                    "marked_uncollectible_at": None,
                    "paid_at": None,
                    "voided_at": None,
                },
                "webhooks_delivered_at": finalized,
            },
        )
        self.emit("invoice.finalized", "invoices", invoice_id, finalized, prev)

    def follow_ups(self, charge_id: str, at: int, amount: int, currency: str) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.07:
            delay = rng.randrange(600, 20 * 3600) if rng.random() < 0.4 else rng.randrange(DAY, 10 * DAY)
            _median, step = AMOUNTS[currency]
            if rng.random() < 0.7 or amount <= step * 2:
                part = amount
            else:
                part = max(step, (amount * rng.randrange(10, 90) // 100) // step * step)
            reason = rng.choice(["requested_by_customer", "requested_by_customer", "duplicate", "fraudulent", None])
            self.schedule(at + delay, "refund", charge_id, part, reason, rng.random() < 0.12)
        elif r < 0.081:
            reason = rng.choice(["fraudulent", "fraudulent", "product_not_received", "unrecognized", "duplicate"])
            self.schedule(at + rng.randrange(2 * DAY, 12 * DAY), "dispute", charge_id, reason)

    # ---- the simulation ----------------------------------------------------------------------
    def run(self) -> None:
        rng = self.rng
        daily = []
        for d in range(self.days):
            weekday = datetime.fromtimestamp(self.start + d * DAY, UTC).weekday()
            factor = 0.75 if weekday >= 5 else 1.0
            daily.append(max(0, round(BASE_CHARGES_PER_DAY * self.volume * factor * rng.uniform(0.85, 1.15))))
        self.plan_customers(sum(daily))
        for d in range(self.days):
            day = self.start + d * DAY
            if d > 0:
                self.payouts(day)
            self.balance_activity(day, d)
            hours = rng.choices(range(24), HOUR_WEIGHTS, k=daily[d])
            for h in hours:
                self.schedule(day + h * 3600 + rng.randrange(3600), "charge")
            self.drain(day + DAY)
        self.payouts(self.end)
        self.drain(self.end + 1)

    def drain(self, until: int) -> None:
        while self.heap and self.heap[0][0] < until:
            at, _seq, action, args = heapq.heappop(self.heap)
            getattr(self, "do_" + action)(at, *args)

    def do_charge(self, at: int) -> None:
        self.charge(at)

    def do_customer(self, at: int, cid: str, country: str) -> None:
        self.create_customer(at, cid, country)

    def do_refund(self, at: int, charge_id: str, amount: int, reason: str | None, fee_return: bool) -> None:
        state = self.state
        if state.field("charges", charge_id, "disputed"):
            return
        remaining = state.field("charges", charge_id, "amount") - state.field("charges", charge_id, "amount_refunded")
        if remaining <= 0:
            return
        self._bulk_refund(charge_id, min(amount, remaining), at, reason, fee_return)

    def _bulk_refund(self, charge_id: str, amount: int, at: int, reason: str | None, fee_return: bool) -> None:
        refund_id = ops.refund_charge(
            self.state, charge_id, amount, at=at, reason=reason, fee_return=fee_return, ids=self.ids, bulk=True
        )
        if self.rng.random() < 0.06:  # the card was closed: the refund comes back a few days later
            self.schedule(at + self.rng.randrange(2 * DAY, 5 * DAY), "refund_failure", refund_id)

    def do_refund_failure(self, at: int, refund_id: str) -> None:
        ops.fail_refund(self.state, refund_id, at=at, ids=self.ids, bulk=True)

    def do_dispute(self, at: int, charge_id: str, reason: str) -> None:
        state = self.state
        if state.field("charges", charge_id, "refunded") or state.field("charges", charge_id, "amount_refunded"):
            return
        dispute_id = ops.open_dispute(state, charge_id, at=at, reason=reason, ids=self.ids, bulk=True)
        rng = self.rng
        if rng.random() < 0.65:
            review = at + rng.randrange(DAY, 6 * DAY)
            self.schedule(review, "evidence", dispute_id)
            self.schedule(review + rng.randrange(4 * DAY, 16 * DAY), "close", dispute_id, rng.random() < 0.45)
        else:
            self.schedule(ops.day_start(at) + 9 * DAY + rng.randrange(3600, 6 * 3600), "close", dispute_id, False)

    def do_evidence(self, at: int, dispute_id: str) -> None:
        ops.submit_dispute_evidence(self.state, dispute_id, at=at, ids=self.ids, bulk=True)

    def do_close(self, at: int, dispute_id: str, won: bool) -> None:
        # Some networks keep the dispute fee even when the dispute is won.
        keep_fee = won and self.rng.random() < 0.4
        ops.close_dispute(
            self.state, dispute_id, "won" if won else "lost", at=at, ids=self.ids, bulk=True, return_fee=not keep_fee
        )

    def payouts(self, at: int) -> None:
        manual = frozenset({MANUAL_CURRENCY}) if at >= self.manual_from else frozenset()
        created = ops.run_automatic_payouts(self.state, at=at, ids=self.ids, bulk=True, manual_currencies=manual)
        for payout_id in created:
            arrival = self.state.field("payouts", payout_id, "arrival_date")
            self.schedule(arrival, "paid", payout_id)
            currency = self.state.field("payouts", payout_id, "currency")
            # One payout bounces a day after it arrived, early enough that the credited amount is
            # swept into a later payout inside the window.
            if not self.fail_chosen and currency == "usd" and at >= self.fail_after and arrival + 2 * DAY <= self.end:
                self.fail_chosen = True
                self.schedule(arrival + DAY + 9 * 3600, "fail", payout_id)
            # Another never reaches the bank: it fails in transit and is swept again the next day.
            elif (
                not self.transit_fail_chosen
                and currency == "usd"
                and at >= self.transit_fail_after
                and arrival + DAY <= self.end
            ):
                self.transit_fail_chosen = True
                self.schedule(arrival - 12 * 3600, "fail", payout_id)
        days_in = (at - self.manual_from) // DAY
        if manual and days_in % MANUAL_PAYOUT_EVERY_DAYS == 0:
            payout_id = ops.create_manual_payout(
                self.state, MANUAL_CURRENCY, at=at + 10 * 3600, ids=self.ids, bulk=True
            )
            if payout_id is not None:
                self.schedule(at + 10 * 3600 + 3600, "in_transit", payout_id)
                self.schedule(self.state.field("payouts", payout_id, "arrival_date"), "paid", payout_id)

    def do_in_transit(self, at: int, payout_id: str) -> None:
        prev = self.state.update("payouts", payout_id, {"status": "in_transit"})
        self.emit("payout.updated", "payouts", payout_id, at, prev)

    def do_paid(self, at: int, payout_id: str) -> None:
        if self.state.field("payouts", payout_id, "status") in ("pending", "in_transit"):
            ops.mark_payout_paid(self.state, payout_id, at=at, ids=self.ids, bulk=True)

    def balance_activity(self, day: int, d: int) -> None:
        """Money movements that are not payments, on fixed days of the window (USD unless said)."""

        def adj(currency: str, amount: int, type_: str, category: str, description: str, hour: int = 3) -> None:
            ops.balance_adjustment(
                self.state,
                currency,
                amount,
                type=type_,
                category=category,
                at=day + hour * 3600,
                description=description,
                ids=self.ids,
                bulk=True,
            )

        if d % 7 == 3:  # Stripe's billing fees, with the VAT it charges on them
            adj("usd", -2500, "stripe_fee", "fee", "Billing - Usage Fee")
            adj("usd", -500, "tax_fee", "tax", "Stripe fee tax (VAT)")
        if d == 2:
            adj("usd", 1000, "adjustment", "fee", "Stripe fee credit")
        if d == 4:
            adj(
                "usd",
                -10000,
                "payout_minimum_balance_hold",
                "payout_minimum_balance_hold",
                "Payout minimum balance hold",
            )
        if d == 11:
            adj(
                "usd",
                10000,
                "payout_minimum_balance_release",
                "payout_minimum_balance_release",
                "Payout minimum balance release",
            )
        if d == 6:
            adj("eur", -5000, "reserve_transaction", "risk_reserved_funds", "Reserve held for risk")
        if d == 20:
            adj("eur", 5000, "reserve_transaction", "risk_reserved_funds", "Reserve released")
        if d == 8:
            adj("usd", 20000, "topup", "topup", "Top-up from bank account")
        if d == max(1, self.days * 2 // 3):  # more than a day's takings: the balance goes negative
            adj("kwd", -300000, "adjustment", "other_adjustment", "Adjustment: card scheme assessment", hour=1)

    def do_fail(self, at: int, payout_id: str) -> None:
        ops.fail_payout(self.state, payout_id, code="account_closed", at=at, ids=self.ids, bulk=True)


def generate(
    state: EmulatorState, seed: int = 7, days: int = 30, volume: float = 1.0, end: int | None = None
) -> EmulatorState:
    """Fill `state` with `days` of history ending at `end` (default today 00:00 UTC).

    Deterministic for (seed, days, volume, end). volume 1.0 is about 110 charges a day (3-6k balance
    transactions over 30 days); counts scale linearly with it."""
    end = _default_end() if end is None else int(end)
    with state.lock:
        state.deliver_events = False
        state.event_floor = end - EVENT_RETENTION_S
        try:
            gen = _Gen(state, seed, days, volume, end)
            gen.run()
            state.finalize()
            ops.refresh_balance_statuses(state, end)
        finally:
            state.deliver_events = True
            state.event_floor = None
    return state


_GOLDEN_COLLECTIONS = (
    "customers",
    "charges",
    "refunds",
    "disputes",
    "balance_transactions",
    "payouts",
    "invoices",
    "payment_intents",
)


def load_golden(state: EmulatorState, path: str | Path) -> EmulatorState:
    """Serve the objects under the file's `stripe` key exactly as given (layout of
    payout_worked_example.json), with `balance_transactions_by_payout` as the `?payout=` membership."""
    data = json.loads(Path(path).read_text())
    stripe_data = data.get("stripe", data)
    with state.lock:
        for coll in _GOLDEN_COLLECTIONS:
            for obj in stripe_data.get(coll, []):
                state.add(coll, obj, raw=True, bulk=True)
        for obj in stripe_data.get("events", []):
            state.add("events", obj, raw=True, bulk=True)
        state.finalize()
        for payout_id, members in stripe_data.get("balance_transactions_by_payout", {}).items():
            for bt in members:
                state.set_extern("balance_transactions", "payout", bt, payout_id)
    return state
