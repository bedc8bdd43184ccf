"""Run the Sage Pro sandbox: in a background thread (tests, the demo) or in the foreground (CLI)."""

from __future__ import annotations

import argparse
import logging
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import uvicorn

from stripe_sage_sandboxes.sage.app import API_PREFIX, RequestLogEntry, SageSandboxApp, SageSandboxConfig

log = logging.getLogger(__name__)


class SageSandboxServer:
    """A sandbox served by uvicorn on a background thread; port 0 picks a free port."""

    def __init__(self, config: SageSandboxConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.app: SageSandboxApp | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def base_url(self) -> str:
        """The API base, e.g. http://127.0.0.1:8765/sagepro/v1/PRO01."""
        return f"{self.root_url}{API_PREFIX}/{self.config.company}"

    @property
    def root_url(self) -> str:
        """Scheme, host and port."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> SageSandboxServer:
        """Bind, start serving in a daemon thread and wait until requests are accepted."""
        self.app = SageSandboxApp(self.config)
        # Binding here, not in uvicorn, makes the ephemeral port known before the thread starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._sock = sock
        config = uvicorn.Config(self.app.asgi, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"sage-sandbox-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"Sage sandbox did not start on {self.root_url}")
            time.sleep(0.01)
        log.info("Sage Pro sandbox listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and close the books (they stay on disk under data_dir)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        if self.app is not None:
            self.app.close()
        self._server = self._thread = self._sock = None
        self.app = None

    def queue_faults(self, *faults: str) -> None:
        """Force faults on the next API requests ("429", "503", "500", "commit-504", "latency=MS")."""
        assert self.app is not None, "start() the server first"
        self.app.queue_faults(*faults)

    def keys_in_flight(self) -> set[str]:
        """Idempotency-Keys of write requests executing right now."""
        return self.app.keys_in_flight() if self.app is not None else set()

    @property
    def request_log(self) -> list[RequestLogEntry]:
        """What the sandbox saw so far, oldest first."""
        return list(self.app.request_log) if self.app is not None else []

    def __enter__(self) -> SageSandboxServer:
        return self.start() if self.app is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _user(spec: str) -> tuple[str, tuple[str, set[str]]]:
    name, password, roles = (spec.split(":", 2) + ["read,post"])[:3]
    if not name or not password:
        raise argparse.ArgumentTypeError("--user takes NAME:PASSWORD[:role,role]")
    return name, (password, {r for r in roles.split(",") if r})


def build_parser() -> argparse.ArgumentParser:
    """The command line of `stripe-sage sandbox sage`."""
    p = argparse.ArgumentParser(
        prog="stripe-sage sandbox sage",
        description="Run the Sage Pro sandbox server: "
        "the REST contract of docs/sage-pro-contract.md. Point SAGEPRO_BASE_URL at "
        "http://HOST:PORT/sagepro/v1/COMPANY.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (default: 8765)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".data/sage-sandbox"),
        help="where its ledger (SQLite) is kept (default: .data/sage-sandbox)",
    )
    p.add_argument("--company", default="PRO01", help="company id in the URL (default: PRO01)")
    p.add_argument("--seed", type=int, default=0, help="random seed of injected faults (default: 0)")
    p.add_argument("--base-currency", default="USD", help="the company's base currency (default: USD)")
    p.add_argument(
        "--user",
        action="append",
        type=_user,
        default=[],
        help="NAME:PASSWORD[:roles], repeatable (default: pipeline/pipeline-secret with read,post; admin/admin-secret)",
    )
    p.add_argument(
        "--rate-per-minute",
        type=int,
        default=120,
        help="requests per minute per user before it answers 429 (default: 120)",
    )
    p.add_argument(
        "--max-concurrent", type=int, default=4, help="requests in flight per user before it answers 429 (default: 4)"
    )
    p.add_argument("--faults-enabled", action="store_true", help="honour the X-Sandbox-Fault request header")
    p.add_argument(
        "--fault-429-rate",
        type=float,
        default=0.0,
        help="fraction of requests answered 429, from 0 to 1 (0.05 = 5%%; default: 0)",
    )
    p.add_argument(
        "--fault-5xx-rate",
        type=float,
        default=0.0,
        help="fraction of requests answered 500/503, from 0 to 1 (default: 0)",
    )
    p.add_argument(
        "--fault-commit-504-rate",
        type=float,
        default=0.0,
        help="fraction of writes that commit but answer 504, from 0 to 1 (default: 0)",
    )
    p.add_argument(
        "--fault-retry-after", type=int, default=1, help="Retry-After seconds of injected 429/503 (default: 1)"
    )
    p.add_argument("--latency-ms", type=int, default=0, help="added to every response, in milliseconds (default: 0)")
    p.add_argument(
        "--closed-period",
        action="append",
        default=[],
        help="YYYY-MM of a closed fiscal period; postings into it answer 422 (repeatable)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> SageSandboxConfig:
    """A config from parsed command-line arguments."""
    return SageSandboxConfig(
        data_dir=args.data_dir,
        company=args.company,
        users=dict(args.user) or None,
        rate_per_minute=args.rate_per_minute,
        max_concurrent=args.max_concurrent,
        seed=args.seed,
        fault_429_rate=args.fault_429_rate,
        fault_5xx_rate=args.fault_5xx_rate,
        fault_commit_504_rate=args.fault_commit_504_rate,
        fault_retry_after_s=args.fault_retry_after,
        latency_ms=args.latency_ms,
        faults_enabled=args.faults_enabled,
        closed_periods=list(args.closed_period),
        base_currency=args.base_currency.upper(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the sandbox in the foreground until interrupted."""
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    app = SageSandboxApp(config)
    print(f"Sage Pro sandbox: http://{args.host}:{args.port}{API_PREFIX}/{config.company}  (data in {args.data_dir})")
    print(f"OpenAPI: http://{args.host}:{args.port}{API_PREFIX}/openapi.yaml")
    try:
        uvicorn.run(app.asgi, host=args.host, port=args.port, log_level="info", lifespan="off")
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
