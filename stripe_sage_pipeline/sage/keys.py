"""Deterministic idempotency keys: the same Stripe object and version always give the same key.

A crashed or retried run therefore re-sends the key of its first attempt, and Sage replays the
stored answer instead of posting twice. A changed source (new `version_hash`) gets a new key.
"""

from __future__ import annotations

import hashlib
import re

MAX_KEY_LENGTH = 255
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def idempotency_key(resource: str, stripe_object_id: str, version_hash: str = "") -> str:
    """`sp-<resource>-<id>-<hash8>`, at most 255 printable ASCII characters.

    The 8-hex hash covers resource, the full id and the version, so truncating a very long id or
    replacing characters that are unsafe in a header never makes two keys collide in practice.
    """
    if not resource or not stripe_object_id:
        raise ValueError("resource and stripe_object_id are required")
    digest = hashlib.sha256(f"{resource}\n{stripe_object_id}\n{version_hash}".encode()).hexdigest()[:8]
    safe_resource = _UNSAFE.sub("_", resource)[:40]
    safe_id = _UNSAFE.sub("_", stripe_object_id)
    room = MAX_KEY_LENGTH - len(f"sp-{safe_resource}--{digest}")
    return f"sp-{safe_resource}-{safe_id[:room]}-{digest}"


__all__ = ["MAX_KEY_LENGTH", "idempotency_key"]
