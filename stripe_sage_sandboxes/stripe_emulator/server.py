"""Run the emulator: `EmulatorServer` (uvicorn in a background thread, for tests and the demo) and
`main(argv)`, the foreground command behind `python -m ...stripe_emulator` and
`stripe-sage sandbox stripe`."""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time

import uvicorn

from stripe_sage_sandboxes.stripe_emulator.app import create_app
from stripe_sage_sandboxes.stripe_emulator.generator import generate, load_golden
from stripe_sage_sandboxes.stripe_emulator.store import EmulatorConfig, EmulatorState
from stripe_sage_sandboxes.stripe_emulator.webhooks import WebhookDispatcher


class EmulatorServer:
    """Serve an EmulatorState over HTTP; port 0 picks a free port (read `.url` after `start()`)."""

    def __init__(self, state: EmulatorState, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state
        self.host = host
        self.port = port
        self.webhooks = WebhookDispatcher(state)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def _make_server(self) -> uvicorn.Server:
        config = uvicorn.Config(
            create_app(self.state),
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # A benchmark pages through 200k objects over one keep-alive connection.
            timeout_keep_alive=30,
        )
        return uvicorn.Server(config)

    @property
    def url(self) -> str:
        """Base address for the SDK (`base_addresses={"api": srv.url}`)."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> EmulatorServer:
        """Start in a daemon thread and wait until the socket listens."""
        self._server = self._make_server()
        self._thread = threading.Thread(target=self._server.run, name="stripe-emulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"Stripe emulator did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        self.webhooks.start()
        return self

    def stop(self) -> None:
        """Stop serving and delivering webhooks."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.webhooks.stop()
        self._server = self._thread = None

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (Ctrl-C)."""
        self.webhooks.start()
        try:
            self._make_server().run()
        finally:
            self.webhooks.stop()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the foreground emulator."""
    p = argparse.ArgumentParser(
        prog="stripe-sage sandbox stripe",
        description="Stateful Stripe API emulator: generated (or loaded) history, served like "
        "api.stripe.com to the official SDK. Point STRIPE_API_BASE at it.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=12111, help="port to listen on (default: 12111)")
    p.add_argument("--seed", type=int, default=7, help="random seed; the same seed gives the same objects (default: 7)")
    p.add_argument("--days", type=int, default=30, help="days of generated history, ending at --end (default: 30)")
    p.add_argument(
        "--volume", type=float, default=1.0, help="activity multiplier: 1.0 is about 110 charges a day (default: 1.0)"
    )
    p.add_argument("--end", type=int, default=None, help="epoch of the last day's end (default: today 00:00 UTC)")
    p.add_argument("--load", metavar="FILE", help="serve the objects of FILE (golden layout) instead of generating")
    p.add_argument(
        "--api-key", default="sk_test_emulator", help="the secret key it accepts (default: sk_test_emulator)"
    )
    p.add_argument(
        "--rate-limit", type=float, default=None, help="requests per second before it answers 429 (default: unlimited)"
    )
    p.add_argument(
        "--fault-5xx-rate",
        type=float,
        default=0.0,
        help="fraction of requests answered with a 5xx, from 0 to 1 (0.05 = 5%%; default: 0)",
    )
    p.add_argument("--latency-ms", type=int, default=0, help="added to every response, in milliseconds (default: 0)")
    p.add_argument(
        "--webhook-url",
        action="append",
        default=[],
        help="deliver signed events to this URL, e.g. http://127.0.0.1:8787/stripe/webhooks (repeatable)",
    )
    p.add_argument(
        "--webhook-secret",
        default="whsec_emulator",
        help="signing secret of delivered events (default: whsec_emulator)",
    )
    p.add_argument("--now", type=int, default=None, help="fix the clock at this epoch (default: the real clock)")
    return p


def _masked(key: str) -> str:
    """An API key as Stripe shows it: the prefix and the last four characters, never the whole secret."""
    prefix = key.rsplit("_", 1)[0] + "_" if "_" in key else ""
    return f"{prefix}…{key[-4:]}" if len(key) > len(prefix) + 8 else f"{prefix}****"


def main(argv: list[str] | None = None) -> int:
    """Generate (or load) data and serve it in the foreground."""
    args = build_parser().parse_args(argv)
    cfg = EmulatorConfig(
        api_key=args.api_key,
        rate_limit_per_s=args.rate_limit,
        fault_5xx_rate=args.fault_5xx_rate,
        latency_ms=args.latency_ms,
        seed=args.seed,
        webhook_urls=list(args.webhook_url),
        webhook_secret=args.webhook_secret,
        now=args.now,
    )
    state = EmulatorState(cfg)
    started = time.monotonic()
    if args.load:
        load_golden(state, args.load)
    else:
        generate(state, seed=args.seed, days=args.days, volume=args.volume, end=args.end)
    counts = state.summary()["counts"]
    # The generated history lives as long as the process: out of the collector's walks, so that a full
    # collection no longer holds every answer for 0.19-0.26 s at volume 10 (about one per two benchmark runs).
    gc.freeze()
    print(
        f"Stripe emulator on http://{args.host}:{args.port} (key {_masked(cfg.api_key)}); "
        f"ready in {time.monotonic() - started:.1f}s: " + ", ".join(f"{n} {name}" for name, n in counts.items()),
        file=sys.stderr,
        flush=True,
    )
    try:
        EmulatorServer(state, args.host, args.port).serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
