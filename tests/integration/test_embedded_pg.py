"""The embedded server in a private folder (a clone in root's 0700 home), driven through `stripe-sage db`."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import psycopg
import pytest

from stripe_sage_pipeline.cli import main
from stripe_sage_pipeline.runtime import embedded_pg
from stripe_sage_pipeline.runtime.embedded_pg import can_reach, free_port, server_user


@pytest.fixture
def private(tmp_path):
    """A 0700 folder, like root's home or `mktemp -d`."""
    folder = tmp_path / "private"
    folder.mkdir()
    folder.chmod(0o700)
    return folder


def test_db_start_status_stop_from_a_private_folder(private, monkeypatch, capsys):
    port = free_port()
    data = private / "clone" / ".data"
    monkeypatch.delenv("STRIPE_SAGE_DATABASE_URL", raising=False)
    monkeypatch.setenv("STRIPE_SAGE_DATA_DIR", str(data))
    monkeypatch.setenv("STRIPE_SAGE_PG_PORT", str(port))

    assert main(["db", "status"]) == 3
    assert "not created yet" in capsys.readouterr().out
    try:
        assert main(["db", "start"]) == 0
        assert f"started on 127.0.0.1:{port}" in capsys.readouterr().out
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/stripe_sage") as conn:
            assert conn.execute("select current_database()").fetchone()[0] == "stripe_sage"
        assert main(["db", "start"]) == 0
        assert "already running" in capsys.readouterr().out
        assert main(["db", "status", "--json"]) == 0
        st = json.loads(capsys.readouterr().out)
        assert st["running"] and st["port"] == port and st["data_dir"] == str(data)
        if os.geteuid() == 0:
            # root: the server runs as `pgserver`, which cannot enter the 0700 folder, so the cluster lives
            # under the runtime root and the data folder links to it; the user's folder keeps its mode.
            assert st["user"] == embedded_pg.SYSTEM_USER and st["relocated"]
            assert (data / "postgres").is_symlink()
            assert st["cluster"].startswith(str(embedded_pg.runtime_root()))
        else:
            assert not st["relocated"] and st["cluster"] == str(data / "postgres")
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
    finally:
        assert main(["db", "stop"]) == 0
    assert "stopped" in capsys.readouterr().out
    assert main(["db", "stop"]) == 0
    assert "was not running" in capsys.readouterr().out
    assert main(["db", "status"]) == 3
    assert "stopped" in capsys.readouterr().out

    if os.geteuid() == 0:  # the data folder goes away: its relocated cluster is pruned
        cluster = (data / "postgres").resolve().parent
        (data / "postgres").unlink()
        assert cluster in embedded_pg.prune_orphans()
        assert not cluster.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_binaries_the_server_user_cannot_reach_are_copied_to_a_world_readable_cache(private, monkeypatch):
    wheel = embedded_pg.wheel_install_dir()
    (private / "site-packages").symlink_to(wheel, target_is_directory=True)
    monkeypatch.setattr(embedded_pg, "wheel_install_dir", lambda: private / "site-packages")
    user = server_user()
    assert not can_reach(private / "site-packages" / "bin" / "initdb", user)
    bindir = embedded_pg.bin_dir(user)
    copy = bindir.parents[2]
    assert copy.parent == embedded_pg.bin_cache_root() and (copy / ".complete").exists()
    assert can_reach(bindir / "initdb", user) and can_reach(bindir / "postgres", user)
    # The copy runs as the server user (its libraries load from the copy too).
    out = subprocess.run(
        [str(bindir / "initdb"), "--version"],
        capture_output=True,
        text=True,
        cwd="/",
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
    )
    assert out.returncode == 0 and "PostgreSQL" in out.stdout, out.stderr
    monkeypatch.setattr(embedded_pg, "wheel_install_dir", lambda: wheel)
    if can_reach(wheel / "bin" / "initdb", user):  # a reachable wheel is used in place
        assert embedded_pg.bin_dir(user) == wheel / "bin"


def test_db_refuses_to_manage_an_external_database_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("STRIPE_SAGE_DATABASE_URL", "postgresql://u:p@db.internal:5432/stripe_sage")
    assert main(["db", "start"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "STRIPE_SAGE_DATABASE_URL is set" in err
