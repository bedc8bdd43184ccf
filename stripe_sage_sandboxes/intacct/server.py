"""Run the Intacct emulator: in a background thread (tests, the demo) or in the foreground (CLI)."""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Sequence

import uvicorn

from stripe_sage_sandboxes.intacct.app import API_PREFIX, IntacctEmulatorApp, IntacctEmulatorConfig, LogEntry


class IntacctEmulatorServer:
    """The emulator served by uvicorn on a daemon thread; port 0 picks a free port (loopback only)."""

    def __init__(self, config: IntacctEmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or IntacctEmulatorConfig()
        self.host, self.port = host, port
        self.app: IntacctEmulatorApp | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def base_url(self) -> str:
        """The API base, e.g. http://127.0.0.1:8766/ia/api/v1."""
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    def start(self, timeout_s: float = 10.0) -> IntacctEmulatorServer:
        """Bind, serve in a daemon thread, wait until requests are accepted."""
        self.app = IntacctEmulatorApp(self.config)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._server = uvicorn.Server(
            uvicorn.Config(self.app.asgi, log_level="warning", access_log=False, lifespan="off")
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"intacct-emulator-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"Intacct emulator did not start on {self.base_url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving (the books are in memory and go with it)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def queue_faults(self, *faults: str) -> None:
        """Force faults on the next API requests ("429", "503", "commit-504", "401")."""
        assert self.app is not None, "start() the server first"
        self.app.queue_faults(*faults)

    @property
    def faults_injected(self) -> dict[str, int]:
        """Faults injected so far by kind ("429", "503", "commit-504", "401"), queued or drawn at random."""
        return dict(self.app.faults_injected) if self.app is not None else {}

    @property
    def request_log(self) -> list[LogEntry]:
        """Requests seen so far, oldest first."""
        return list(self.app.request_log) if self.app is not None else []

    def __enter__(self) -> IntacctEmulatorServer:
        return self.start() if self.app is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    """The command line of `stripe-sage sandbox intacct`."""
    p = argparse.ArgumentParser(prog="stripe-sage sandbox intacct", description="Run the Sage Intacct emulator.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8766, help="port to listen on (default: 8766)")
    p.add_argument("--seed", type=int, default=0, help="random seed of injected faults (default: 0)")
    p.add_argument(
        "--rate-per-minute", type=int, default=6000, help="requests per minute before it answers 429 (default: 6000)"
    )
    p.add_argument("--token-ttl", type=int, default=3600, help="seconds an access token lives")
    p.add_argument(
        "--fault-429-rate",
        type=float,
        default=0.0,
        help="fraction of requests answered 429, from 0 to 1 (0.05 = 5%%; default: 0)",
    )
    p.add_argument(
        "--fault-503-rate", type=float, default=0.0, help="fraction of requests answered 503, from 0 to 1 (default: 0)"
    )
    p.add_argument(
        "--fault-commit-504-rate",
        type=float,
        default=0.0,
        help="fraction of writes that commit but answer 504, from 0 to 1 (default: 0)",
    )
    p.add_argument("--closed-period", action="append", default=[], help="YYYY-MM of a closed period, repeatable")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the emulator in the foreground until interrupted."""
    args = build_parser().parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the Intacct emulator binds loopback addresses only")
    app = IntacctEmulatorApp(
        IntacctEmulatorConfig(
            rate_per_minute=args.rate_per_minute,
            token_ttl_s=args.token_ttl,
            seed=args.seed,
            fault_429_rate=args.fault_429_rate,
            fault_503_rate=args.fault_503_rate,
            fault_commit_504_rate=args.fault_commit_504_rate,
            closed_periods=list(args.closed_period),
        )
    )
    print(
        f"Sage Intacct emulator: http://{args.host}:{args.port}{API_PREFIX}  (client pipeline.app.sandbox,"
        " user pipeline@STRIPESAGE; books in memory)"
    )
    uvicorn.run(app.asgi, host=args.host, port=args.port, log_level="info", lifespan="off")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
