"""Where the Flower apps run: the embedded in-process grid, Flower's Ray simulation, deployment.

The in-process engine is a :class:`flwr.serverapp.Grid` that hands every pushed ``Message``
straight to the real ``ClientApp`` of its destination node, each node keeping one persistent
``Context`` (so per-agent state survives across rounds exactly as on a SuperNode). The ServerApp,
the strategy and the ClientApp are the same objects that run under Ray or on a SuperLink; only the
transport differs, which is why the engines give identical numbers for the same config and seed.

:func:`run_experiment` is the Python entry point; the CLI calls :func:`execute` from Hydra.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import NUM_PARTITIONS_KEY, PARTITION_ID_KEY, SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from omegaconf import DictConfig

from . import config as fq_config

log = logging.getLogger("flower_qlearn")

#: Node ids of the in-process engine: deterministic, so logs and checkpoints are reproducible.
FIRST_NODE_ID = 1001


class InProcessGrid(Grid):
    """A Flower ``Grid`` that runs each pushed message through a ``ClientApp`` in this process.

    Parameters
    ----------
    client_app
        The real ClientApp (the same object ``flwr`` would load on a SuperNode).
    num_nodes
        Number of virtual SuperNodes; node ``i`` gets ``partition-id = i``.
    run_config
        The Flower run config every node's ``Context`` sees (carries the Hydra overrides).
    node_configs
        Optional extra node config per partition (deployment-style per-node settings).
    concurrent
        False (default): ``push_messages`` runs each ClientApp before returning (deterministic,
        fastest). True: each pushed message runs in its own daemon thread and its reply becomes
        pullable when done, so slow clients are really slow and ``push``/``pull`` loops (DASA's
        ``execution=async``) see genuine asynchrony in-process. ``send_and_receive`` then waits
        for the replies up to its timeout.
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict,
        node_configs: Sequence[dict] | None = None,
        run_id: int | None = None,
        concurrent: bool = False,
    ) -> None:
        self.client_app = client_app
        self.concurrent = bool(concurrent)
        self._replied = threading.Condition()  # guards _replies and _running (concurrent mode)
        self._running: set[str] = set()  # ids of instructions whose ClientApp is still running
        self._run = Run.create_empty(run_id if run_id is not None else secrets.randbits(63))
        self._node_ids = [FIRST_NODE_ID + i for i in range(num_nodes)]
        self.contexts: dict[int, Context] = {}
        for i, node_id in enumerate(self._node_ids):
            node_config = {PARTITION_ID_KEY: i, NUM_PARTITIONS_KEY: num_nodes}
            if node_configs is not None:
                node_config.update(node_configs[i])
            self.contexts[node_id] = Context(
                run_id=self._run.run_id,
                node_id=node_id,
                node_config=node_config,
                state=RecordDict(),
                run_config=dict(run_config),
            )
        self._replies: dict[str, Message] = {}
        self.disconnected: set[int] = set()  # nodes that receive nothing (fault injection)
        # Messages created on the server side read the task identity (as run_simulation sets it).
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    # --- Grid API -------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:  # noqa: D102 - the run is fixed at construction
        self._run = run

    @property
    def run(self) -> Run:  # noqa: D102
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        """Deprecated in Flower; kept for the abstract interface."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node's ClientApp now; the reply waits to be pulled."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid4().hex
            ids.append(msg.metadata.message_id)
            node_id = msg.metadata.dst_node_id
            if node_id in self.disconnected:
                continue
            if node_id not in self.contexts:
                reply = Message(
                    Error(ErrorCode.UNKNOWN, f"no node with id {node_id}"), reply_to=msg
                )
            elif self.concurrent:
                with self._replied:
                    self._running.add(msg.metadata.message_id)
                threading.Thread(
                    target=self._deliver_later, args=(msg, self.contexts[node_id]), daemon=True
                ).start()
                continue
            else:
                reply = self._deliver(msg, self.contexts[node_id])
            reply.metadata.__dict__["_message_id"] = uuid4().hex
            with self._replied:
                self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Return (and forget) the replies available for ``message_ids``."""
        with self._replied:
            return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push and pull: synchronous mode has every reply ready as soon as the push returns;
        concurrent mode waits until the pushed ClientApps have all returned or ``timeout``."""
        ids = list(self.push_messages(messages))
        if self.concurrent:
            with self._replied:
                self._replied.wait_for(lambda: self._running.isdisjoint(ids), timeout)
        return self.pull_messages(ids)

    # --- checkpoint support ---------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """Every node's ``Context.state`` config records as plain dicts, by partition id."""
        state = {}
        for ctx in self.contexts.values():
            records = {name: dict(rec) for name, rec in ctx.state.config_records.items()}
            state[int(ctx.node_config[PARTITION_ID_KEY])] = records
        return state

    def restore_state(self, state: dict) -> None:
        """Put back what :meth:`checkpoint_state` saved (the agents' Markov states, ...)."""
        for ctx in self.contexts.values():
            records = state.get(int(ctx.node_config[PARTITION_ID_KEY]), {})
            for name, values in records.items():
                ctx.state.config_records[name] = ConfigRecord(values)

    # --- internals ------------------------------------------------------------------------
    def _deliver_later(self, msg: Message, context: Context) -> None:
        # Concurrent mode: runs in the message's own daemon thread (a client that never returns
        # cannot keep the process alive).
        reply = self._deliver(msg, context)
        reply.metadata.__dict__["_message_id"] = uuid4().hex
        with self._replied:
            self._replies[msg.metadata.message_id] = reply
            self._running.discard(msg.metadata.message_id)
            self._replied.notify_all()

    def _deliver(self, msg: Message, context: Context) -> Message:
        # A ClientApp exception becomes an error reply, as Flower's simulation worker does, so a
        # crashing client is counted by the strategy instead of killing the run.
        try:
            return self.client_app(message=msg, context=context)
        except Exception as exc:  # noqa: BLE001
            log.debug("ClientApp raised on node %s:\n%s", context.node_id, traceback.format_exc())
            return Message(
                Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}"),
                reply_to=msg,
            )


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What a run leaves behind, read back from its output directory."""

    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    q_table: np.ndarray | None = None
    output_dir: Path | None = None

    @classmethod
    def load(cls, output_dir: str | Path) -> RunResult:
        """Read ``metrics.csv``, ``summary.json`` and ``q_table.npy`` of a finished run."""
        from .server_app import read_metrics

        out = Path(output_dir)
        return cls(
            history=read_metrics(out / "metrics.csv"),
            summary=json.loads((out / "summary.json").read_text()),
            q_table=np.load(out / "q_table.npy"),
            output_dir=out,
        )


def default_output_dir() -> Path:
    """``outputs/<date>/<time>`` under the working directory, like Hydra's run dir."""
    now = _dt.datetime.now()
    return Path("outputs") / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S-%f")


