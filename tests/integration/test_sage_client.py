"""The Sage Pro client against the real sandbox (faults included); MockTransport only for network errors."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from stripe_sage_pipeline.sage import (
    CredentialsError,
    NotFound,
    RecordInvalid,
    SageClient,
    TransientError,
    idempotency_key,
)
from stripe_sage_pipeline.sage.keys import MAX_KEY_LENGTH
from stripe_sage_sandboxes.sage import SageSandboxConfig, SageSandboxServer

PASSWORD = "pipeline-Pa55word!"
USERS = {
    "pipeline": (PASSWORD, {"read", "post"}),
    "viewer": ("viewer-secret", {"read"}),
    "admin": ("admin-secret", {"read", "post", "admin"}),
}


def _server(data_dir: Path, **overrides: Any) -> SageSandboxServer:
    cfg: dict[str, Any] = dict(data_dir=data_dir, users=USERS, rate_per_minute=100_000, max_concurrent=16)
    cfg.update(overrides)
    return SageSandboxServer(SageSandboxConfig(**cfg)).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SageSandboxServer]:
    srv = _server(tmp_path_factory.mktemp("sage-client"), faults_enabled=True)
    yield srv
    srv.stop()


def _client(srv: SageSandboxServer, **kw: Any) -> SageClient:
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_cap_s", 0.2)
    return SageClient(srv.base_url, kw.pop("user", "pipeline"), kw.pop("password", PASSWORD), **kw)


@pytest.fixture
def client(server: SageSandboxServer) -> Iterator[SageClient]:
    with _client(server) as c:
        yield c


def _je(amount: str, ref: str, day: str = "2026-07-16") -> dict[str, Any]:
    return {
        "journal": "ST",
        "posting_date": day,
        "description": f"Stripe {ref}",
        "lines": [
            {"glacnt": "1150", "debit": amount, "memo": ref},
            {"glacnt": "4000", "credit": amount},
        ],
    }


def _posts_seen(srv: SageSandboxServer, key: str) -> list[Any]:
    return [e for e in srv.request_log if e.method == "POST" and e.idempotency_key == key]


# -- keys ---------------------------------------------------------------------------------------------


def test_idempotency_keys_are_deterministic_and_bounded() -> None:
    k = idempotency_key("journal-entries", "txn_1ABC")
    assert k == idempotency_key("journal-entries", "txn_1ABC")
    assert k.startswith("sp-journal-entries-txn_1ABC-") and len(k.rsplit("-", 1)[1]) == 8
    assert k != idempotency_key("journal-entries", "txn_1ABC", "v2")
    assert k != idempotency_key("invoices", "txn_1ABC")
    long = idempotency_key("journal-entries", "x" * 400, "h")
    assert len(long) <= MAX_KEY_LENGTH and long != idempotency_key("journal-entries", "x" * 401, "h")
    odd = idempotency_key("customers", "cus 1/é")
    assert odd.isascii() and " " not in odd


# -- the fault run: nothing lost, nothing twice -----------------------------------------------------------


def test_200_entries_under_faults_post_exactly_once(tmp_path: Path) -> None:
    srv = _server(
        tmp_path,
        seed=7,
        fault_429_rate=0.10,
        fault_5xx_rate=0.10,
        fault_commit_504_rate=0.05,
        fault_retry_after_s=1,
    )
    try:
        with _client(srv, max_retries=10, max_concurrency=12) as c:

            def post(i: int) -> str:
                ref = f"txn_fault{i:04d}"
                key = idempotency_key("journal-entries", ref)
                return c.post("journal-entries", _je(f"{i + 1}.00", ref), idempotency_key=key, external_ref=ref).status

            with ThreadPoolExecutor(max_workers=12) as pool:
                statuses = Counter(pool.map(post, range(200)))
            assert sum(statuses.values()) == 200
            assert statuses["replayed"] + statuses["already_exists"] > 0, statuses  # commit-504s were hit
            assert c.get("/journal-entries", {"$top": 1})["count"] == 200
            refs = [je["external_ref"] for je in c.list_all("/journal-entries", {"$top": 50})]
            assert len(refs) == len(set(refs)) == 200
            assert len(list(c.list_all("/gl-postings", {"glacnt": "1150"}))) == 200
        faults = Counter(e.fault for e in srv.request_log if e.fault)
        assert faults["429"] and faults["503"] and faults["commit-504"], faults
    finally:
        srv.stop()


def test_retry_after_is_honoured(server: SageSandboxServer, client: SageClient) -> None:
    ref = "txn_retry_after"
    key = idempotency_key("journal-entries", ref)
    server.queue_faults("429")
    result = client.post("journal-entries", _je("1.00", ref), idempotency_key=key, external_ref=ref)
    assert result.status == "created"
    first, second = _posts_seen(server, key)
    assert first.status == 429 and second.status == 201
    assert second.at - first.at >= 1.0  # the sandbox said Retry-After: 1


def test_commit_then_504_lands_on_the_replay(server: SageSandboxServer, client: SageClient) -> None:
    ref = "txn_commit504"
    key = idempotency_key("journal-entries", ref)
    server.queue_faults("commit-504")
    result = client.post("journal-entries", _je("2.00", ref), idempotency_key=key, external_ref=ref)
    assert result.status == "replayed"
    assert [e.status for e in _posts_seen(server, key)] == [504, 201]
    assert client.get("/journal-entries", {"external_ref": ref})["count"] == 1


def test_request_in_progress_is_waited_for(server: SageSandboxServer) -> None:
    ref = "txn_inprogress"
    key = idempotency_key("journal-entries", ref)
    out: dict[str, Any] = {}
    server.queue_faults("latency=700")
    fast_cfg = {"backoff_base_s": 0.1, "backoff_cap_s": 0.4, "max_retries": 12}
    with _client(server) as slow, _client(server, **fast_cfg) as fast:
        t = threading.Thread(
            target=lambda: out.setdefault(
                "slow", slow.post("journal-entries", _je("3.00", ref), idempotency_key=key, external_ref=ref)
            )
        )
        t.start()
        # The slow request is executing (registered under its key, the latency fault taken), not only logged:
        # on a busy machine the second one could otherwise overtake it and take the latency itself.
        deadline = time.monotonic() + 30
        while key not in server.keys_in_flight():
            assert time.monotonic() < deadline, "the slow request never started executing"
            time.sleep(0.005)
        out["fast"] = fast.post("journal-entries", _je("3.00", ref), idempotency_key=key, external_ref=ref)
        t.join()
    assert out["slow"].status == "created" and out["fast"].status == "replayed"
    assert out["fast"].sage_id == out["slow"].sage_id
    assert 409 in [e.status for e in _posts_seen(server, key)]


def test_transient_errors_exhaust_into_transient_error(server: SageSandboxServer) -> None:
    server.queue_faults("503", "503", "503")
    with _client(server, max_retries=2) as c, pytest.raises(TransientError) as exc:
        c.get("/accounts/1010")
    assert exc.value.status == 503 and exc.value.code == "ServiceUnavailable"


# -- error mapping ----------------------------------------------------------------------------------------


def test_credentials_error_is_not_retried(server: SageSandboxServer) -> None:
    before = len(server.request_log)
    with _client(server, password="not-the-password") as c, pytest.raises(CredentialsError) as exc:
        c.post("journal-entries", _je("1.00", "txn_cred"), idempotency_key="k-cred", external_ref="txn_cred")
    assert len(server.request_log) == before + 1
    assert exc.value.status == 401
    message = str(exc.value)
    assert "SAGEPRO_USER" in message and "SAGEPRO_PASSWORD" in message and "not-the-password" not in message
    with _client(server, user="viewer", password="viewer-secret") as viewer:
        with pytest.raises(CredentialsError) as exc:
            viewer.post("journal-entries", _je("1.00", "txn_cred2"), idempotency_key="k-c2", external_ref="txn_cred2")
        assert exc.value.status == 403
        assert viewer.get("/accounts/1010")["glacnt"] == "1010"


def test_record_invalid_carries_code_details_and_request_id(client: SageClient) -> None:
    body = _je("10.00", "txn_unbalanced")
    body["lines"][1]["credit"] = "9.99"
    with pytest.raises(RecordInvalid) as exc:
        client.post("journal-entries", body, idempotency_key="k-unbal", external_ref="txn_unbalanced")
    err = exc.value
    assert err.status == 422 and err.code == "RecordInvalid"
    assert err.details[0]["code"] == "Unbalanced" and err.details[0]["difference"] == "0.01"
    assert err.request_id and err.request_id.startswith("req_")


def test_duplicate_external_ref_returns_already_exists(client: SageClient) -> None:
    ref = "txn_dupref"
    first = client.post("journal-entries", _je("4.00", ref), idempotency_key="k-dup-1", external_ref=ref)
    assert first.status == "created" and first.sage_id == first.record["batch_no"]
    # A crashed run that lost its key (or a second worker) still cannot post twice.
    second = client.post("journal-entries", _je("4.00", ref), idempotency_key="k-dup-2", external_ref=ref)
    assert second.status == "already_exists" and second.sage_id == first.sage_id
    assert second.record["external_ref"] == ref
    assert client.find_by_external_ref("journal-entries", ref)["batch_no"] == first.sage_id
    assert client.find_by_external_ref("journal-entries", "txn_never") is None


def test_customers_invoices_receipts_through_the_client(client: SageClient) -> None:
    with pytest.raises(NotFound):
        client.patch_customer("CLI-1", {"city": "Paris"}, idempotency_key="k-patch-0")
    cust = client.post(
        "customers",
        {"custno": "CLI-1", "company": "Client One", "currency": "usd"},
        idempotency_key=idempotency_key("customers", "cus_cli1"),
        external_ref="cus_cli1",
    )
    assert cust.status == "created" and cust.sage_id == "CLI-1"
    patched = client.patch_customer("CLI-1", {"city": "Paris"}, idempotency_key="k-patch-1")
    assert patched["city"] == "Paris"
    inv = client.post(
        "invoices",
        {
            "custno": "CLI-1",
            "invdate": "2026-07-01",
            "lines": [{"description": "Order", "unit_price": "25.00", "revenue_glacnt": "4000"}],
        },
        idempotency_key="k-inv-1",
        external_ref="ch_cli1",
    )
    assert inv.sage_id.startswith("IN") and inv.record["total"] == "25.00"
    receipt = client.post(
        "cash-receipts",
        {
            "custno": "CLI-1",
            "receipt_date": "2026-07-02",
            "amount": "25.00",
            "fee_amount": "1.03",
            "deposit_glacnt": "1150",
            "fee_glacnt": "6100",
            "applications": [{"invno": inv.sage_id, "amount": "25.00"}],
        },
        idempotency_key="k-cr-1",
        external_ref="txn_cli1",
    )
    assert receipt.record["net_amount"] == "23.97"
    again = client.post("cash-receipts", {}, idempotency_key="k-cr-2", external_ref="txn_cli1")
    assert again.status == "already_exists" and again.sage_id == receipt.sage_id


def test_reverse_twice_and_balance(client: SageClient) -> None:
    day = "2026-03-03"
    je = client.post("journal-entries", _je("60.00", "txn_rev", day), idempotency_key="k-rev-0", external_ref="txn_rev")
    rev = client.reverse_journal_entry(je.sage_id, idempotency_key="k-rev-1")
    assert rev.status == "created" and rev.record["reverses"] == je.sage_id
    assert client.reverse_journal_entry(je.sage_id, idempotency_key="k-rev-1").status == "replayed"
    other = client.reverse_journal_entry(je.sage_id, idempotency_key="k-rev-2")
    assert other.status == "already_exists" and other.sage_id == rev.sage_id
    bal = client.account_balance("1150", day, day)
    assert bal["balances"]["USD"]["net"] == "0.00"


def test_list_all_follows_pages(client: SageClient) -> None:
    codes = [a["glacnt"] for a in client.list_all("/accounts", {"$top": 4})]
    assert len(codes) == len(set(codes)) == client.get("/accounts")["count"]


# -- network errors (MockTransport at the HTTP boundary) --------------------------------------------------


def test_connect_error_then_success_keeps_the_key() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("connection refused", request=request)
        if len(calls) == 2:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(201, json={"batch_no": "GJ000042", "external_ref": "txn_net"})

    slept: list[float] = []
    c = SageClient(
        "http://sage.invalid/sagepro/v1/PRO01",
        "pipeline",
        PASSWORD,
        transport=httpx.MockTransport(handler),
        sleep=slept.append,
        backoff_base_s=0.5,
    )
    result = c.post("journal-entries", _je("1.00", "txn_net"), idempotency_key="k-net", external_ref="txn_net")
    assert result.status == "created" and result.sage_id == "GJ000042"
    assert [r.headers["idempotency-key"] for r in calls] == ["k-net"] * 3
    assert len(slept) == 2 and all(0 <= s <= 1.0 for s in slept)
    assert str(calls[0].url) == "http://sage.invalid/sagepro/v1/PRO01/journal-entries"


def test_retry_after_header_sets_the_minimum_delay() -> None:
    responses = iter(
        [
            httpx.Response(503, headers={"Retry-After": "7"}, json={"error": {"code": "ServiceUnavailable"}}),
            httpx.Response(200, json={"glacnt": "1010"}),
        ]
    )
    slept: list[float] = []
    c = SageClient(
        "http://sage.invalid/sagepro/v1/PRO01",
        "pipeline",
        PASSWORD,
        transport=httpx.MockTransport(lambda request: next(responses)),
        sleep=slept.append,
    )
    assert c.get("/accounts/1010") == {"glacnt": "1010"}
    assert slept == [7.0]


# -- secrets ----------------------------------------------------------------------------------------------


def test_logs_and_repr_never_show_credentials(server: SageSandboxServer, caplog: pytest.LogCaptureFixture) -> None:
    secrets = {
        PASSWORD,
        base64.b64encode(f"pipeline:{PASSWORD}".encode()).decode(),
        base64.b64encode(PASSWORD.encode()).decode(),
    }
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "stripe_sage_pipeline"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    with _client(server) as c:
        server.queue_faults("503")
        c.post("journal-entries", _je("5.00", "txn_logs"), idempotency_key="k-logs", external_ref="txn_logs")
        c.post("journal-entries", _je("5.00", "txn_logs"), idempotency_key="k-logs-2", external_ref="txn_logs")
        with pytest.raises(RecordInvalid):
            c.post("customers", {"custno": "lower"}, idempotency_key="k-logs-3", external_ref="cus_logs")
        shown = repr(c)
    with _client(server, password=PASSWORD + "x") as bad, pytest.raises(CredentialsError) as exc:
        bad.get("/accounts")
    text = caplog.text + shown + str(exc.value) + repr(exc.value)
    assert "HTTP Request" in caplog.text  # httpx did log at INFO, so the check is meaningful
    for secret in secrets | {PASSWORD + "x"}:
        assert secret not in text
    assert "password='***'" in shown and "pipeline" in shown


def test_client_limits_keep_the_sandbox_from_answering_429(tmp_path: Path) -> None:
    srv = _server(tmp_path, rate_per_minute=240, max_concurrent=2, latency_ms=30)
    try:
        # Two clients of one process with the same settings share one bucket and one semaphore.
        clients = [_client(srv, rate_per_minute=240, max_concurrency=2, max_retries=0) for _ in range(2)]
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda i: clients[i % 2].get("/accounts/1010"), range(24)))
        elapsed = time.monotonic() - started
        for c in clients:
            c.close()
        statuses = Counter(e.status for e in srv.request_log)
        assert statuses == {200: 24}, statuses
        assert elapsed >= 0.9  # 20 tokens of burst, then 4 per second
    finally:
        srv.stop()
