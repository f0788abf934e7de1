"""Command line: ``flower-qlearn [hydra overrides]`` (Hydra main, ``-m`` for multirun).

Before Hydra starts any job, every configuration the command line describes (each point of a
multirun sweep) is composed and validated, so a bad value fails at once with one line naming the
field and the allowed range, and exit status 2, instead of after some jobs have already run.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import logging
import os
import sys
from collections.abc import Callable, Sequence

import hydra
from omegaconf import DictConfig

from . import config as fq_config

log = logging.getLogger("flower_qlearn")

#: At most this many sweep points are pre-validated (composition costs ~20 ms each).
MAX_PREVALIDATED = 2000


def _expand(overrides: Sequence[str]) -> list[list[str]]:
    """Every concrete override list of a (possibly sweeping) command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    choices: list[list[str]] = []
    for ov in parsed:
        if ov.is_sweep_override():
            key = ov.get_key_element()
            choices.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
        else:
            choices.append([ov.input_line])
    return [
        list(combo) for combo in itertools.islice(itertools.product(*choices), MAX_PREVALIDATED)
    ]


def prevalidate(argv: Sequence[str]) -> None:
    """Compose and validate every job of ``argv``; raise ``ConfigError`` on the first bad one."""
    overrides = [a for a in argv if not a.startswith("-") and not _is_hydra_override(a)]
    try:
        jobs = _expand(overrides)
    except Exception as exc:  # noqa: BLE001 - Hydra's parser errors have many types
        raise fq_config.ConfigError(f"invalid override syntax: {exc}".splitlines()[0]) from None
    from .sweep_compose import validate_jobs

    validate_jobs(jobs)  # = fq_config.compose of each job; each group choice composed once


def _compose_once(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is one plain run :mod:`flower_qlearn.compose_once` composes once."""
    from .compose_once import is_plain_single_run

    overrides = [a for a in argv if not a.startswith("-") and not _is_hydra_override(a)]
    try:
        jobs = len(_expand(overrides))
    except Exception:  # noqa: BLE001 - bad syntax: prevalidate says so, in one line
        return False
    return is_plain_single_run(argv, jobs)


def _one_log_line_per_record() -> None:
    """Flower's logger prints to the console itself and also propagates to Hydra's handlers:
    every strategy message would show twice. In the CLI, Hydra's handlers alone print it (and
    write it to the job's log file); Flower's DEBUG chatter stays out."""
    flwr_logger = logging.getLogger("flwr")
    for handler in list(flwr_logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            flwr_logger.removeHandler(handler)
    flwr_logger.setLevel(logging.INFO)
    flwr_logger.propagate = True


@hydra.main(config_path=str(fq_config.config_dir()), config_name="config", version_base=None)
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from .api import execute, final_metric, result_line

    _one_log_line_per_record()
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    output_dir = cfg.output_dir or hc.runtime.output_dir
    try:
        result = execute(cfg, output_dir, overrides)
    except fq_config.ConfigError as exc:  # e.g. a multirun job's output_dir in use
        print(f"flower-qlearn: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        # no SuperLink, a failed run: what failed, in one line (a DeploymentError exists only
        # once engine=deployment imported its module)
        deployment = sys.modules.get(f"{__package__}.deployment")
        if deployment is None or not isinstance(exc, deployment.DeploymentError):
            raise
        print(f"flower-qlearn: {exc}", file=sys.stderr)
        sys.exit(1)
    print(result_line(str(cfg.strategy.name), result.history, result.output_dir))
    _, value = final_metric(result.history)
    return value


def _fewer_full_collections() -> None:
    """Python's full garbage collections walk every live object; a sweep keeps hundreds of
    composed configs and their results alive, so with the default thresholds a full
    collection ran every few dozen jobs (~1.3 s of the Woo sweep's 400-job composition) and
    the interpreter's last one at exit took ~1 s. The command makes them rare (young garbage
    is collected as usual) and, when it is done, freezes what is left so that the exit does
    not walk it (the process ends; the OS takes the memory back)."""
    import atexit
    import gc

    first, second, third = gc.get_threshold()
    gc.set_threshold(first, second, max(third, 1000))
    atexit.register(gc.freeze)  # atexit runs before the interpreter's final collection


def _check_launcher(argv: Sequence[str]) -> None:
    """``hydra/launcher=joblib`` needs the ``joblib`` extra: say so in one line."""
    if "hydra/launcher=joblib" not in argv:
        return
    try:
        import hydra_plugins.hydra_joblib_launcher  # noqa: F401
    except ImportError:
        raise fq_config.ConfigError(
            "hydra/launcher=joblib needs the joblib extra: pip install 'flower-qlearn[joblib]'"
        ) from None


def _is_hydra_override(arg: str) -> bool:
    """``hydra.run.dir=...``, ``+hydra.x=...``, ``hydra/launcher=...``: Hydra's own settings."""
    return arg.lstrip("+~").startswith(("hydra.", "hydra/"))


# What the command holds until it exits (the single run's output-dir lock).
_HELD = contextlib.ExitStack()


def _hold_output_dir(argv: Sequence[str]) -> None:
    """A single run with ``output_dir=PATH`` locks PATH before Hydra writes anything into it,
    so a second run into it is refused (``OutputDirInUse``, one line) with nothing written."""
    from .outputs import hold_output_dir

    given = [a.split("=", 1)[1] for a in argv if a.startswith("output_dir=")]
    if given and given[-1] not in ("null", "") and not any(a in ("-m", "--multirun") for a in argv):
        _HELD.enter_context(hold_output_dir(given[-1]))


class _PipeSafeStdout:
    """``sys.stdout`` that, once its reader is gone (``| head -1``), sends the rest of the
    output to /dev/null: no BrokenPipeError, and a run still writes its results. Everything
    else (``isatty``, ``encoding``, ``fileno``, ...) is the wrapped stream's."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self._stream = stream

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _console_entry(entry: Callable[[], None]) -> Callable[[], None]:
    """A console script's wrapper: Ctrl-C ends it with one line and exit status 130 (the run
    says where its partial results are); a closed stdout pipe is not an error."""

    @functools.wraps(entry)
    def wrapped() -> None:
        if not isinstance(sys.stdout, _PipeSafeStdout) and sys.stdout is not None:
            sys.stdout = _PipeSafeStdout(sys.stdout)
        try:
            with _HELD:
                entry()
        except KeyboardInterrupt as exc:
            print(f"flower-qlearn: {exc.args[0] if exc.args else 'interrupted'}", file=sys.stderr)
            sys.exit(130)

    return wrapped


def one_output_dir(argv: Sequence[str]) -> list[str]:
    """A single run with ``output_dir=PATH`` uses PATH as Hydra's run dir too, so PATH holds
    everything of the run: results, ``.hydra/`` (composed config, overrides) and the log."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    given = [a.split("=", 1)[1] for a in argv if a.startswith("output_dir=")]
    if multirun or not given or any(a.startswith("hydra.run.dir=") for a in argv):
        return list(argv)
    return [*argv, f"hydra.run.dir={given[-1]}"]


