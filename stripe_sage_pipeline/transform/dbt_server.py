"""Warm dbt: a background process that has imported dbt's command line and forks a child per command.

Every dbt command of the pipeline is a process of its own (dagster-dbt starts `stripe-sage-dbt build ...`
for each build), and each spent ~2.5-3 CPU-seconds importing dbt's command line before reading the
project: a third of the fast path's dbt step. `stripe-sage-dbt` asks this server first. The server
forks a child that has dbt imported already and hands it the command: its arguments, environment,
working directory and standard streams (the file descriptors themselves, passed over a Unix socket),
so the child is the command as far as its caller can tell: it writes to the same pipes, reads the same
variables, and its exit code is the command's. Signals the caller gets (dagster-dbt sends SIGINT to
cancel a build) are forwarded to the child; a caller that dies takes its child down with it.

Where there is no server (the first command on a machine, or after `STRIPE_SAGE_DBT_SERVER=0`), the
command runs dbt in its own process as before and starts one in the background for the next command.
The server exits after `IDLE_EXIT_S` without a command, or before forking when any module it imported
changed on disk (an upgrade, an edit): the command then runs in its own process and starts a fresh one.

The socket is in a folder only its user can open (`<tmp>/stripe-sage-dbt-<uid>/`, mode 0700), named
after the Python that serves it: a server runs commands with exactly the rights of whoever may connect.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from stripe_sage_pipeline.runtime.gc_policy import relax_for_process
from stripe_sage_pipeline.runtime.warm_worker import reap_children

IDLE_EXIT_S = 600.0
MAX_SOCKET_PATH = 100
STREAMS = (0, 1, 2)
# A child whose caller is gone gets SIGINT (dbt cancels its queries), then this long before it is ended.
ORPHAN_GRACE_S = 30.0


def socket_path() -> Path | None:
    """The server's socket for this Python and this copy of the project; None when no private folder can be had."""
    folder = Path(tempfile.gettempdir()) / f"stripe-sage-dbt-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.stat()
    except OSError:
        return None
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        return None  # someone else's, or open to others: no server
    key = hashlib.sha256(f"{sys.executable}\0{Path(__file__).resolve()}".encode()).hexdigest()[:16]
    path = folder / f"{key}.sock"
    # A Unix socket's path is at most ~107 bytes; under a deeper TMPDIR there is simply no server.
    return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else None


def loaded_module_files() -> dict[str, int]:
    """mtime (ns) of the file of every module loaded in this process (-1: gone)."""
    out: dict[str, int] = {}
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f:
            try:
                out[f] = os.stat(f).st_mtime_ns
            except OSError:
                out[f] = -1
    return out


# -- the caller's side (stripe-sage-dbt) -------------------------------------------------------------------


