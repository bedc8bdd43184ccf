"""The customer master in both directions, over sockets: Stripe emulator ⇄ staging/dbt ⇄ Sage sandbox."""

from __future__ import annotations

import stripe
from load_helpers import client_for, ledger, sage_sandbox, write_mapping

from stripe_sage_pipeline.extract import extract
from stripe_sage_pipeline.extract.client import StripeReader
from stripe_sage_pipeline.extract.staging import ensure_schema
from stripe_sage_pipeline.load.customers import pull_sage_changes, push_customers, stripe_client
from stripe_sage_pipeline.runtime.db import libpq_url
from stripe_sage_pipeline.transform import build as transform
from stripe_sage_sandboxes.stripe_emulator import EmulatorConfig, EmulatorServer, EmulatorState, load_golden
from tests.extract_helpers import window_of

KEY = "sk_test_emulator"


def _extract(url: str, srv: EmulatorServer, state: EmulatorState, tables: tuple[str, ...]) -> None:
    import psycopg

    conninfo = libpq_url(url)
    with psycopg.connect(conninfo) as conn:
        ensure_schema(conn)
    reader = StripeReader(KEY, srv.url, rate_limit_per_s=None)
    start, end = window_of(state.summary())
    for table in tables:
        extract.extract_window(reader, conninfo, table, start, end)


def _updated_events(sdk: stripe.StripeClient, customer_id: str) -> list[dict]:
    events = sdk.v1.events.list(params={"type": "customer.updated", "limit": 100})
    return [e for e in events.auto_paging_iter() if e.data.object["id"] == customer_id]


def test_sage_email_change_reaches_stripe_once_and_never_bounces(fresh_db, golden_path, tmp_path, monkeypatch):
    mapping = write_mapping(tmp_path, monkeypatch, customer_sync={"sage_owns": ["email", "address"]})
    state = EmulatorState(EmulatorConfig(seed=1))
    load_golden(state, golden_path)
    emu = EmulatorServer(state, port=0).start()
    sdk = stripe_client(KEY, emu.url)
    try:
        _extract(
            fresh_db, emu, state, ("customers", "charges", "balance_transactions", "payouts", "refunds", "disputes")
        )
        transform.dbt_build(url=fresh_db)
        with sage_sandbox(tmp_path / "sage") as srv:
            client, _ = client_for(srv)
            first = push_customers(fresh_db, client, mapping=mapping)
            assert first.created == 2
            acme = client.find_by_external_ref("customers", "cus_GOLD0001")
            assert (acme["custno"], acme["email"], acme["city"]) == ("ACMEC-0001", "ap@acme.example", "San Francisco")

            # Our own creation is not a Sage-side edit: nothing goes to Stripe.
            pulled = pull_sage_changes(fresh_db, client, sdk, mapping)
            assert (pulled.updated, pulled.skipped_own_writes) == (0, 2)

            # A user changes the billing email in Sage.
            client.patch_customer("ACMEC-0001", {"email": "finance@acme.example"}, "user-edit-1")
            monkeypatch.setenv("SAGEPRO_BASE_URL", srv.base_url)
            monkeypatch.setenv("STRIPE_API_BASE", emu.url)
            monkeypatch.setenv("STRIPE_API_KEY", KEY)
            from stripe_sage_pipeline.definitions import defs

            assert defs().resolve_job_def("customer_sync_job").execute_in_process().success
            assert sdk.v1.customers.retrieve("cus_GOLD0001").email == "finance@acme.example"
            assert sdk.v1.customers.retrieve("cus_GOLD0002").email == "billing@globex.example"
            assert len(_updated_events(sdk, "cus_GOLD0001")) == 1
            assert _updated_events(sdk, "cus_GOLD0001")[0].data.previous_attributes["email"] == "ap@acme.example"

            # Again: nothing new in Sage, nothing sent.
            assert pull_sage_changes(fresh_db, client, sdk, mapping).updated == 0

            # The change comes back from Stripe through extraction and dbt: Sage is not written to
            # (email is Sage's), so Sage's updated_at does not move and the sync has nothing to copy.
            sage_updated = client.get("/customers/ACMEC-0001")["updated_at"]
            _extract(fresh_db, emu, state, ("customers",))
            transform.dbt_build(url=fresh_db)
            again = push_customers(fresh_db, client, mapping=mapping)
            assert (again.created, again.unchanged, again.requests) == (0, 2, 0)
            assert client.get("/customers/ACMEC-0001")["updated_at"] == sage_updated
            assert pull_sage_changes(fresh_db, client, sdk, mapping).updated == 0
            assert len(_updated_events(sdk, "cus_GOLD0001")) == 1

            # A field Stripe owns (the name) changes in Stripe: Sage gets a PATCH of that field only, and
            # that write of ours does not bounce back to Stripe.
            sdk.v1.customers.update("cus_GOLD0001", params={"name": "Acme Corporation Intl"})
            _extract(fresh_db, emu, state, ("customers",))
            transform.dbt_build(url=fresh_db)
            upd = push_customers(fresh_db, client, mapping=mapping)
            assert upd.created == 1 and upd.unchanged == 1
            acme = client.get("/customers/ACMEC-0001")
            assert (acme["company"], acme["email"]) == ("Acme Corporation Intl", "finance@acme.example")
            pulled = pull_sage_changes(fresh_db, client, sdk, mapping)
            assert pulled.updated == 0 and pulled.skipped_own_writes >= 1
            assert len(_updated_events(sdk, "cus_GOLD0001")) == 2  # the user's rename, and our one email copy
            versions = ledger(
                fresh_db,
                "select version, posting_mode, status from sage_sync.posting_ledger"
                " where external_ref = 'cus_GOLD0001' order by version",
            )
            assert [(v["version"], v["posting_mode"], v["status"]) for v in versions] == [
                (1, "create", "posted"),
                (2, "update", "posted"),
            ]

        # A Sage company that lost the customer: the update gets a 404 and the customer is created.
        with sage_sandbox(tmp_path / "sage-empty") as srv2:
            client2, _ = client_for(srv2)
            sdk.v1.customers.update("cus_GOLD0002", params={"name": "Globex Limited"})
            _extract(fresh_db, emu, state, ("customers",))
            transform.dbt_build(url=fresh_db)
            res = push_customers(fresh_db, client2, mapping=mapping)
            assert res.created + res.replayed + res.already_exists == 1
            globex = client2.find_by_external_ref("customers", "cus_GOLD0002")
            assert (globex["custno"], globex["company"]) == ("GLOBE-0001", "Globex Limited")
    finally:
        emu.stop()
