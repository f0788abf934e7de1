"""A Hydra launcher that runs a multirun's batched jobs together: ``hydra/launcher=batched``.

Hydra's basic launcher runs the jobs of a sweep one after the other, each a whole experiment.
This one works in three passes, in one process:

1. compose every job's config (what the basic launcher's ``load_sweep_config`` gives; jobs
   that differ only in values are composed from one composition of their group choices,
   :class:`~flower_qlearn.sweep_compose.SweepComposer`) and note the jobs whose engine is
   ``batched`` (:mod:`flower_qlearn.batched`);
2. compute those jobs together: jobs that differ only in seed, behavior or heterogeneity form a
   group that one compiled call per round runs (:func:`flower_qlearn.batched.run_jobs`);
3. run every job through Hydra's own ``run_job``, in order, exactly as the basic launcher does:
   each job gets its directory, ``.hydra/``, its log, its callbacks; a batched job's task then
   only writes the results pass 2 computed (:func:`take_computed`), any other job (another
   engine) runs there, one by one.

So every job's directory holds the same files as with the basic launcher, and the sweep
callbacks (figures, progress: :mod:`flower_qlearn.sweep_callback`) see the same job returns.

Hydra instantiates launchers only from its ``hydra_plugins`` namespace; the installed package
stays ``flower_qlearn`` alone, so :func:`register` adds the class to Hydra's plugin registry
under ``hydra_plugins.flower_qlearn.BatchedLauncher`` (the ``_target_`` of
``conf/hydra/launcher/batched.yaml``); the CLI calls it before Hydra starts.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .batched import BatchJob
from .sweep_compose import SweepComposer

log = logging.getLogger(__name__)

#: Hydra's name of the launcher class (a ``_target_`` must live under ``hydra_plugins``).
HYDRA_NAME = "hydra_plugins.flower_qlearn.BatchedLauncher"

#: Jobs computed by pass 2, by :func:`settings_key`, waiting for their task to write them.
_COMPUTED: dict[str, BatchJob] = {}


def settings_key(settings: Mapping) -> str:
    """The identity of a job: its whole validated settings (output directory included)."""
    return json.dumps(settings, sort_keys=True, default=repr)


def take_computed(settings: Mapping) -> BatchJob | None:
    """The computed job with exactly these settings, if pass 2 made one (it is forgotten)."""
    return _COMPUTED.pop(settings_key(settings), None)


class BatchedLauncher(Launcher):
    """Hydra launcher: batched jobs computed together, every job then run by ``run_job``."""

    def __init__(self) -> None:
        super().__init__()
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Keep what ``launch`` needs (Hydra's Launcher interface)."""
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.composer = SweepComposer(hydra_context.config_loader, config)
        self.composer.install()  # the sweeper's validation composes the jobs for us

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Compose all jobs, compute the batched ones together, then run each job in order."""
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            overrides = without_job_figures(overrides)
            sweep_config = self.composer.load(list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            configs.append((idx, overrides, sweep_config))
        batch = [job for job in (_batch_job(cfg) for _, _, cfg in configs) if job is not None]
        log.info("Launching %d jobs (%d batched)", len(configs), len(batch))
        _compute(batch)
        runs = []
        for idx, overrides, sweep_config in configs:
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            runs.append(
                run_job(
                    hydra_context=self.hydra_context,
                    task_function=self.task_function,
                    config=sweep_config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        _COMPUTED.clear()
        return runs


def without_job_figures(overrides: Sequence[str]) -> list[str]:
    """A job's overrides plus ``figures=false`` unless the user set ``figures`` for the sweep.

    The sweep's figures are drawn once when it ends (:class:`~.sweep_callback.SweepFigures`);
    hundreds of per-job figures would cost more than the batched computation itself. The
    override is visible in the job's ``.hydra/overrides.yaml`` and ``summary.json``.
    """
    overrides = list(overrides)
    if not any(o.lstrip("+~").split("=", 1)[0] == "figures" for o in overrides):
        overrides.append("figures=false")
    return overrides


def _compute(batch: list[BatchJob]) -> None:
    from .batched import run_jobs

    if not batch:
        return
    run_jobs(batch)
    for job in batch:
        _COMPUTED[settings_key(job.settings)] = job


def _batch_job(sweep_config: DictConfig) -> BatchJob | None:
    """The job of ``sweep_config`` if it runs on the batched engine and is valid, else None.

    Its settings are those its task will see (:func:`flower_qlearn.api.run_config_for` with the
    job's output directory, as ``run_job`` names it). An invalid job is left to pass 3, which
    fails it with its one-line reason.
    """
    from . import config as fq_config
    from .api import run_config_for

    if OmegaConf.select(sweep_config, "engine.name") != "batched":
        return None
    HydraConfig.instance().set_config(sweep_config)  # for ${hydra:...} in the job's config
    task_cfg = copy.deepcopy(sweep_config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    job_dir = os.path.join(
        str(OmegaConf.select(sweep_config, "hydra.sweep.dir")),
        str(OmegaConf.select(sweep_config, "hydra.sweep.subdir")),
    )
    output_dir = Path(task_cfg.output_dir or os.path.abspath(job_dir)).resolve()
    try:
        fq_config.validate(task_cfg)
    except fq_config.ConfigError:
        return None
    run_config = run_config_for(task_cfg, output_dir)
    settings = fq_config.settings(fq_config.from_run_config(run_config))
    return BatchJob(settings=settings, output_dir=output_dir)


def register() -> None:
    """Make ``hydra/launcher=batched`` instantiable: register the class with Hydra's plugins.

    Hydra imports a plugin by its ``_target_``, which must start with ``hydra_plugins.``: the
    class is exposed (not installed) as ``hydra_plugins.flower_qlearn.BatchedLauncher``, a
    module made here in ``sys.modules``.
    """
    import sys
    import types

    from hydra.core.plugins import Plugins

    module_name, _, class_name = HYDRA_NAME.rpartition(".")
    module = sys.modules.get(module_name)
    if module is None:
        module = types.ModuleType(module_name, "flower-qlearn's Hydra launcher (see flower_qlearn."
                                  "launcher); made at run time, not installed")
        sys.modules[module_name] = module
    if not hasattr(module, class_name):
        setattr(module, class_name, type(class_name, (BatchedLauncher,), {
            "__module__": module_name, "__doc__": BatchedLauncher.__doc__}))
    plugins = Plugins.instance()
    if HYDRA_NAME not in plugins.class_name_to_class:
        plugins.register(getattr(module, class_name))
