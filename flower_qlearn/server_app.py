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


def handle_run(grid: Grid, context: Context) -> list[dict]:
    """Run the experiment that ``context.run_config`` describes over ``grid``."""
    _log_to_flower()
    cfg = fq_config.from_run_config(context.run_config)
    settings = fq_config.settings(cfg)
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