def run_server_app(server_app: ServerApp, grid: Grid, run_config: dict) -> None:
    """Run ``server_app`` over ``grid`` in this process, with a SuperLink-side ``Context``."""
    context = Context(
        run_id=grid.run.run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=dict(run_config),
    )
    server_app(grid, context)


def run_config_for(overrides: Sequence[str], output_dir: Path) -> dict:
    """The Flower run config that carries a composed experiment to the apps."""
    return {
        fq_config.OVERRIDES_KEY: fq_config.overrides_to_str(overrides),
        fq_config.OUTPUT_DIR_KEY: str(Path(output_dir).resolve()),
    }


def execute(cfg: DictConfig, overrides: Sequence[str], output_dir: Path) -> RunResult:
    """Run the composed experiment ``cfg`` on its engine and return its results.

    ``overrides`` must be the Hydra overrides that composed ``cfg``: they travel to the
    ServerApp and ClientApps, which compose the same config wherever they run.
    """
    fq_config.register(overrides, cfg)
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    run_config = run_config_for(overrides, output_dir)
    engine = cfg.engine.name
    if engine == "inprocess":
        from .client_app import app as client_app
        from .server_app import app as server_app

        grid = InProcessGrid(
            client_app,
            cfg.num_clients,
            run_config,
            concurrent=bool(cfg.engine.get("concurrent", False)),
        )
        run_server_app(server_app, grid, run_config)
    elif engine == "ray":
        run_ray(cfg, run_config)
    elif engine == "deployment":
        run_deployment(cfg, run_config)
    else:
        raise fq_config.ConfigError(
            f"invalid config: engine.name={engine!r} cannot be launched from this entry point; "
            "expected inprocess, ray or deployment"
        )
    return RunResult.load(output_dir)


