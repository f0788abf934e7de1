"""The Hydra callback that draws a multirun's figures and tables when the multirun ends.

Registered in ``conf/config.yaml`` (``hydra.callbacks.sweep_figures``), so Hydra instantiates it
on every ``flower-qlearn`` run, single runs included: this module imports nothing heavy, and
matplotlib is imported only in :meth:`SweepFigures.on_multirun_end`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback


class SweepFigures(Callback):
    """Hydra callback: when a multirun ends, draw its figures and tables into the sweep dir.

    So ``flower-qlearn -m +experiment=NAME`` regenerates an experiment's figure in one command
    (``multirun/NAME/figures/``), with the experiment's ``plot:`` defaults. ``sweep_figures=false``
    turns it off.
    """

    def on_multirun_end(self, config, **kwargs) -> None:  # noqa: D102 - Hydra's hook
        if not config.get("sweep_figures", True):
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            from .plot_command import main  # matplotlib: only now that there is a sweep to draw

            main([str(sweep_dir)])
        except Exception as exc:  # noqa: BLE001 - a plotting failure must not fail the sweep
            logging.getLogger("flower_qlearn").warning(
                "could not draw the sweep figures of %s: %s (run flower-qlearn-plot %s)",
                sweep_dir,
                exc,
                sweep_dir,
            )