def request(argv: list[str], path: Path | None = None) -> int | None:
    """Run `dbt <argv>` in a child of the server: its exit code, or None when no server took the command
    (none listening, or it retired): the caller then runs dbt itself."""
    path = path or socket_path()
    if path is None or not path.exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        header = json.dumps({"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
        streams = _open_streams()
        try:
            socket.send_fds(conn, [struct.pack("!Q", len(header))], streams)
        finally:
            for given, fd in zip(STREAMS, streams, strict=True):
                if fd != given:
                    os.close(fd)
        conn.sendall(header)
        answers = conn.makefile("rb")
        first = json.loads(answers.readline() or b"{}")
    except (OSError, ValueError):
        conn.close()
        return None
    if "pid" not in first:
        conn.close()
        return None  # retired (stale) or refused: nothing ran
    child = int(first["pid"])

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    line = answers.readline()
    conn.close()
    if not line:
        return 1  # the child died without a word (killed): the command failed
    return int(json.loads(line)["exit"])


def _open_streams() -> list[int]:
    """The caller's stdin, stdout and stderr; /dev/null in place of any that is closed."""
    out = []
    for fd in STREAMS:
        try:
            os.fstat(fd)
            out.append(fd)
        except OSError:
            out.append(os.open(os.devnull, os.O_RDWR))
    return out


def start_in_background(path: Path | None = None) -> subprocess.Popen | None:
    """Start a server for the next commands (returns at once; a server already starting keeps its place)."""
    path = path or socket_path()
    if path is None:
        return None
    with open(path.with_suffix(".log"), "ab") as log:
        return subprocess.Popen(
            # -P: nothing from the working directory shadows an installed module (dbt scans for plugins).
            [sys.executable, "-P", "-m", "stripe_sage_pipeline.transform.dbt_server", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=path.parent,
            start_new_session=True,  # not in the caller's process group: a Ctrl-C there is not for the server
            close_fds=True,
        )


# -- the server ---------------------------------------------------------------------------------------------


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = conn.recv(min(left, 1 << 16))
        if not chunk:
            raise ConnectionError("caller went away while sending its command")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _watch_caller(conn: socket.socket) -> None:
    """In the child: when the caller's end closes before the command ends, cancel (SIGINT), then end."""
    with contextlib.suppress(OSError):
        conn.recv(1)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(130)


def _run_child(conn: socket.socket, close_fds: list[int]) -> None:
    """The forked child: become the caller's command, run dbt, report its exit code; never returns."""
    code = 1
    try:
        for fd in close_fds:
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        prefix, fds, _flags, _addr = socket.recv_fds(conn, 8, len(STREAMS))
        header = json.loads(_recv_exactly(conn, struct.unpack("!Q", prefix)[0]))
        for target, fd in zip(STREAMS, fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(header["cwd"])
        os.environ.clear()
        os.environ.update(header["env"])
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        threading.Thread(target=_watch_caller, args=(conn,), daemon=True).start()
        from stripe_sage_pipeline.transform.dbt_cli import run_dbt

        code = run_dbt(header["argv"])
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - reported on the caller's stderr, never back into the server
        traceback.print_exc()
    finally:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller hanging up now is no cancellation
            with contextlib.suppress(Exception):
                conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
            with contextlib.suppress(Exception):
                atexit._run_exitfuncs()  # what dbt's own process runs at exit (multiprocessing's cleanup)
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
        finally:
            os._exit(code)


def serve(path: Path, idle_exit_s: float = IDLE_EXIT_S) -> int:
    """Preload dbt, listen on `path`, fork a child per command until idle or stale."""
    lock = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another server is starting or serving
    from stripe_sage_pipeline.transform.dbt_cli import preload_dbt

    preload_dbt()
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if threads:  # forking a process with threads can copy a held lock; callers run dbt themselves
        print(f"[{time.strftime('%F %T')}] not serving: threads after the preload {threads}", flush=True)
        return 1
    relax_for_process()  # each command's child inherits a frozen heap and fewer collections
    snapshot = loaded_module_files()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a dead server's socket (we hold the lock: no live server owns it)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    inode = path.stat().st_ino
    print(f"[{time.strftime('%F %T')}] dbt server pid {os.getpid()} on {path}", flush=True)
    last = time.monotonic()
    try:
        while True:
            readable, _, _ = select.select([listener], [], [], 1.0)
            running = reap_children()
            if not readable:
                if not running and time.monotonic() - last > idle_exit_s:
                    return 0
                continue
            conn, _ = listener.accept()
            last = time.monotonic()
            now = loaded_module_files()
            changed = sorted(f for f in snapshot if now.get(f) != snapshot[f])
            if changed:
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"stale": changed[:10]}).encode() + b"\n")
                conn.close()
                print(f"[{time.strftime('%F %T')}] retiring: changed {changed[:10]}", flush=True)
                return 0
            sys.stdout.flush()
            sys.stderr.flush()
            if os.fork() == 0:
                _run_child(conn, close_fds=[listener.fileno(), lock])
            conn.close()
    finally:
        with contextlib.suppress(OSError):
            if path.stat().st_ino == inode:
                path.unlink()
        listener.close()
        os.close(lock)


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1])))
