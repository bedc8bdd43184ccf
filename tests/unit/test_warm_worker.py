"""The warm run worker's source snapshot (runtime/warm_worker.py): what retires a worker, and what does not."""

from __future__ import annotations

import os

from stripe_sage_pipeline.runtime.warm_worker import changed_files, watched_files


def test_the_source_snapshot_sees_edits_additions_and_removals(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.sql").write_text("select 1")
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "manifest.json").write_text("{}")
    before = watched_files(tmp_path / "code", [tmp_path], [])
    assert list(before) == [str(tmp_path / "models" / "a.sql")], "outputs (target/) are not sources"
    (tmp_path / "target" / "run_results.json").write_text("{}")
    (tmp_path / ".user.yml").write_text("id: 1")
    assert changed_files(before, watched_files(tmp_path / "code", [tmp_path], [])) == []
    (tmp_path / "models" / "b.sql").write_text("select 2")
    os.utime(tmp_path / "models" / "a.sql", ns=(1, 1))
    after = watched_files(tmp_path / "code", [tmp_path], [])
    assert changed_files(before, after) == [str(tmp_path / "models" / "a.sql"), str(tmp_path / "models" / "b.sql")]
    (tmp_path / "models" / "b.sql").unlink()
    assert changed_files(after, watched_files(tmp_path / "code", [tmp_path], [])) == [
        str(tmp_path / "models" / "b.sql")
    ]


def test_modules_are_watched_only_when_loaded_from_the_code_location(tmp_path):
    class Module:
        def __init__(self, file):
            self.__file__ = file

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "defs.py").write_text("x = 1")
    (tmp_path / "lib.py").write_text("y = 1")
    mods = [Module(str(tmp_path / "code" / "defs.py")), Module(str(tmp_path / "lib.py")), Module(None), object()]
    assert list(watched_files(tmp_path / "code", [], mods)) == [str(tmp_path / "code" / "defs.py")]


def test_a_deleted_module_file_is_a_change_not_a_crash(tmp_path):
    class Module:
        __file__ = str(tmp_path / "gone.py")

    (tmp_path / "gone.py").write_text("x = 1")
    before = watched_files(tmp_path, [], [Module()])
    (tmp_path / "gone.py").unlink()
    assert changed_files(before, watched_files(tmp_path, [], [Module()])) == [str(tmp_path / "gone.py")]


def test_a_module_not_loaded_yet_is_not_executed_by_the_snapshot(tmp_path):
    """A lazily loaded module (how quality/gx_import defers scipy.stats) stays unexecuted: reading its
    __file__ would import it, and the modules it imports would look like new sources at the next fork."""
    import importlib.util
    import sys

    (tmp_path / "lazy_mod.py").write_text("import sys\nsys.modules[__name__].executed = True\n")
    spec = importlib.util.spec_from_file_location("lazy_mod", tmp_path / "lazy_mod.py")
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.pop("lazy_mod", None)
    sys.modules["lazy_mod"] = module
    try:
        assert watched_files(tmp_path, [], [module]) == {}
        assert type(module).__name__ == "_LazyModule"  # still not executed
        assert module.executed and watched_files(tmp_path, [], [module]) == {
            str(tmp_path / "lazy_mod.py"): os.stat(tmp_path / "lazy_mod.py").st_mtime_ns
        }
    finally:
        sys.modules.pop("lazy_mod", None)
