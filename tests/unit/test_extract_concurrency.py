"""Sizing of in-flight Stripe requests and of a window's chunks (pure rules, no servers)."""

from __future__ import annotations

import pytest

from stripe_sage_pipeline.extract import concurrency
from stripe_sage_pipeline.extract.extract import split_expanded


@pytest.mark.parametrize(
    ("rate", "latency", "expected"),
    [
        (100, 0.3, 40),  # ⌈100·0.3·1.25⌉ + 2: the case, enough to keep 100 req/s busy at 300 ms
        (25, 0.3, 12),  # ⌈25·0.3·1.25⌉ + 2
        (100, 0.005, 3),  # a local emulator: a few are plenty
        (90, 1.0, 64),  # ⌈112.5⌉ + 2 would be 115: capped
    ],
)
def test_in_flight_follows_littles_law_with_headroom(rate, latency, expected):
    assert concurrency.in_flight(rate, latency) == expected


def test_in_flight_keeps_the_limit_busy_and_grows_with_latency():
    for rate in (5, 25, 100):
        sizes = [concurrency.in_flight(rate, w) for w in (0.05, 0.1, 0.3, 0.5)]
        assert sizes == sorted(sizes)
        for w, n in zip((0.05, 0.1, 0.3, 0.5), sizes, strict=True):
            assert n >= rate * w  # Little's law: fewer would leave the limit idle


def test_an_explicit_worker_setting_wins():
    assert concurrency.in_flight(100, 0.3, explicit=4) == 4
    assert concurrency.in_flight(None, None, explicit=3) == 3


def test_no_rate_limit_and_no_latency_yet():
    assert concurrency.in_flight(None, 0.3) == concurrency.UNLIMITED_IN_FLIGHT
    assert concurrency.in_flight(0, 0.3) == concurrency.UNLIMITED_IN_FLIGHT
    # Before any answer was timed, a typical Stripe page latency stands in.
    assert concurrency.in_flight(100, None) == concurrency.in_flight(100, concurrency.DEFAULT_LATENCY_S)


def test_seconds_per_page_adds_the_workers_time_to_stripes():
    assert concurrency.seconds_per_page(0.3, 0.05) == pytest.approx(0.35)
    assert concurrency.seconds_per_page(None, None) == pytest.approx(
        concurrency.DEFAULT_LATENCY_S + concurrency.DEFAULT_PROCESSING_S
    )
    # A local emulator answering in 5 ms: the page's processing dominates, and sizes the pool.
    assert concurrency.in_flight(100, concurrency.seconds_per_page(0.005, 0.03)) == 7


def test_estimate_pages_from_the_first_page():
    # A window that fits in its first page is one page.
    assert concurrency.estimate_pages(37, 1_000, 900, 0, has_more=False) == 1.0
    # 100 objects over the newest 1000 s of a 10,000 s window: ~9 more pages below.
    assert concurrency.estimate_pages(100, 10_000, 9_001, 0, has_more=True) == pytest.approx(1 + 9.001)
    # No objects at all.
    assert concurrency.estimate_pages(0, 0, 0, 0, has_more=False) == 1.0


def test_chunk_counts_share_the_slots_by_pages_and_keep_chunks_long():
    counts = concurrency.chunk_counts({"balance_transactions": 1000, "charges": 900, "disputes": 2, "refunds": 60}, 40)
    # 60 of 1962 pages: 2.4 of the 80 chunks, rounded down the ladder; 2 pages: one chunk.
    assert counts["disputes"] == 1 and counts["refunds"] == 2
    assert counts["balance_transactions"] == 32 and counts["charges"] == 32  # 40.8 and 36.7 of the 80
    assert sum(counts.values()) <= 2 * 40 + 4
    for table, pages in {"balance_transactions": 1000, "charges": 900, "refunds": 60}.items():
        assert pages / counts[table] >= 10  # a chunk's partly empty last page costs at most 5%


def test_chunk_counts_are_stable_for_slightly_more_data():
    a = concurrency.chunk_counts({"charges": 400, "balance_transactions": 420}, 12)
    b = concurrency.chunk_counts({"charges": 410, "balance_transactions": 430}, 12)
    assert a == b


def test_a_chunk_is_cut_into_smaller_parts_once_the_running_chunks_leave_the_limit_idle():
    # 100 req/s at 0.32 s a page: 32 chunks (one request in flight each) keep the limit busy
    assert concurrency.piece_pages(40, 100, 0.32) == concurrency.MIN_PIECE_PAGES == 1.0
    assert concurrency.piece_pages(32, 100, 0.32) == 1.0
    assert concurrency.piece_pages(31, 100, 0.32) == concurrency.TAIL_PIECE_PAGES == 0.5
    assert concurrency.piece_pages(3, 25, 0.32) == 0.5  # 25 req/s: 8 chunks fill it
    assert concurrency.piece_pages(3, None, 0.32) == 1.0  # no limit to keep busy


def test_split_expanded_gives_back_the_listed_object_and_the_balance_transactions_it_carried():
    bt = {"id": "txn_1", "object": "balance_transaction", "amount": 500}
    charge = {"id": "ch_1", "object": "charge", "balance_transaction": bt, "failure_balance_transaction": None}
    plain, carried, missing = split_expanded("charges", charge)
    assert plain == {
        "id": "ch_1",
        "object": "charge",
        "balance_transaction": "txn_1",
        "failure_balance_transaction": None,
    }
    assert carried == [bt] and missing == []
    assert charge["balance_transaction"] is bt  # the retrieved object is not changed in place
    # A field Stripe did not expand is an id to retrieve on its own.
    _, carried, missing = split_expanded("refunds", {"id": "re_1", "balance_transaction": "txn_2"})
    assert carried == [] and missing == ["txn_2"]
    # Disputes embed their balance transactions in full.
    dispute = {"id": "dp_1", "balance_transactions": [bt]}
    assert split_expanded("disputes", dispute) == (dispute, [bt], [])


def test_threads_starting_together_load_the_tls_bundle_once():
    """A window's first requests start on several threads at once: they share one TLS context (the CA
    bundle loaded once), not one each. A fresh interpreter, so that nothing made the context before."""
    import subprocess
    import sys

    probe = (
        "import threading, time, httpx\n"
        "made = []\n"
        "real = httpx.create_ssl_context\n"
        "def counted(*a, **k):\n"
        "    made.append(1); time.sleep(0.05); return real(*a, **k)\n"
        "httpx.create_ssl_context = counted\n"
        "from stripe_sage_pipeline.extract.client import StripeReader\n"
        "reader = StripeReader('sk_test_x', 'http://127.0.0.1:9')\n"
        "clients = []\n"
        "threads = [threading.Thread(target=lambda: clients.append(reader._http())) for _ in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print(len(made), len({id(c) for c in clients}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "8"]  # one bundle, one client per thread
