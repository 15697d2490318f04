"""The worker pool's start (executors/pool_start.py): its forkserver is a fork of the pool process
holding only the descriptors multiprocessing passes it, its workers are forks of that server, and
its manager server starts without re-importing the pool's main module. Each check runs in a Python
process of its own: they change multiprocessing's global state."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

POOL_START = Path(__file__).resolve().parents[2] / "executors" / "pool_start.py"


PROBE = """
import os, sys

def report(q):
    q.put({"parent": os.getppid(), "had_module": "pool_was_here" in sys.modules})
"""


def _run(body: str, where: Path) -> dict:
    (where / "probe.py").write_text(PROBE)  # a worker's target, importable by name as Parsl's is
    code = textwrap.dedent(f"""
        import json, os, runpy, sys
        sys.path.insert(0, {str(where)!r})
        ps = runpy.run_path({str(POOL_START)!r})
        {textwrap.indent(textwrap.dedent(body), '        ').strip()}
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_forkserver_is_a_fork_of_the_pool_with_only_its_own_descriptors_and_forks_the_workers(tmp_path):
    got = _run("""
        import multiprocessing.forkserver as fs
        import probe
        leak_r, leak_w = os.pipe()          # the pool's own descriptor: the server must not hold it
        sys.modules["pool_was_here"] = sys  # imported before the fork: the server has it for free
        fs.set_forkserver_preload([])
        ps["start_forkserver"]()
        ctx = ps["PoolContext"]()
        q = ctx.Queue()

        p = ctx.Process(target=probe.report, args=(q,))
        p.start()
        child = q.get(timeout=60)
        p.join(60)
        server = fs._forkserver._forkserver_pid
        with open(f"/proc/{server}/stat") as f:
            server_parent = int(f.read().rsplit(")", 1)[1].split()[1])
        held = {os.readlink(f"/proc/{server}/fd/{n}") for n in os.listdir(f"/proc/{server}/fd")}
        leak = os.readlink(f"/proc/self/fd/{leak_w}")  # "pipe:[inode]": the pipe itself, not a number
        print(json.dumps({"me": os.getpid(), "server": server, "server_parent": server_parent,
                          "child_parent": child["parent"], "had_module": child["had_module"],
                          "leak_in_server": leak in held,
                          "exitcode": p.exitcode}))
    """, tmp_path)
    assert got["server_parent"] == got["me"]  # forked here, not a fresh interpreter
    assert got["child_parent"] == got["server"]  # a worker is a fork of the server
    assert got["had_module"] and got["exitcode"] == 0
    assert not got["leak_in_server"]


def test_the_manager_server_starts_without_the_pools_main_module_and_main_is_restored(tmp_path):
    got = _run("""
        import types
        main = types.ModuleType("__main__")
        main.__file__ = "/nonexistent/pool_main.py"  # would fail the child, were it re-imported
        sys.modules["__main__"] = main
        m = ps["PoolContext"]().Manager()
        d = m.dict()
        d["x"] = 1
        print(json.dumps({"x": d["x"], "main_back": sys.modules["__main__"] is main}))
        m.shutdown()
    """, tmp_path)
    assert got == {"x": 1, "main_back": True}


def test_a_spared_client_is_not_importable_until_restored_and_one_already_imported_is_left_alone(monkeypatch):
    import importlib

    from fedgrid.apps import lean

    monkeypatch.delitem(sys.modules, "kubernetes", raising=False)
    monkeypatch.setitem(sys.modules, "globus_compute_sdk", sys)  # as if imported before
    assert lean.spare() == ["kubernetes"]
    with pytest.raises(ImportError):
        importlib.import_module("kubernetes")
    lean.restore()
    assert "kubernetes" not in sys.modules and sys.modules["globus_compute_sdk"] is sys
