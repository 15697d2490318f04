"""A worker pool without the run's certificates is refused by a site's interchange (issue 27).

fedgrid pins ``encrypted=True`` (CurveZMQ) on every HighThroughputExecutor it builds. Without it,
anyone who can reach the interchange's worker port (on a shared login node: every user) could
register a pool, be handed clients' tasks with their params, and send back forged updates. Here a
site built by fedgrid's own `htex.build` runs under a DataFlowKernel, and:

- the interchange's worker socket is offered the credentials a rogue could hold (none; a fresh
  client key with the run's real server key; wholly fresh keys): each handshake fails, read from
  ZeroMQ's socket events, so nothing here waits for an absence to be proven by a timer;
- real `process_worker_pool` processes with two of those (none; forged), launched with the site's
  own pool command, as `nobody` where this process may act as it and `nobody` can run this
  interpreter (else as this user: the certificate, not the uid, is what the interchange checks),
  never appear among its managers and never get a task, while the site's own block (the positive
  control) registers and runs every task; then each gives up by itself (its 3 s address probe:
  the proof of refusal is the handshake above, this only ends the pools).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from fedgrid.executors import htex

GUARD_S = 60  # hang guards only: each wait below ends on an event, not on this


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One htex site's executor, started as a run starts it (its own block included)."""
    from parsl.config import Config
    from parsl.dataflow.dflow import DataFlowKernel

    run = tmp_path_factory.mktemp("rogue")
    ex = htex.build(types.SimpleNamespace(name="trusted", executor=htex.Spec(kind="htex", workers=1)), run)
    dfk = DataFlowKernel(Config(executors=[ex], strategy="none", run_dir=str(run / "parsl")))
    try:
        yield ex, dfk
    finally:
        dfk.cleanup()


def rogue_certs(home: Path, kind: str, run_certs: str) -> str:
    """A rogue's --cert_dir: "None" (Parsl's unencrypted pool), "forged" (a fresh client key and the
    run's server public key, which is no secret: only the interchange's allow-list can stop this
    one), or "stranger" (fresh keys throughout)."""
    from parsl import curvezmq

    if kind == "none":
        return "None"
    certs = Path(curvezmq.create_certificates(home / kind))
    if kind == "forged":  # Parsl's client reads the server's public key from server.key_secret
        fresh, _ = zmq.auth.load_certificate(certs / "server.key_secret")
        real, _ = zmq.auth.load_certificate(Path(run_certs) / "server.key")
        secret = certs / "server.key_secret"
        secret.write_text(secret.read_text().replace(fresh.decode(), real.decode()))
    return str(certs)


def handshake(port: int, cert_dir: str) -> str:
    """The name of the first handshake event a client socket with these credentials gets (Parsl's
    own client context sets them, as in a pool)."""
    from parsl import curvezmq

    ctx = curvezmq.ClientContext(None if cert_dir == "None" else cert_dir)
    try:
        sock = ctx.socket(zmq.DEALER)
        mon = sock.get_monitor_socket()
        sock.connect(f"tcp://127.0.0.1:{port}")
        while mon.poll(GUARD_S * 1000):
            name = zmq.Event(recv_monitor_message(mon)["event"]).name
            if name.startswith("HANDSHAKE"):
                return name
        raise AssertionError("no handshake event")
    finally:
        ctx.destroy(linger=0)


def rogue_user() -> str | None:
    """`nobody` where this process may act as it and `nobody` can run this interpreter (not where the
    venv's python links into a private /root), else None: this user."""
    if os.getuid() != 0:
        return None
    try:
        ok = subprocess.run([sys.executable, "-c", "import zmq"], user="nobody", cwd="/", capture_output=True)
    except PermissionError:
        return None
    return "nobody" if ok.returncode == 0 else None


