"""The one code server `stripe-sage ui` shares between the webserver and the daemon (runtime/code_server.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stripe_sage_pipeline.runtime.code_server import code_server_command, workspace_location, write_grpc_workspace


def test_the_location_comes_from_the_projects_workspace_file():
    assert workspace_location() == ("stripe_sage_pipeline.definitions", "stripe_sage_pipeline")


def test_the_command_serves_that_location_and_the_workspace_points_at_it(tmp_path):
    cmd = code_server_command(Path("/venv/bin"), "127.0.0.1", 4321)
    assert cmd[:3] == ["/venv/bin/dagster", "code-server", "start"]
    assert cmd[cmd.index("-m") + 1] == "stripe_sage_pipeline.definitions"
    assert cmd[cmd.index("--location-name") + 1] == "stripe_sage_pipeline"
    assert (cmd[cmd.index("-h") + 1], cmd[cmd.index("-p") + 1]) == ("127.0.0.1", "4321")
    written = yaml.safe_load(write_grpc_workspace(tmp_path / "w.yaml", "127.0.0.1", 4321).read_text())
    assert written == {
        "load_from": [{"grpc_server": {"host": "127.0.0.1", "port": 4321, "location_name": "stripe_sage_pipeline"}}]
    }


def test_a_workspace_without_exactly_one_python_module_is_refused(tmp_path):
    two = tmp_path / "two.yaml"
    two.write_text("load_from:\n  - python_module: a\n  - python_module: {module_name: b, location_name: bee}\n")
    with pytest.raises(ValueError, match="expected one python_module location, found 2"):
        workspace_location(two)
    one = tmp_path / "one.yaml"
    one.write_text("load_from:\n  - python_module: a.defs\n")
    assert workspace_location(one) == ("a.defs", "a.defs")
