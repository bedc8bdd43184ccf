"""The load targets: `target.Target` and its two implementations, Sage Pro (`client.SageClient` wrapped
by `sagepro.SageProTarget`; the contract's OpenAPI document is `openapi.yaml` here) and Sage Intacct
(`intacct.IntacctTarget`); their typed errors, idempotency keys, the client factory (`factory`, chosen
by SAGE_TARGET) and the GL read-back (`readback`).
"""

from stripe_sage_pipeline.sage.client import PostResult, SageClient
from stripe_sage_pipeline.sage.errors import (
    Conflict,
    CredentialsError,
    NotFound,
    RecordInvalid,
    SageError,
    SageUnavailable,
    TransientError,
)
from stripe_sage_pipeline.sage.keys import idempotency_key

__all__ = [
    "Conflict",
    "CredentialsError",
    "NotFound",
    "PostResult",
    "RecordInvalid",
    "SageClient",
    "SageError",
    "SageUnavailable",
    "TransientError",
    "idempotency_key",
]
