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
import secrets
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import NUM_PARTITIONS_KEY, PARTITION_ID_KEY, SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
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
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict,
        node_configs: Sequence[dict] | None = None,
        run_id: int | None = None,
    ) -> None:
        self.client_app = client_app
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
            else:
                reply = self._deliver(msg, self.contexts[node_id])
            reply.metadata.__dict__["_message_id"] = uuid4().hex
            self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Return (and forget) the replies available for ``message_ids``."""
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push and pull at once: every reply is ready as soon as the push returns."""
        return self.pull_messages(self.push_messages(messages))

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

        grid = InProcessGrid(client_app, cfg.num_clients, run_config)
        server_context = Context(
            run_id=grid.run.run_id,
            node_id=SUPERLINK_NODE_ID,
            node_config={},
            state=RecordDict(),
            run_config=dict(run_config),
        )
        server_app(grid, server_context)
    elif engine == "ray":
        run_ray(cfg, run_config)
    else:
        raise fq_config.ConfigError(
            f"invalid config: engine.name={engine!r} cannot be launched from this entry point; "
            "expected inprocess or ray"
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
