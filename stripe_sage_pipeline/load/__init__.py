"""Posting to Sage Pro: plan payloads from the finance marts, post them through the posting ledger.

Plain modules, testable without Dagster: `ledger` (sage_sync tables), `plan` (payloads), `post`
(a partition, idempotently), `redrive` (dead letters after a fix), `customers` (both directions).
"""
