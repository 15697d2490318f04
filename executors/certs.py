"""How worker pools on machines that share no filesystem with the driver get their CurveZMQ keys.

fedgrid pins ``encrypted=True``, so Parsl's HTEX makes a fresh certificate directory at start
(``<run_dir>/parsl/<n>/<site>/certificates``, 0700) and composes the worker command with
``--cert_dir`` at that folder of the driver. A pod (kubernetes) or an EC2 instance (aws) has no such
folder, and its pool would stop at once with FileNotFoundError. Those kinds therefore hand the
pool the files it reads, and its command points ``--cert_dir`` at a private copy on the worker's side.

What a pool reads (``parsl.curvezmq.ClientContext``): ``client.key_secret`` (the client's key pair)
and ``server.key_secret``, of which it uses only the server's *public* key. Parsl still requires a
``secret-key`` line in that file, so the pool gets a ``server.key_secret`` holding the public key
and the placeholder :data:`WITHHELD` (not a valid key: a Parsl that ever used it would fail loudly):
the server's secret key never leaves the driver. A leaked client key lets its holder connect to this
run's interchange as a worker until the run ends (Parsl makes new keys at every start); the server
key would let it impersonate the interchange, so it stays.

Parsl refuses a certificate folder that is not exactly 0700 (a Kubernetes Secret volume is not), so
the worker command copies or writes the files into a ``mktemp -d`` folder of its own (0700, files
0600), removed when the command exits, and passes that folder to the pool; see :func:`prelude`.
The one other driver file Parsl's command names, its pickled log config, is not shipped: such pools
log as Parsl's default does (:data:`REMOTE_ARGS`).
"""

from __future__ import annotations

import base64
import shlex
from pathlib import Path
from typing import Any, Protocol

CLIENT = "client.key_secret"
SERVER = "server.key_secret"
POOL_FILES = (CLIENT, SERVER)  # what process_worker_pool reads from --cert_dir; nothing else is shipped
WITHHELD = "withheld-by-fedgrid"  # server.key_secret's secret-key on the worker side: not a key
DIR_VAR = "fedgrid_certs"  # the shell variable naming the pool's private certificate folder


class Delivery(Protocol):
    """One way of getting the pool files to a kind's workers."""

    def publish(self, files: dict[str, bytes]) -> str:
        """Make ``files`` reachable from the workers; return the shell command that materializes
        them into ``$fedgrid_certs`` (a :func:`prelude`)."""
        ...

    def withdraw(self) -> None:
        """Undo what publish left outside this process (at executor shutdown)."""
        ...


def pool_files(cert_dir: str | Path) -> dict[str, bytes]:
    """The files a worker pool needs from the driver's certificate folder, by name: the client's key
    pair as Parsl wrote it, and the server's public key alone (see the module docstring)."""
    import zmq.auth

    d = Path(cert_dir)
    public, _ = zmq.auth.load_certificate(d / "server.key")  # the public certificate: no secret in it
    server = ("#   the interchange's public key for a fedgrid worker pool; its secret key stays with the driver\n"
              "metadata\ncurve\n"
              f'    public-key = "{public.decode()}"\n'
              f'    secret-key = "{WITHHELD}"\n')
    return {CLIENT: (d / CLIENT).read_bytes(), SERVER: server.encode()}


# Parsl's worker-command arguments that name files of the driver, and what a pool elsewhere gets instead:
# its own copy of the keys, and no log config. Parsl pickles the driver's log config (fedgrid's
# FileLogging) into the run directory too; with ``None`` the pool writes Parsl's default manager.log
# (INFO, DEBUG with worker_debug) in its log folder, as it did before Parsl had log configs.
REMOTE_ARGS = {"--cert_dir {cert_dir} ": f'--cert_dir "${DIR_VAR}" ', "--logconf={logconf} ": "--logconf=None "}


def pool_launch_cmd() -> str:
    """Parsl's worker command for a pool that does not see the driver's filesystem (:data:`REMOTE_ARGS`)."""
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    cmd = DEFAULT_LAUNCH_CMD
    for theirs, ours in REMOTE_ARGS.items():
        if theirs not in cmd:  # a Parsl whose command fedgrid does not know: fail at build, not on a node
            raise RuntimeError(f"Parsl's worker command has no {theirs.strip()!r}; fedgrid cannot point it at "
                               "what it ships to pods and instances")
        cmd = cmd.replace(theirs, ours, 1)
    return cmd


def prelude(fill: list[str]) -> str:
    """Shell that makes the pool's private folder ``$fedgrid_certs``, runs ``fill`` (commands that
    put the pool files in it), makes them owner-only, and removes the folder when the shell exits
    (its EXIT trap replaces one that ``worker_init`` set). One ``&&`` chain: any failure leaves the
    pool unstarted."""
    d = f'"${DIR_VAR}"'
    return " && ".join([f"{DIR_VAR}=$(mktemp -d)", f"trap 'rm -rf {d}' EXIT", f"chmod 700 {d}", *fill,
                        f"chmod 600 {d}/*"])


def copy_from(mount: str) -> str:
    """The :func:`prelude` for files mounted at ``mount`` (a Kubernetes Secret volume)."""
    sources = " ".join(shlex.quote(f"{mount.rstrip('/')}/{name}") for name in POOL_FILES)
    return prelude([f'cp {sources} "${DIR_VAR}"/'])


def write_out(files: dict[str, bytes]) -> str:
    """The :func:`prelude` that carries ``files`` in itself (base64), for a command sent as EC2 user
    data."""
    return prelude([f"printf %s {base64.b64encode(data).decode()} | base64 -d > \"${DIR_VAR}\"/{shlex.quote(name)}"
                    for name, data in sorted(files.items())])


class InCommand:
    """The files travel inside the worker command itself (aws: the command is the instance's user
    data); nothing is left anywhere to withdraw."""

    def publish(self, files: dict[str, bytes]) -> str:
        return write_out(files)

    def withdraw(self) -> None:
        pass


def attach(executor: Any, delivery: Delivery) -> Any:
    """Make ``executor`` (an HTEX built with :func:`pool_launch_cmd`) deliver its pool files through
    ``delivery`` once it has made them, and withdraw them at shutdown; returns the executor.

    Parsl makes the certificates and composes the worker command inside ``start()``, and the scaling
    strategy submits the first block only after it returns; so ``start`` (and ``shutdown``) are
    wrapped on this one executor. A subclass would do the same but would change the executor's name
    in ``fedgrid check`` and Parsl's logs, which say what it is: Parsl's HighThroughputExecutor.
    """
    start, shutdown = executor.start, executor.shutdown

    def start_then_publish() -> None:
        start()
        shell = delivery.publish(pool_files(executor.cert_dir))
        # Parsl formats the command once more per block ({block_id}): braces of ours stay literal
        executor.launch_cmd = shell.replace("{", "{{").replace("}", "}}") + " && " + executor.launch_cmd

    def shutdown_then_withdraw(*args: Any, **kwargs: Any) -> Any:
        try:
            return shutdown(*args, **kwargs)
        finally:
            delivery.withdraw()

    executor.start, executor.shutdown = start_then_publish, shutdown_then_withdraw
    return executor