@_console_entry
def main() -> None:
    """Entry point of the ``flower-qlearn`` console script."""
    argv = sys.argv[1:]
    from .jit import ENVIRONMENT_ERROR

    if ENVIRONMENT_ERROR:  # FLOWER_QLEARN_INTERPRETED_STEPS=abc
        print(f"flower-qlearn: {ENVIRONMENT_ERROR}", file=sys.stderr)
        sys.exit(2)
    _fewer_full_collections()
    from .yaml_text import use_libyaml_for_hydra

    use_libyaml_for_hydra()  # every composition reads ~20 YAML files
    if not any(
        a in ("--help", "-h", "--hydra-help", "--info", "-i")
        or a.startswith("--cfg")
        or a.startswith("-c")
        for a in argv
    ):
        try:
            _check_launcher(argv)
            single = _compose_once(argv)
            if single:  # checked and locked when Hydra composes it (once)
                from . import compose_once

                compose_once.install(functools.partial(_hold_output_dir, argv))
            else:
                prevalidate(argv)
                _hold_output_dir(argv)
        except fq_config.ConfigError as exc:
            print(f"flower-qlearn: {exc}", file=sys.stderr)
            sys.exit(2)
        sys.argv[1:] = one_output_dir(argv)
    else:
        single = False
    if not single:  # a single run never instantiates a launcher
        from .launcher import register as register_launcher

        register_launcher()  # hydra/launcher=batched (Hydra finds launchers by registration)
    _hydra_main()


@_console_entry
def plot_main() -> None:
    """Entry point of ``flower-qlearn-plot``: figures and tables of a run or multirun directory."""
    from .plot_command import main as plots_main

    sys.exit(plots_main(sys.argv[1:]))
