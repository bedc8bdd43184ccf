"""A Sage Pro sandbox server implementing the project's Sage Pro REST contract.

It stands in for a customer's Sage Pro facade so that the pipeline, the demo and the tests run with no
ERP: the chart of accounts of docs/accounting.md, monthly fiscal periods 2020–2035,
customers, invoices and credit memos, cash receipts, journal entries with reversal, GL postings, both
duplicate-protection layers (Idempotency-Key and external_ref), per-user rate limits and seeded faults.
State lives in one SQLite file under `data_dir`, so it survives a restart.

Default users (sandbox only; a real facade has its own): ``pipeline`` / ``pipeline-secret`` with the
``read`` and ``post`` roles, and ``admin`` / ``admin-secret`` with ``read``, ``post`` and ``admin``
(``admin`` may open and close periods).

    from stripe_sage_sandboxes.sage import SageSandboxConfig, SageSandboxServer
    srv = SageSandboxServer(SageSandboxConfig(data_dir=path), port=0).start()
    srv.base_url  # http://127.0.0.1:PORT/sagepro/v1/PRO01
    srv.stop()

Faults: the configured rates (429, 5xx, commit-then-504) apply whenever they are non-zero and are drawn
from a generator seeded by `seed`; the per-request `X-Sandbox-Fault` header (`429`, `503`, `500`,
`commit-504`, `latency=MS`, comma-separated) is honoured only with `faults_enabled=True`;
`SageSandboxServer.queue_faults()` forces faults on the next requests from a test.
"""

from stripe_sage_sandboxes.sage.app import DEFAULT_USERS, SageSandboxApp, SageSandboxConfig, create_app
from stripe_sage_sandboxes.sage.server import SageSandboxServer, main

__all__ = ["DEFAULT_USERS", "SageSandboxApp", "SageSandboxConfig", "SageSandboxServer", "create_app", "main"]
