"""Posting to the accounting target (Sage Pro or Sage Intacct): plan payloads from the finance marts, post
them through the posting ledger.

Plain modules, testable without Dagster: `ledger` (sage_sync tables), `plan` (payloads), `decide` (the
ledger's decision, a pure function), `engine` (carries decisions out against a `sage.target.Target`),
`loaders` (one posting date per resource), `redrive` (dead letters after a fix), `customers` (both
directions); `post` re-exports the names callers used before the split.
"""
