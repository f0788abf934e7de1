"""A single CLI run composed once (``flower-qlearn num_rounds=1 ...``, no ``-m``).

Hydra's ``@hydra.main`` composes a single run's config twice: once for ``Hydra.get_mode``
(to read ``hydra.mode`` from the config, in MULTIRUN mode) and once more in ``Hydra.run``,
with ``hydra.mode=RUN`` added to the overrides when the config sets no mode. The CLI composed
it a third time to validate it before anything is written. Each composition is ~60 ms of a
~1 s start-up.

:func:`install` replaces ``get_mode`` for the run with one composition in RUN mode that

- validates the job's config (:func:`flower_qlearn.config.validate` of its task config) and
  turns a composition error into the CLI's one line, exit status 2, before anything is written
  (the CLI's separate check is skipped for such a run);
- where the config sets no ``hydra.mode`` (Hydra then runs the job in RUN mode), hands
  ``Hydra.run`` that same composition with ``hydra.mode=RUN`` applied as Hydra applies an
  override (:func:`run_mode_config`: its value set by Hydra's own function, its line appended to
  ``hydra.overrides.hydra``; ``tests/test_config_cli.py`` compares it with Hydra's
  composition), instead of composing again.

A config that sets ``hydra.mode`` itself, an override of ``hydra.mode`` or a sweep on the
command line leaves Hydra's own path untouched.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from omegaconf import DictConfig, open_dict

__all__ = ["install", "is_plain_single_run", "run_mode_config"]

RUN_MODE_OVERRIDE = "hydra.mode=RUN"


def is_plain_single_run(argv: Sequence[str], jobs: int) -> bool:
    """Whether the command line is one run that :func:`install` can compose once: no ``-m``,
    no flags, no ``hydra.mode`` override, ``jobs`` (its expansion) exactly 1."""
    return jobs == 1 and not any(
        a.startswith("-") or a.lstrip("+~").startswith("hydra.mode") for a in argv)


def run_mode_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` (a RUN-mode composition of overrides ``O``, changed in place) as Hydra composes
    ``O + ["hydra.mode=RUN"]``: the override applied by ``_apply_overrides_to_config`` and
    recorded last in ``hydra.overrides.hydra``, as ``_load_configuration_impl`` records it."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from .sweep_compose import _parse_override

    ConfigLoaderImpl._apply_overrides_to_config([_parse_override(RUN_MODE_OVERRIDE)], cfg)
    with open_dict(cfg.hydra):
        cfg.hydra.overrides.hydra.append(RUN_MODE_OVERRIDE)
    return cfg


def install(once_valid: Callable[[], None]) -> None:
    """Compose this process's single run once (see the module doc); call before Hydra runs.

    ``once_valid`` runs when the config passed its checks, before Hydra writes anything (the
    CLI takes the output dir's lock there); a ``ConfigError`` from it is refused in one line.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.hydra import Hydra
    from hydra.errors import HydraException
    from hydra.types import RunMode

    from . import config as fq_config
    from .sweep_compose import task_config

    composed: dict[tuple, DictConfig] = {}
    hydra_load = ConfigLoaderImpl.load_configuration

    def load_configuration(self, config_name, overrides, run_mode, *args, **kwargs):
        key = (config_name, tuple(overrides), run_mode)
        if key in composed:
            return composed.pop(key)
        return hydra_load(self, config_name, overrides, run_mode, *args, **kwargs)

    def get_mode(self, config_name, overrides):
        try:
            cfg = hydra_load(self.config_loader, config_name=config_name,
                             overrides=list(overrides), run_mode=RunMode.RUN,
                             from_shell=True, validate_sweep_overrides=False)
        except HydraException as exc:  # a bad group option, override syntax, unknown key
            _refuse(fq_config.ConfigError(fq_config._hydra_error_line(exc)))
        except Exception:  # noqa: BLE001 - anything else: Hydra's own path reports it
            _checked(once_valid)
            from .launcher import register

            register()
            return _hydra_get_mode(self, config_name, overrides)
        try:
            fq_config.validate(task_config(cfg))
        except fq_config.ConfigError as exc:
            _refuse(exc)
        except Exception:  # noqa: BLE001 - e.g. ${hydra:...} before the run: the task checks
            pass
        _checked(once_valid)
        if cfg.hydra.mode is not None:  # the config sets it (MULTIRUN: a launcher runs it)
            from .launcher import register

            register()
            return cfg.hydra.mode
        composed[(config_name, (*overrides, RUN_MODE_OVERRIDE), RunMode.RUN)] = \
            run_mode_config(cfg)
        return None

    _hydra_get_mode = Hydra.get_mode
    Hydra.get_mode = get_mode
    ConfigLoaderImpl.load_configuration = load_configuration


def _checked(step: Callable[[], None]) -> None:
    from . import config as fq_config

    try:
        step()
    except fq_config.ConfigError as exc:
        _refuse(exc)


def _refuse(exc: Exception) -> None:
    print(f"flower-qlearn: {exc}", file=sys.stderr)
    sys.exit(2)
