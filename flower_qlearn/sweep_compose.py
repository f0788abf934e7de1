"""Composing the many jobs of a sweep without composing each from scratch.

Hydra composes a job in two steps: the defaults list (which config of each group: the costly
part, ~50-100 ms) and then the plain value overrides (``seed=3``), applied by
``ConfigLoaderImpl._apply_overrides_to_config``. The jobs of a sweep mostly differ only in
values, so both helpers here compose each distinct set of *group* overrides once and apply each
job's value overrides to a copy, with Hydra's own function:

- :class:`SweepComposer` gives a multirun job's whole config (the hydra node included) as
  ``load_sweep_config`` does; the first job of every group set with value overrides is also
  composed by Hydra itself and compared, and any difference turns the shortcut off;
- :func:`validate_jobs` composes and validates every job of a command line (the CLI's check
  before anything runs); any job the shortcut cannot handle is composed as before.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import pickle
from collections.abc import Callable, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("flower_qlearn")

__all__ = ["SweepComposer", "copier", "split_overrides", "task_config", "validate_jobs"]


def copier(cfg: DictConfig) -> Callable[[], DictConfig]:
    """A function that returns a fresh copy of ``cfg`` each call, as ``copy.deepcopy(cfg)``
    would (keys, values, interpolations, flags), 2-6x faster: ``cfg`` is pickled once and each
    copy is one ``pickle.loads`` (OmegaConf's own ``__getstate__``/``__setstate__``) instead of
    ``copy``'s generic walk over every node. Falls back to ``deepcopy`` for a config that
    cannot be pickled."""
    try:
        data = pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - e.g. a value of a type pickle refuses
        return functools.partial(copy.deepcopy, cfg)
    return functools.partial(pickle.loads, data)


def task_config(sweep_config: DictConfig) -> DictConfig:
    """``run_job``'s task config (``deepcopy(config)`` without ``hydra``): OmegaConf's
    ``masked_copy`` of every other key (the same keys, values and interpolations, its nodes
    copies, without copying the hydra node), with the config's struct and readonly flags."""
    task_cfg = OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"])
    OmegaConf.set_struct(task_cfg, OmegaConf.is_struct(sweep_config))
    OmegaConf.set_readonly(task_cfg, OmegaConf.is_readonly(sweep_config))
    return task_cfg


def split_overrides(overrides: Sequence[str], is_group: Callable[[str], bool]):
    """``(group_lines, value_overrides, parsed)`` of a job's override strings.

    A group override picks a config (``strategy=importance``, ``+experiment=x``); a value
    override sets a key (``seed=3``). Returns None if an override is neither a plain group
    choice nor a plain value change (deletions, additions, sweeps): compose those normally.
    """
    parsed = [_parse_override(line) for line in overrides]
    groups, values = [], []
    for ov in parsed:
        if ov.is_sweep_override() or ov.is_delete() or ov.is_force_add():
            return None
        if is_group(ov.key_or_group):
            groups.append(ov.input_line)
        elif ov.is_add() or ov.package is not None:
            return None
        else:
            values.append(ov)
    return groups, values, parsed


@functools.lru_cache(maxsize=8192)
def _parse_override(line: str):
    """Hydra's parse of one override line (``OverridesParser.parse_overrides``, its errors
    included), once per distinct line: the jobs of a sweep repeat all their lines but one or
    two, and the ANTLR parse (~2 ms a job) was a fifth of composing a job. The parsed
    ``Override`` is only read (by Hydra's ``_apply_overrides_to_config``), never changed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([line])[0]


class SweepComposer:
    """``load_sweep_config`` for many jobs, each group set composed once (see module doc)."""

    def __init__(
        self,
        config_loader,
        master_config: DictConfig,
        job_overrides: Callable[[Sequence[str]], list[str]] = list,
    ) -> None:
        self.loader = config_loader
        self.job_overrides = job_overrides  # a job's overrides -> what is composed
        self.master = master_config
        self.enabled = True
        self._hydra_load = config_loader.load_sweep_config  # Hydra's own, kept if patched
        # per set of group choices: (a copier of its composition, one of its task config,
        # what _apply reads of the composition: its hydra override lines, override_dirname's
        # settings)
        self._bases: dict[tuple, tuple[Callable, Callable, list, dict]] = {}
        # whether a key names a config group: asked for every override of every job
        self._is_group = functools.lru_cache(maxsize=None)(config_loader.repository.group_exists)
        self._master_hydra: list | None = None  # the master's hydra override lines
        self._checked: set[tuple] = set()
        self._jobs: dict[tuple, DictConfig] = {}
        # id(job config) -> (that config, its group set's task-config copier, its overrides)
        self._task_values: dict[int, tuple[DictConfig, Callable, list]] = {}
        # id(job config) -> (that config, its group set, the paths its copy of the set changed)
        self._changes: dict[int, tuple[DictConfig, tuple, list[str]]] = {}

    def install(self) -> None:
        """Serve the loader's ``load_sweep_config`` from here while the sweep runs.

        Hydra's sweeper composes every job once to validate the batch before launching it
        (``Sweeper.validate_batch_is_legal``); with this, that composition is the shortcut's and
        the launcher gets the same configs back instead of composing them again.
        """
        def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]):
            if master_config is not self.master:
                return self._hydra_load(master_config, sweep_overrides)
            return self.load(sweep_overrides)

        self.loader.load_sweep_config = load_sweep_config

    def load(self, overrides: Sequence[str]) -> DictConfig:
        """The job's config, as ``config_loader.load_sweep_config(master, overrides)``.

        The same overrides give the same object (composed once per sweep: the sweeper's check
        and the launcher get one composition). ``job_overrides`` is applied first.
        """
        overrides = self.job_overrides(overrides)
        job = tuple(overrides)
        if job not in self._jobs:
            self._jobs[job] = self._compose(overrides)
        return self._jobs[job]

    def _compose(self, overrides: Sequence[str]) -> DictConfig:
        split = split_overrides(overrides, self._is_group) if self.enabled else None
        if split is None:
            return self._hydra_load(self.master, list(overrides))
        groups, values, parsed = split
        key = tuple(groups)
        if key not in self._bases:
            base = self._hydra_load(self.master, groups)
            dirname = OmegaConf.to_container(base.hydra.job.config.override_dirname, resolve=True)
            self._bases[key] = (copier(base), copier(task_config(base)),
                                OmegaConf.to_container(base.hydra.overrides.hydra), dirname)
        copy_base, copy_task, base_hydra, dirname = self._bases[key]
        cfg = self._apply(copy_base, base_hydra, dirname, values, parsed)
        if not any(ov.is_hydra_override() for ov in values):
            self._task_values[id(cfg)] = (cfg, copy_task, values)
        self._changes[id(cfg)] = (cfg, key, [ov.key_or_group for ov in values] + _PER_JOB_HYDRA)
        if values and key not in self._checked:
            self._checked.add(key)
            slow = self._hydra_load(self.master, list(overrides))
            if _plain(slow) != _plain(cfg):
                log.warning("sweep composition shortcut differs from Hydra's; composing every "
                            "job in full")
                self.enabled = False
                return slow
        return cfg

    def changes(self, sweep_config: DictConfig) -> tuple[tuple, list[str]] | None:
        """``(group set, paths)`` of a job config :meth:`load` gave from its group set's
        composition: the config equals every other such job config of that group set except
        at these dotted paths (its value overrides', and the hydra entries :meth:`_apply`
        sets). None for a config composed otherwise."""
        found = self._changes.get(id(sweep_config))
        if found is None or found[0] is not sweep_config:
            return None
        return found[1], list(found[2])

    def task_config(self, sweep_config: DictConfig) -> DictConfig:
        """:func:`task_config` of a job config :meth:`load` gave, built from its group set's
        task config (its value overrides applied to a copy: the same keys and values, without
        copying the whole config again)."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        found = self._task_values.get(id(sweep_config))
        if found is None or found[0] is not sweep_config:
            return task_config(sweep_config)
        _, copy_task, values = found
        cfg = copy_task()
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        return cfg

    def _apply(self, copy_base: Callable[[], DictConfig], base_hydra: list, dirname: dict,
               values: list, parsed: list) -> DictConfig:
        """A copy of the base config with the value overrides and the job's override lists
        (``base_hydra``: the base's hydra override lines, kept when the job's are the same;
        ``dirname``: its ``hydra.job.config.override_dirname`` settings)."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

        cfg = copy_base()
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        if self._master_hydra is None:
            self._master_hydra = OmegaConf.to_container(self.master.hydra.overrides.hydra)
        hydra_lines = self._master_hydra + [
            ov.input_line for ov in parsed if ov.is_hydra_override()]
        app = [ov for ov in parsed if not ov.is_hydra_override()]
        hydra = cfg.hydra
        with open_dict(hydra):
            if hydra_lines != base_hydra:
                hydra.overrides.hydra = hydra_lines
            hydra.overrides.task = [ov.input_line for ov in app]
            hydra.job.override_dirname = get_overrides_dirname(
                overrides=app, kv_sep=dirname["kv_sep"], item_sep=dirname["item_sep"],
                exclude_keys=dirname["exclude_keys"])
        OmegaConf.copy_cache(from_config=self.master, to_config=cfg)
        return cfg


#: The entries of the hydra node :meth:`SweepComposer._apply` sets for each job.
_PER_JOB_HYDRA = ["hydra.overrides.hydra", "hydra.overrides.task", "hydra.job.override_dirname"]


def _plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=False)


def validate_jobs(jobs: Sequence[Sequence[str]]) -> None:
    """Compose and validate every job (``flower_qlearn.config.compose`` semantics).

    Raises :class:`~flower_qlearn.config.ConfigError` (one line) on the first bad job.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from . import config as fq_config

    conf = fq_config.config_dir()

    def is_group(key: str) -> bool:
        return "/" in key or key == "hydra" or os.path.isdir(os.path.join(conf, key))

    copies: dict[tuple, Callable[[], DictConfig]] = {}
    for job in jobs:
        split = split_overrides(job, is_group)
        if split is None or not split[1]:
            fq_config.compose(job)
            continue
        groups, values, _ = split
        try:
            if tuple(groups) not in copies:
                copies[tuple(groups)] = copier(fq_config.compose(groups, check=False))
            cfg = copies[tuple(groups)]()
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        except Exception:  # noqa: BLE001 - let compose say what is wrong, in its one line
            fq_config.compose(job)
            continue
        fq_config.validate(cfg)
