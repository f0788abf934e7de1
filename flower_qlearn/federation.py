"""A secured local Flower federation (SuperLink + N SuperNodes on 127.0.0.1) that runs this app.

Why: the in-process engine never opens a socket; this launcher runs the same ServerApp and
ClientApp on Flower's real infrastructure, with the security a real deployment needs: TLS with a
throw-away CA (:mod:`flower_qlearn.tls`; nothing runs ``--insecure`` unless asked to), SuperNode
authentication (each node's key registered with ``flwr supernode register`` before it starts;
an unregistered key is refused), and ``--node-config "partition-id=k num-partitions=N"`` so that
SuperNode ``k`` is agent ``k``. ``simulation=True`` starts a simulation SuperLink instead (no
SuperNodes; ``flwr run`` with ``num-supernodes``): the runtime ``engine=ray`` runs on.

Every process gets its own directory, ``FLWR_HOME`` and log under ``workdir`` and is stopped by
pid (SIGTERM, then SIGKILL) with the helpers Flower spawned for it, on exit, on exceptions and on
Ctrl-C; each also carries a marker in its environment, so what left the process tree (Ray's
daemons) is found and stopped too. A temporary ``workdir`` is removed on stop. Example (the
command line is ``scripts/local_federation.py``)::

    with LocalFederation(num_nodes=3) as fed:
        result = fed.run(["strategy=importance", "num_clients=3", "num_rounds=3"])
"""

from __future__ import annotations

import json
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from .deployment import (
    flwr_command,
    flwr_env,
    flwr_json,
    run_log,
    submit_run,
    wait_for_run,
    write_connection,
)
from .processes import (  # noqa: F401 - re-exported: the federation's process tools
    HOST,
    MARKER,
    RUN_PROCESSES,
    Process,
    _alive,
    _is_run_process,
    _tail,
    descendants,
    free_port,
    marked_processes,
    stop_pids,
)
from .tls import make_node_key, make_tls_certificates

if TYPE_CHECKING:
    from .outputs import RunResult

#: Name of the SuperLink connection in the federation's CLI ``FLWR_HOME/config.toml``.
CONNECTION = "local-federation"


