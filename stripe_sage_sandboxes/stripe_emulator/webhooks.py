"""Webhook delivery: events created while the server runs are POSTed, signed like Stripe, to every
configured endpoint from a background thread (so a slow endpoint never delays an API response)."""

from __future__ import annotations

import hashlib
import hmac
import queue
import threading
import time

import httpx

from stripe_sage_sandboxes.stripe_emulator.store import EmulatorState

MAX_ATTEMPTS = 3


def signature_header(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """`Stripe-Signature` value: `t=<ts>,v1=<hex HMAC-SHA256 of "{t}.{payload}">`."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


class WebhookDispatcher:
    """Queue of event ids; one worker thread delivers each to all endpoints, retrying briefly."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.delivered = 0
        self.failed = 0

    def start(self) -> WebhookDispatcher:
        """Start the worker and subscribe to the state's new events."""
        self.thread = threading.Thread(target=self._run, name="stripe-emulator-webhooks", daemon=True)
        self.thread.start()
        self.state.listeners.append(self.enqueue)
        return self

    def enqueue(self, event_id: str) -> None:
        """Called by the state for every live event."""
        if self.state.config.webhook_urls:
            self.queue.put(event_id)

    def stop(self, timeout: float = 5.0) -> None:
        """Unsubscribe, deliver what is queued, and end the worker."""
        if self.enqueue in self.state.listeners:
            self.state.listeners.remove(self.enqueue)
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join(timeout)
            self.thread = None

    def _run(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while True:
                event_id = self.queue.get()
                if event_id is None:
                    return
                for url in list(self.state.config.webhook_urls):
                    self._deliver(client, url, event_id)

    def _deliver(self, client: httpx.Client, url: str, event_id: str) -> None:
        with self.state.lock:
            payload = self.state.body("events", event_id)
        for attempt in range(MAX_ATTEMPTS):
            # Signed with real time, not the emulator clock: receivers check it against their clock.
            header = signature_header(payload, self.state.config.webhook_secret)
            try:
                resp = client.post(
                    url,
                    content=payload,
                    headers={
                        "Content-Type": "application/json; charset=utf-8",
                        "Stripe-Signature": header,
                        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                    },
                )
                if 200 <= resp.status_code < 300:
                    self.delivered += 1
                    self.state.webhook_delivered(event_id)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2 * (2**attempt))
        self.failed += 1
