"""Sage Pro: the httpx client of the project's REST contract, its typed errors and idempotency keys.

The contract's OpenAPI document is `openapi.yaml` in this package.
"""

from stripe_sage_pipeline.sage.client import PostResult, SageClient
from stripe_sage_pipeline.sage.errors import (
    Conflict,
    CredentialsError,
    NotFound,
    RecordInvalid,
    SageError,
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
    "TransientError",
    "idempotency_key",
]
