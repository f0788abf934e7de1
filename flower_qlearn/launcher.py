"""A Hydra launcher that runs a multirun's batched jobs together: ``hydra/launcher=batched``.

Hydra's basic launcher runs the jobs of a sweep one after the other, each a whole experiment.
This one works in three passes, in one process:

1. compose every job's config (what the basic launcher's ``load_sweep_config`` gives; jobs
   that differ only in values are composed from one composition of their group choices,
   :class:`~flower_qlearn.sweep_compose.SweepComposer`) and note the jobs whose engine is
   ``batched`` (:mod:`flower_qlearn.batched`);
2. compute those jobs together: jobs that differ only in seed, behavior or heterogeneity form a
   group that one compiled call per round runs (:func:`flower_qlearn.batched.run_jobs`);
3. finish every job, in order: a computed job gets what Hydra's ``run_job`` would give it
   (its directory, ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` written as
   Hydra writes them, its log, the job callbacks with a completed ``JobReturn``) and its
   results (:func:`flower_qlearn.batched.write_job`), without ``run_job``'s per-job deep copies
   of the whole config (:func:`finish_computed`); any other job (another engine, an invalid
   one) runs through Hydra's own ``run_job``, one by one.

So every job's directory holds the same files as with the basic launcher, and the sweep
callbacks (figures, progress: :mod:`flower_qlearn.sweep_callback`) see the same job returns
(``tests/test_batched.py`` compares the files of both launchers).

Hydra instantiates launchers only from its ``hydra_plugins`` namespace; the installed package
stays ``flower_qlearn`` alone, so :func:`register` adds the class to Hydra's plugin registry
under ``hydra_plugins.flower_qlearn.BatchedLauncher`` (the ``_target_`` of
``conf/hydra/launcher/batched.yaml``); the CLI calls it before Hydra starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .batched import BatchJob
from .sweep_compose import SweepComposer, task_config
from .yaml_text import SectionTexts, config_yaml

log = logging.getLogger(__name__)

#: Hydra's name of the launcher class (a ``_target_`` must live under ``hydra_plugins``).
HYDRA_NAME = "hydra_plugins.flower_qlearn.BatchedLauncher"

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
        self.composer = SweepComposer(hydra_context.config_loader, config, without_job_figures)
        self.composer.install()  # the sweeper's validation composes the jobs for us
        self.yaml_texts = SectionTexts()  # the .hydra files' sections shared by the jobs

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
            overrides = without_job_figures(overrides)  # what the composer composes
            sweep_config = self.composer.load(list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
                sweep_config.hydra.runtime.output_dir = os.path.abspath(_job_dir(sweep_config))
            configs.append((idx, overrides, sweep_config))
        jobs = [_batch_job(cfg, self.composer.task_config) for _, _, cfg in configs]
        batch = [job for job, _ in filter(None, jobs)]
        log.info("Launching %d jobs (%d batched)", len(configs), len(batch))
        _compute(batch)
        runs = []
        for (idx, overrides, sweep_config), computed in zip(configs, jobs, strict=True):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            if computed is not None:
                runs.append(self.finish_computed(sweep_config, *computed))
                continue
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
        return runs

    def finish_computed(
        self, sweep_config: DictConfig, job: BatchJob, task_cfg: DictConfig
    ) -> JobReturn:
        """What ``run_job`` does for a job whose results pass 2 computed, more cheaply.

        The same files (Hydra's ``_save_config`` for the three ``.hydra`` files, the job's log
        with the job-logging format, the results by :func:`~flower_qlearn.batched.write_job`),
        the same callbacks and a completed ``JobReturn`` (its ``hydra_cfg`` is the job's whole
        config, hydra node included, rather than a copy of the hydra node alone); the job's
        one-line result goes to the console as the CLI's task prints it.
        """
        from hydra.core.utils import JobRuntime, _flush_loggers, env_override

        from .api import final_metric, job_log_handler, result_line
        from .batched import write_job
        from .outputs import hold_output_dir
        from .schema import ConfigError

        assert self.hydra_context is not None
        callbacks = self.hydra_context.callbacks
        HydraConfig.instance().cfg = sweep_config  # what HydraConfig.get() returns in the hooks
        job_dir = Path(str(sweep_config.hydra.runtime.output_dir))
        job_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as held:
            try:  # before anything is written into it
                held.enter_context(hold_output_dir(job.output_dir))
            except ConfigError as exc:  # in use by another run: as the CLI's task says it
                print(f"flower-qlearn: {exc}", file=sys.stderr)
                sys.exit(2)
            subdir = sweep_config.hydra.output_subdir
            if subdir is not None:
                self._save_hydra_files(job_dir / str(subdir), sweep_config, task_cfg)
            handler = job_log_handler(job_dir)
            root = logging.getLogger()
            root.addHandler(handler)
            held.callback(handler.close)
            held.callback(root.removeHandler, handler)
            with env_override(sweep_config.hydra.job.env_set):
                callbacks.on_job_start(config=sweep_config, task_function=self.task_function)
                write_job(job)
                _, value = final_metric(job.history)
                print(result_line(job.settings["strategy"]["name"], job.history, job.output_dir))
            ret = JobReturn(
                overrides=list(sweep_config.hydra.overrides.task), cfg=task_cfg,
                hydra_cfg=sweep_config, status=JobStatus.COMPLETED, _return_value=value,
                working_dir=str(job_dir) if sweep_config.hydra.job.chdir else os.getcwd(),
                task_name=JobRuntime.instance().get("name"))
            _flush_loggers()
            callbacks.on_job_end(config=sweep_config, job_return=ret)
        return ret


    def _save_hydra_files(self, directory: Path, sweep_config: DictConfig, task_cfg: DictConfig
                          ) -> None:
        """Hydra's ``_save_config`` of ``config.yaml``, ``hydra.yaml`` and ``overrides.yaml``
        (``OmegaConf.to_yaml`` of each node), faster: on libyaml's emitter
        (:func:`~flower_qlearn.yaml_text.config_yaml`) and, for a job the composer made from
        its group set's composition, with the text of every section the job shares with the
        other jobs of its group set emitted once (:class:`~flower_qlearn.yaml_text.
        SectionTexts`)."""
        directory.mkdir(parents=True, exist_ok=True)
        hydra_node = {"hydra": sweep_config.hydra}
        changes = self.composer.changes(sweep_config)
        if changes is None:
            texts = [config_yaml(task_cfg), config_yaml(hydra_node)]
        else:
            group_set, paths = changes
            paths += _SET_BY_LAUNCH
            hydra = [p for p in paths if p.split(".", 1)[0] == "hydra"]
            task = [p for p in paths if p.split(".", 1)[0] != "hydra"]
            texts = [self.yaml_texts.text(task_cfg, ("config.yaml", group_set), task),
                     self.yaml_texts.text(hydra_node, ("hydra.yaml", group_set), hydra)]
        texts.append(config_yaml(sweep_config.hydra.overrides.task))
        for name, text in zip(("config.yaml", "hydra.yaml", "overrides.yaml"), texts,
                              strict=True):
            (directory / name).write_text(text, encoding="utf-8")


#: The entries of a job's hydra node :meth:`BatchedLauncher.launch` sets.
_SET_BY_LAUNCH = ["hydra.job.id", "hydra.job.num", "hydra.runtime.output_dir"]


def _job_dir(sweep_config: DictConfig) -> str:
    """The job's directory, as ``run_job`` names it (``hydra.sweep.dir``/``subdir``)."""
    return os.path.join(
        str(OmegaConf.select(sweep_config, "hydra.sweep.dir")),
        str(OmegaConf.select(sweep_config, "hydra.sweep.subdir")),
    )


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

    if batch:
        run_jobs(batch)


def _batch_job(
    sweep_config: DictConfig, task_config: Callable[[DictConfig], DictConfig] = task_config
) -> tuple[BatchJob, DictConfig] | None:
    """The job of ``sweep_config`` and its task config, if it runs on the batched engine and
    is valid, else None.

    Its settings are those its task would see (the run config of
    :func:`flower_qlearn.api.run_config_for` with the job's output directory, as ``run_job``
    names it); its task config is ``run_job``'s (the config without its ``hydra`` node). An
    invalid job is left to pass 3, which fails it with its one-line reason.
    """
    from . import config as fq_config
    from .api import settings_for

    if OmegaConf.select(sweep_config, "engine.name") != "batched":
        return None
    HydraConfig.instance().cfg = sweep_config  # for ${hydra:...} in the job's config
    task_cfg = task_config(sweep_config)
    job_dir = str(sweep_config.hydra.runtime.output_dir)
    output_dir = Path(task_cfg.output_dir or job_dir).resolve()
    try:
        fq_config.validate(task_cfg)
    except fq_config.ConfigError:
        return None
    settings = settings_for(task_cfg, output_dir)  # what its run config would carry
    return BatchJob(settings=settings, output_dir=output_dir), task_cfg


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
