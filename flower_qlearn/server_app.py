"""Flower ServerApp: read the run config, compose and validate once, run the experiment.

The configuration comes from Flower's run config as flat keys named as in the composed config
(``strategy.name``, ``num_rounds``, ``client.learning_rate``, ...; see
:mod:`flower_qlearn.config`), the same on the in-process engine, under ``flwr run`` and on a
SuperLink: ``flwr run . --run-config "strategy.name='importance' num_rounds=50"``. The run
itself is :func:`flower_qlearn.experiment.run_server`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from . import config as fq_config
from .experiment import run_server
from .outputs import default_output_dir


class _ToFlowerLog(logging.Handler):
    """Hands this package's log records to Flower's logger, which ``flwr log`` carries."""

    def emit(self, record: logging.LogRecord) -> None:
        from flwr.common.logger import FLOWER_LOGGER

        FLOWER_LOGGER.log(record.levelno, "%s", record.getMessage())


def _log_to_flower() -> None:
    """In Flower's ServerApp process (``flwr run``, a SuperLink) nothing handles this package's
    log records: route them into Flower's log so that progress shows in ``flwr log``."""
    ours = logging.getLogger("flower_qlearn")
    if not ours.hasHandlers():
        ours.addHandler(_ToFlowerLog())
        ours.setLevel(logging.INFO)
        ours.propagate = False


log = logging.getLogger("flower_qlearn")


def check_nodes(grid: Grid, settings: dict) -> list[int]:
    """The connected nodes at start, checked against ``num_clients``; say at once if they differ.

    Waits up to ``node_wait`` seconds for ``num_clients`` nodes. More nodes than
    ``num_clients`` are refused (agent ``k`` is the node with ``partition-id`` ``k``, so a
    further node is not an agent of this run). Fewer: ``on_missing_nodes=fail`` refuses,
    ``proceed`` warns once and goes on with them (no round waits for the missing ones again:
    :func:`~flower_qlearn.strategies.base.wait_for_nodes`); no node at all is refused either
    way. A refusal is a ``ConfigError`` of one line, raised before anything is written.

    A node that joins after the start (anyone who can register a key with the SuperLink can,
    docs/deployment.md "Security") is not refused here but reply by reply: the strategy's own
    node -> partition map rejects a partition already held or outside ``0..num_clients-1``
    (:func:`~flower_qlearn.strategies.identity.screen_replies`).
    """
    from .inprocess import InProcessGrid
    from .strategies.base import wait_for_nodes

    wanted = int(settings["num_clients"])
    # The in-process grid's nodes all exist from the start: nothing to wait for.
    wait = 0.0 if isinstance(grid, InProcessGrid) else float(settings["node_wait"])
    node_ids = wait_for_nodes(grid, wanted, wait)
    have = len(node_ids)
    fix = f"(flwr run: --federation-config num-supernodes={wanted})"
    connected = f"{have} SuperNode{'' if have == 1 else 's'} connected"
    if have > wanted:
        extra = have - wanted
        raise fq_config.ConfigError(
            f"{connected} but num_clients={wanted}: stop {extra} SuperNode"
            f"{'s' if extra > 1 else ''} or set num_clients={have} {fix}"
        )
    if have < wanted:
        more = wanted - have
        ids = str(have) if more == 1 else f"{have}..{wanted - 1}"
        line = (
            f"{connected} but num_clients={wanted}: start {more} more SuperNode"
            f"{'s' if more > 1 else ''} (partition-id {ids}) or set num_clients={have} {fix}"
        )
        if settings["on_missing_nodes"] == "fail" or have == 0:
            raise fq_config.ConfigError(line)
        log.warning("%s; on_missing_nodes=proceed: going ahead with %d", line, have)
    return node_ids


def handle_run(grid: Grid, context: Context) -> list[dict]:
    """Run the experiment that ``context.run_config`` describes over ``grid``."""
    _log_to_flower()
    cfg = fq_config.from_run_config(context.run_config)
    settings = fq_config.settings(cfg)
    try:
        check_nodes(grid, settings)
    except fq_config.ConfigError as exc:
        log.error("flower-qlearn: %s", exc)  # the one line, in `flwr log` too
        raise
    output_dir = settings.get("output_dir") or default_output_dir().resolve()
    return run_server(grid, settings, Path(str(output_dir)))


def make_server_app() -> ServerApp:
    """A new ServerApp running :func:`handle_run`."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        handle_run(grid, context)

    return server


app = make_server_app()