def run_ray(cfg: DictConfig, run_config: dict) -> None:
    """Run the same apps through Flower's Ray simulation runtime (``run_simulation``)."""
    from flwr.simulation import run_simulation

    from .client_app import make_client_app
    from .server_app import make_server_app

    backend_config = {
        "client_resources": {"num_cpus": cfg.engine.num_cpus_per_client, "num_gpus": 0.0},
        "init_args": {"logging_level": logging.WARNING, "log_to_driver": True},
    }
    run_simulation(
        server_app=make_server_app(run_config),
        client_app=make_client_app(run_config),
        num_supernodes=cfg.num_clients,
        backend_config=backend_config,
    )


def run_experiment(overrides: Sequence[str] = ()) -> RunResult:
    """Compose, validate and run one experiment from Python.

    Parameters
    ----------
    overrides
        Hydra overrides, exactly as on the command line, e.g.
        ``["strategy=importance", "client.behavior=disjoint", "num_rounds=50"]``.
        ``output_dir=PATH`` chooses the output directory (default ``outputs/<date>/<time>``).

    Returns
    -------
    RunResult
        ``.history`` (one dict per round), ``.summary``, ``.q_table``, ``.output_dir``.
    """
    overrides = list(overrides)
    cfg = fq_config.compose(overrides)
    output_dir = Path(cfg.output_dir) if cfg.output_dir else default_output_dir()
    return execute(cfg, overrides, output_dir)


# ------------------------------------------------------------------------------------------
# Deployment: `flwr run` against a running SuperLink (engine=deployment)
# ------------------------------------------------------------------------------------------

#: SuperLink connection written into a private ``FLWR_HOME`` when ``engine.connection`` is null.
DEPLOYMENT_CONNECTION = "flower-qlearn"


def project_dir() -> Path:
    """The Flower App directory that ``flwr run`` bundles into a FAB: this project's root."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise fq_config.ConfigError(
            f"invalid config: engine.app_dir is null but {root} has no pyproject.toml "
            "(installed without sources); set engine.app_dir to a flower-qlearn checkout"
        )
    return root


def flwr_command(name: str = "flwr") -> str:
    """Path of a Flower executable (``flwr``, ``flower-superlink``, ...): venv first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name!r} is neither beside {sys.executable} nor on PATH")
    return found


def flwr_env(flwr_home: str | Path, base: dict | None = None) -> dict[str, str]:
    """Environment for Flower CLI/runtime processes: their own ``FLWR_HOME``, offline-safe.

    Runtime dependency installation (``uv sync`` per run) is off because the project is already
    installed and it needs the network; so are the update check and telemetry. The interpreter's
    bin directory goes first on ``PATH`` because ``flwr`` and the SuperLink spawn
    ``flower-superlink``/``flower-superexec``/``flwr-serverapp`` by name.
    """
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "FLWR_HOME": str(Path(flwr_home).expanduser().resolve()),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
        }
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def write_connection(
    flwr_home: str | Path,
    name: str,
    address: str,
    *,
    root_certificates: str | Path | None = None,
    insecure: bool = False,
) -> Path:
    """Add SuperLink connection ``name`` to ``FLWR_HOME/config.toml`` (the Flower CLI config)."""
    import tomllib

    import tomli_w

    path = Path(flwr_home) / "config.toml"
    data = tomllib.loads(path.read_text()) if path.is_file() else {}
    links = data.setdefault("superlink", {})
    conn: dict = {"address": str(address)}
    if insecure:
        conn["insecure"] = True
    elif root_certificates:
        conn["root-certificates"] = str(Path(root_certificates).expanduser().resolve())
    links[name] = conn
    links.setdefault("default", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data))
    return path