class LocalFederation:
    """A SuperLink and ``num_nodes`` SuperNodes on 127.0.0.1, with TLS and node authentication.

    Parameters
    ----------
    workdir
        Everything goes here: certificates, keys, one directory and log per process, the CLI's
        ``FLWR_HOME``. ``None``: a new temporary directory, removed by :meth:`stop` unless
        ``keep_workdir``. A directory given here is never removed.
    num_nodes
        SuperNodes to start; node ``k`` gets ``partition-id=k num-partitions=num_nodes``.
    tls
        Generate certificates and serve with them (default). ``False`` runs ``--insecure``.
    auth
        SuperNode authentication with registered keys (default; requires ``tls``).
    simulation
        Start a simulation SuperLink (``--simulation``) and no SuperNodes: runs use Flower's
        simulation runtime with ``num-supernodes`` virtual nodes.
    node_configs
        Extra node config per partition, e.g. ``[{"region": "eu"}, ...]``.
    keep_workdir
        Keep a temporary ``workdir`` after :meth:`stop` (to read the logs).
    env
        Extra environment variables for every Flower process (e.g. ``RAY_TMPDIR``).
    progress
        Called with one line per startup step (SuperLink up, key registered, node joined).
    """

    def __init__(
        self,
        workdir: str | Path | None = None,
        num_nodes: int = 3,
        *,
        tls: bool = True,
        auth: bool = True,
        simulation: bool = False,
        node_configs: list[dict] | None = None,
        startup_timeout: float = 60.0,
        keep_workdir: bool = False,
        env: dict[str, str] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if auth and not tls:
            raise ValueError("SuperNode authentication requires TLS (Flower refuses it otherwise)")
        self.own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="flower-qlearn-federation-"))
        self.workdir = self.workdir.resolve()
        self.keep_workdir = keep_workdir
        self.num_nodes = 0 if simulation else int(num_nodes)
        self.tls, self.auth, self.simulation = tls, auth and not simulation, simulation
        self.node_configs = node_configs or []
        self.startup_timeout = startup_timeout
        self.env = {**(env or {}), MARKER: secrets.token_hex(8)}
        self.progress = progress or (lambda line: None)
        self._follow = progress is not None  # stream runs' logs only for someone listening
        self.port = 0
        self.certs: dict = {}
        self.superlink: Process | None = None
        self.supernodes: dict[str, Process] = {}  # by name: supernode-<k>, or as given
        self.authorized: set[str] = set()  # supernodes whose key is registered (or auth is off)
        self.node_ids: dict[int, int] = {}  # partition id -> node id registered at the SuperLink
        self.cli_env = flwr_env(self.workdir / "cli-home")
        self._joined: set[str] = set()  # supernodes reported as joined

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The SuperLink's address (Control, Fleet and Runtime API share one port in 1.41)."""
        return f"{HOST}:{self.port}"

    def start(self) -> LocalFederation:
        """Start the SuperLink, register the node keys, start the SuperNodes, wait until online."""
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if self.tls:
                self.certs = make_tls_certificates(self.workdir / "certificates")
            self._start_superlink()
            write_connection(
                self.workdir / "cli-home",
                CONNECTION,
                self.address,
                root_certificates=self.certs.get("ca"),
                insecure=not self.tls,
            )
            if self.auth:  # register every node's public key first, concurrently
                publics = [
                    make_node_key(self.workdir / "keys" / f"supernode-{k}")[1]
                    for k in range(self.num_nodes)
                ]
                with ThreadPoolExecutor(max_workers=4) as pool:
                    self.node_ids.update(enumerate(pool.map(self.register_key, publics)))
                for k, node_id in sorted(self.node_ids.items()):
                    self.progress(f"supernode-{k}: key registered, node id {node_id}")
            for k in range(self.num_nodes):
                self.start_supernode(k, wait=False)
            self.wait_for_nodes(self.num_nodes)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop runs still going, every SuperNode, then the SuperLink, by process id (helpers
        included), then any process still carrying this federation's marker; remove a
        temporary workdir."""
        if self.superlink is not None and self.superlink.running():
            # A run's process exits cleanly (Ray shut down, status pushed) while its SuperLink
            # is up; once the SuperLink is gone it can only be killed.
            stop_pids([p for p in descendants(self.superlink.pid) if _is_run_process(p)])
        nodes = list(self.supernodes.values())
        for proc in nodes:  # all at once: each takes a few seconds to shut down
            proc.terminate()
        for proc in nodes:
            proc.reap()
        if self.superlink is not None:
            self.superlink.stop()
        stop_pids(marked_processes(self.env[MARKER]), grace=5.0)
        if self.own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- processes --------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> Process:
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as fh:
            popen = subprocess.Popen(
                [flwr_command(args[0]), *args[1:]],
                cwd=home,
                env={**flwr_env(home / "flwr-home"), **self.env},
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return Process(name, popen, log)

    def _start_superlink(self) -> None:
        self.port = free_port()
        args = ["flower-superlink", "--host", HOST, "--port", str(self.port)]
        if self.tls:
            certs = self.certs
            args += ["--ssl-ca-certfile", str(certs["ca"]), "--ssl-certfile", str(certs["cert"])]
            args += ["--ssl-keyfile", str(certs["key"])]
        else:
            args.append("--insecure")
        if self.auth:
            args.append("--enable-supernode-auth")
        if self.simulation:
            args.append("--simulation")
        self.superlink = self._spawn("superlink", args)
        self._wait_for_superlink()
        kind = "simulation SuperLink" if self.simulation else "SuperLink"
        tls = "TLS" if self.tls else "insecure"
        self.progress(f"{kind} up at {self.address} ({tls}, pid {self.superlink.pid})")

    def _wait_for_superlink(self) -> None:
        import urllib.error
        import urllib.request

        scheme = "https" if self.tls else "http"
        context = ssl.create_default_context(cafile=str(self.certs["ca"])) if self.tls else None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.superlink.running():
                log = self.superlink.log
                raise RuntimeError(f"flower-superlink exited; {log} ends:\n{_tail(log)}")
            try:
                url = f"{scheme}://{self.address}/health"
                with urllib.request.urlopen(url, timeout=1, context=context) as answer:
                    if 200 <= answer.status < 300:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"SuperLink not up after {self.startup_timeout:.0f} s; see its log")

    def register_key(self, public_key: Path) -> int:
        """Register a SuperNode public key with the SuperLink; return the node id it assigns."""
        payload = flwr_json(["supernode", "register", str(public_key), CONNECTION], self.cli_env)
        return int(payload["node-id"])

    def start_supernode(
        self,
        partition_id: int,
        *,
        register: bool = True,
        name: str | None = None,
        wait: bool = True,
    ) -> Process:
        """Start the SuperNode of agent ``partition_id`` (with its own key and node config).

        ``register=False`` starts it with a key the SuperLink does not know (auth test).
        """
        name = name or f"supernode-{partition_id}"
        node_config = {"partition-id": partition_id, "num-partitions": max(self.num_nodes, 1)}
        if partition_id < len(self.node_configs):
            node_config.update(self.node_configs[partition_id])
        args = [
            "flower-supernode",
            "--superlink",
            self.address,
            "--port",
            str(free_port()),  # the SuperNode's own Runtime API (ClientApp <-> SuperNode)
            "--node-config",
            " ".join(f"{k}={json.dumps(v)}" for k, v in node_config.items()),
        ]
        args += ["--root-certificates", str(self.certs["ca"])] if self.tls else ["--insecure"]
        if self.tls:
            # Flower signs every Fleet request with the node's key when one is given.
            key = self.workdir / "keys" / name
            if not key.is_file():  # else made (and registered) by start()
                _, public = make_node_key(key)
                if self.auth and register:
                    self.node_ids[partition_id] = self.register_key(public)
            args += ["--auth-supernode-private-key", str(key)]
        proc = self._spawn(name, args)
        self.supernodes[name] = proc
        self.progress(f"{name}: started, partition-id={partition_id} (pid {proc.pid})")
        if register or not self.auth:
            self.authorized.add(name)
            if wait:
                self.wait_for_nodes(sum(self.supernodes[n].running() for n in self.authorized))
        return proc

    def nodes(self) -> list[dict]:
        """The SuperLink's node list (``flwr supernode ls``): node-id, status, ..."""
        return list(flwr_json(["supernode", "ls", CONNECTION], self.cli_env)["nodes"])

    def online_node_ids(self) -> set[int]:
        return {int(n["node-id"]) for n in self.nodes() if n["status"] == "online"}

    def wait_for_nodes(self, count: int) -> None:
        """Wait until ``count`` authorized SuperNodes have joined (their log shows a node id)."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            joined = 0
            for name in sorted(self.authorized):
                proc = self.supernodes[name]
                if not proc.running():
                    raise RuntimeError(f"{name} exited; {proc.log} ends:\n{_tail(proc.log)}")
                # Flower logs "SuperNode ID: <id>" once the SuperLink has activated the node.
                if "SuperNode ID:" in proc.log.read_text(errors="replace"):
                    joined += 1
                    if name not in self._joined:
                        self._joined.add(name)
                        self.progress(f"{name}: connected to the SuperLink")
            if joined >= count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} SuperNodes joined; see {self.workdir}/logs")
            time.sleep(0.3)
        for proc in self.supernodes.values():
            proc.remember_helpers()

    # --- runs -------------------------------------------------------------------------------
    def submit(
        self,
        overrides: list[str],
        output_dir: str | Path | None = None,
        *,
        num_supernodes: int | None = None,
    ) -> tuple[int, Path]:
        """Submit ``flwr run`` of this project with Hydra ``overrides``; return (run id, outdir)."""
        from . import config as fq_config
        from .api import run_config_for
        from .outputs import default_output_dir

        items = list(overrides)
        cfg = fq_config.compose(items)
        out = Path(output_dir or cfg.output_dir or default_output_dir()).resolve()
        federation_config = None
        if self.simulation:
            # One CPU per virtual client (Flower's default is 2, i.e. serial on 2 cores).
            num = num_supernodes or int(cfg.num_clients)
            federation_config = {"num-supernodes": num, "client-resources-num-cpus": 1}
        run_config = run_config_for(cfg, out)
        run_id = submit_run(
            run_config, CONNECTION, self.cli_env, federation_config=federation_config
        )
        return run_id, out

    def wait(self, run_id: int, timeout: float = 600.0) -> str:
        """Wait until run ``run_id`` finishes; return its final status. The run's progress
        lines go to :attr:`progress` (the launcher's terminal) while it runs."""
        return wait_for_run(
            run_id,
            CONNECTION,
            self.cli_env,
            timeout=timeout,
            poll_interval=1.0,
            on_line=self.progress if self._follow else None,
        )

    def run(
        self,
        overrides: list[str],
        output_dir: str | Path | None = None,
        *,
        timeout: float = 600.0,
        num_supernodes: int | None = None,
    ) -> RunResult:
        """Submit a run, wait for it and read its outputs back (raise if it did not complete)."""
        from .outputs import RunResult

        run_id, out = self.submit(overrides, output_dir, num_supernodes=num_supernodes)
        status = self.wait(run_id, timeout)
        if status != "finished:completed":
            tail = self.run_log(run_id)[-3000:]
            raise RuntimeError(f"run {run_id} ended {status}; its log ends:\n{tail}")
        return RunResult.load(out)

    def run_log(self, run_id: int) -> str:
        """The run's log as kept by the SuperLink (``flwr log --show``)."""
        return run_log(run_id, CONNECTION, self.cli_env)