def test_credentials_other_than_the_runs_fail_the_curve_handshake(site, tmp_path) -> None:
    ex, _ = site
    got = {kind: handshake(ex.worker_port, rogue_certs(tmp_path, kind, ex.cert_dir))
           for kind in ("none", "forged", "stranger")}
    # (which failure ZeroMQ names depends on who closes first: none gets PROTOCOL, a mechanism
    # mismatch, or NO_DETAIL; forged is denied by the allow-list, AUTH; stranger's hello cannot be
    # read by this server, NO_DETAIL)
    assert all(name.startswith("HANDSHAKE_FAILED_") for name in got.values()), got
    assert handshake(ex.worker_port, ex.cert_dir) == "HANDSHAKE_SUCCEEDED"  # the run's own pass


def test_a_rogue_worker_pool_is_refused_while_the_sites_own_block_runs_the_tasks(site) -> None:
    from parsl.app.app import python_app

    ex, dfk = site
    user = rogue_user()
    if os.getuid() == 0:  # the premise: another user cannot simply take the run's client key
        peek = subprocess.run(["cat", f"{ex.cert_dir}/client.key_secret"], user="nobody", cwd="/",
                              capture_output=True)
        assert peek.returncode != 0 and not peek.stdout
    home = Path(tempfile.mkdtemp(prefix="fedgrid-rogue-"))
    home.chmod(0o755)  # a folder `nobody` may enter, as /tmp on a login node
    rogues: dict[str, subprocess.Popen] = {}
    try:
        getenv = python_app(os.getenv, executors=["trusted"], data_flow_kernel=dfk)
        tasks = [getenv("PARSL_WORKER_POOL_ID") for _ in range(4)]  # waiting for whichever pool gets in
        certs = {kind: rogue_certs(home, kind, ex.cert_dir) for kind in ("none", "forged")}
        for kind in certs:
            (home / f"logs-{kind}").mkdir()
        gid = pwd.getpwnam(user).pw_gid if user else None  # its own group: Debian's nobody has no group "nobody"
        for path in [home, *home.rglob("*")] if user else []:
            shutil.chown(path, user, gid)
        for kind, cert_dir in certs.items():
            # the command the site's own block runs, its later options overriding: only the
            # certificates (and the user, where it can be `nobody`) differ
            cmd = [*shlex.split(ex.launch_cmd.format(block_id=f"rogue-{kind}")), "--cert_dir", cert_dir,
                   f"--logdir={home}/logs-{kind}", f"--uid=rogue-{kind}", "--address_probe_timeout=3"]
            with open(home / f"stderr-{kind}", "w") as err:  # (a file: a pool's children inherit it)
                rogues[kind] = subprocess.Popen(cmd, user=user, group=gid, extra_groups=[] if user else None,
                                                cwd="/", stdout=subprocess.DEVNULL, stderr=err,
                                                start_new_session=True)

        ran_on = {t.result(timeout=GUARD_S) for t in tasks}  # the control: the site's own block got in
        managers = {m["manager"]: m["block_id"] for m in ex.connected_managers()}
        assert ran_on == set(managers) and not any(b.startswith("rogue") for b in managers.values()), managers
        block = set(managers)
        deadline = time.monotonic() + GUARD_S
        while any(proc.poll() is None for proc in rogues.values()):  # each rogue gives up by itself...
            assert {m["manager"] for m in ex.connected_managers()} == block, "a rogue pool registered"
            assert getenv("PARSL_WORKER_POOL_ID").result(timeout=GUARD_S) in block  # tasks meanwhile too
            assert time.monotonic() < deadline, "a rogue pool neither gave up nor registered"
            time.sleep(0.1)
        for kind, proc in rogues.items():  # ... because the interchange never answered it
            log = (home / f"logs-{kind}" / f"block-rogue-{kind}" / f"rogue-{kind}" / "manager.log").read_text()
            assert proc.returncode != 0 and "Unable to connect to interchange" in log, \
                (home / f"stderr-{kind}").read_text()[-2000:]
        assert {m["manager"] for m in ex.connected_managers()} == block  # and none registered since
    finally:
        for proc in rogues.values():  # a pool that got in has children: its whole session goes
            if proc.poll() is None:  # (not yet reaped, so its id is still its own)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(home, ignore_errors=True)
