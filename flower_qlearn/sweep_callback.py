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


class SweepProgress(Callback):
    """Hydra callback: after each job of a multirun, ``[multirun] 3/40 jobs done, ... ETA ...``.

    The total is counted when the multirun starts (the sweeper's ``params`` of an experiment
    config and the command line's sweeps, as Hydra's basic sweeper combines them); jobs done are
    counted on disk, so the line is right whichever process ran the job (joblib workers too).
    """

    def on_multirun_start(self, config, **kwargs) -> None:  # noqa: D102 - Hydra's hook
        import math
        import os
        import time

        from hydra.core.override_parser.overrides_parser import OverridesParser

        from .progress import SWEEP_START_ENV, SWEEP_TOTAL_ENV, forget_sweep

        params = config.hydra.sweeper.get("params") or {}
        lines = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
        sizes: dict[str, int] = {}
        try:
            for ov in OverridesParser.create().parse_overrides(lines):
                sweep = ov.is_sweep_override()
                sizes[ov.get_key_element()] = len(list(ov.sweep_string_iterator())) if sweep else 1
        except Exception:  # noqa: BLE001 - progress must never break a sweep
            return
        forget_sweep(str(config.hydra.sweep.dir))
        os.environ[SWEEP_TOTAL_ENV] = str(math.prod(sizes.values()))
        os.environ[SWEEP_START_ENV] = str(time.time())

    def on_job_end(self, config, job_return, **kwargs) -> None:  # noqa: D102 - Hydra's hook
        from hydra.core.hydra_config import HydraConfig

        from .progress import job_done_line

        try:
            line = job_done_line(HydraConfig.get().sweep.dir)
        except Exception:  # noqa: BLE001 - progress must never break a sweep
            return
        if line:
            logging.getLogger("flower_qlearn").info("%s", line)