def flwr_json(args: Sequence[str], env: dict, timeout: float = 120.0) -> dict:
    """Run ``flwr ARGS --format json`` and return its JSON answer; raise on failure."""
    proc = subprocess.run(
        [flwr_command(), *args, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    start, end = proc.stdout.find("{"), proc.stdout.rfind("}")
    try:
        payload = json.loads(proc.stdout[start : end + 1]) if 0 <= start < end else {}
    except json.JSONDecodeError:
        payload = {}
    if proc.returncode != 0 or not payload.get("success", False):
        detail = payload.get("error-message") or (proc.stderr or proc.stdout).strip()[-2000:]
        raise RuntimeError(f"`flwr {' '.join(args)}` failed (exit {proc.returncode}): {detail}")
    return payload


def submit_run(
    run_config: dict,
    connection: str,
    env: dict,
    *,
    app_dir: str | Path | None = None,
    federation_config: dict | None = None,
) -> int:
    """Submit the Flower App to the SuperLink of ``connection`` with ``flwr run``; return its id.

    The run config travels as a TOML file, so Hydra overrides need no shell quoting.
    ``federation_config`` (e.g. ``{"num-supernodes": 3}``) configures a simulation SuperLink.
    """
    import tomli_w

    app = Path(app_dir).expanduser().resolve() if app_dir else project_dir()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as fh:
        fh.write(tomli_w.dumps({str(k): v for k, v in run_config.items()}))
    try:
        args = ["run", str(app), connection, "--run-config", fh.name]
        if federation_config:
            # key=value pairs, values as TOML scalars (JSON's spelling agrees for these)
            pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in federation_config.items())
            args += ["--federation-config", pairs]
        payload = flwr_json(args, env)
    finally:
        os.unlink(fh.name)
    return int(payload["run-id"])


def run_status(run_id: int, connection: str, env: dict) -> str:
    """Status of a run on the SuperLink, e.g. ``running`` or ``finished:completed``."""
    payload = flwr_json(["ls", connection, "--run-id", str(run_id)], env)
    return str(payload["runs"][0]["status"])


def run_log(run_id: int, connection: str, env: dict) -> str:
    """The run's log as kept by the SuperLink (``flwr log --show``)."""
    proc = subprocess.run(
        [flwr_command(), "log", str(run_id), connection, "--show"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.stdout + proc.stderr


def wait_for_run(
    run_id: int, connection: str, env: dict, *, timeout: float = 3600.0, poll_interval: float = 2.0
) -> str:
    """Poll the run's status until it is finished; stop it and raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        status = run_status(run_id, connection, env)
        if status.startswith("finished"):
            return status
        if time.monotonic() > deadline:
            subprocess.run(
                [flwr_command(), "stop", str(run_id), connection],
                env=env,
                capture_output=True,
                timeout=60,
                check=False,
            )
            raise TimeoutError(
                f"run {run_id} still {status} after {timeout:.0f} s (engine.run_timeout); stopped"
            )
        time.sleep(poll_interval)


def run_deployment(cfg: DictConfig, run_config: dict) -> None:
    """Submit the composed run to the SuperLink of ``cfg.engine`` with ``flwr run``; wait for it.

    The SuperLink's ServerApp composes the same config from ``run_config["overrides"]`` and writes
    the outputs into ``run_config["output-dir"]`` (absolute), which this host must see (same
    machine or a shared file system) for :func:`execute` to read them back. SuperNodes must be
    running, one per agent, with ``--node-config "partition-id=k num-partitions=K"``.
    """
    e = cfg.engine
    if e.root_certificates and not e.insecure and not Path(e.root_certificates).is_file():
        raise fq_config.ConfigError(
            f"invalid config: engine.root_certificates={e.root_certificates!r} is not a file"
        )
    own_home = not e.flwr_home
    flwr_home = (
        Path(tempfile.mkdtemp(prefix="flower-qlearn-flwr-home-"))
        if own_home
        else Path(e.flwr_home).expanduser()
    )
    try:
        env = flwr_env(flwr_home)
        connection = e.connection or DEPLOYMENT_CONNECTION
        if not e.connection:
            write_connection(
                flwr_home,
                connection,
                e.address,
                root_certificates=e.root_certificates,
                insecure=bool(e.insecure),
            )
        try:
            run_id = submit_run(run_config, connection, env, app_dir=e.app_dir)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{exc}\n(check engine.address={e.address}, engine.root_certificates="
                f"{e.root_certificates}, engine.insecure={e.insecure}, engine.connection="
                f"{e.connection}; the SuperLink must be running)"
            ) from None
        log.info("flower-qlearn: submitted run %s to SuperLink %s", run_id, e.address or connection)
        status = wait_for_run(
            run_id,
            connection,
            env,
            timeout=float(e.run_timeout),
            poll_interval=float(e.poll_interval),
        )
        if status != "finished:completed":
            tail = run_log(run_id, connection, env)[-3000:]
            raise RuntimeError(f"deployment run {run_id} ended {status}; its log ends:\n{tail}")
        out = Path(run_config[fq_config.OUTPUT_DIR_KEY])
        if not (out / "summary.json").is_file():
            raise RuntimeError(
                f"deployment run {run_id} completed but {out} has no summary.json: the SuperLink "
                "writes outputs on its own host; use a directory both machines see"
            )
    finally:
        if own_home:
            shutil.rmtree(flwr_home, ignore_errors=True)
