"""The Python API: run one composed experiment on its engine and read its results back.

:func:`run_experiment` composes and validates a Hydra config and calls :func:`execute`, which the
CLI calls too. Every engine gets the same Flower run config (the composed config as flat keys,
:func:`flower_qlearn.config.to_run_config`) and runs the same ServerApp and ClientApp:

- ``inprocess``: :func:`flower_qlearn.inprocess.run_inprocess` (real Flower messages, no Ray);
- ``ray``: ``flwr run`` on Flower's Ray simulation runtime (:mod:`flower_qlearn.ray_engine`);
- ``deployment``: ``flwr run`` against a running SuperLink (:mod:`flower_qlearn.deployment`).
- ``batched``: no messages, many agents (and jobs) per compiled call, the same numbers
  (:mod:`flower_qlearn.batched`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import config as fq_config
from .outputs import LOG_FILE, RunResult, default_output_dir, hold_output_dir

__all__ = [
    "RunResult", "execute", "final_metric", "result_line", "run_config_for", "run_experiment",
    "settings_for", "with_output_dir",
]


def run_config_for(cfg: DictConfig, output_dir: Path) -> dict:
    """The Flower run config that carries the composed experiment ``cfg`` to the apps."""
    cfg = with_output_dir(cfg.copy(), output_dir)
    run_config = fq_config.to_run_config(cfg)
    fq_config.register_run_config(run_config, cfg)
    return run_config


def with_output_dir(cfg: DictConfig, output_dir: Path) -> DictConfig:
    """``cfg`` (a copy the caller owns: changed in place) as the apps see it: its
    ``output_dir`` the resolved ``output_dir``. ``fq_config.settings`` of it are the settings
    the run config of :func:`run_config_for` gives the apps."""
    OmegaConf.update(cfg, "output_dir", str(Path(output_dir).resolve()), merge=False)
    return cfg


def settings_for(cfg: DictConfig, output_dir: Path) -> dict:
    """The settings the run config of ``run_config_for(cfg, output_dir)`` carries to the apps
    (``fq_config.settings`` of ``cfg`` with its ``output_dir`` resolved), without copying
    ``cfg`` when no value of it interpolates ``output_dir`` (the only way another value can
    depend on it): then they are ``cfg``'s settings with that one key replaced."""
    unresolved = OmegaConf.to_container(cfg, resolve=False)
    if _mentions(unresolved, "output_dir"):
        return fq_config.settings(with_output_dir(cfg.copy(), output_dir))
    return {**fq_config.settings(cfg), "output_dir": str(Path(output_dir).resolve())}


def _mentions(tree: Any, name: str) -> bool:
    """Whether an interpolation (``${...}``) in ``tree`` names ``name``."""
    if isinstance(tree, dict):
        return any(_mentions(v, name) for v in tree.values())
    if isinstance(tree, list):
        return any(_mentions(v, name) for v in tree)
    return isinstance(tree, str) and "${" in tree and name in tree


def _under_hydra() -> bool:
    if "hydra" not in sys.modules:
        return False
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized()


def record_run(cfg: DictConfig, output_dir: Path, overrides: Sequence[str]) -> logging.Handler:
    """Make ``output_dir`` hold everything of a run started from Python, as a CLI run's does:
    the composed config and the overrides (``.hydra/config.yaml``, ``.hydra/overrides.yaml``)
    and the log (``flower-qlearn.log``, through the returned handler: remove it when done)."""
    hydra_dir = output_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    return job_log_handler(output_dir)


def job_log_handler(output_dir: Path) -> logging.Handler:
    """The handler of a run's log file (``flower-qlearn.log``), in Hydra's job-log format."""
    handler = logging.FileHandler(Path(output_dir) / LOG_FILE)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handler.setLevel(logging.INFO)
    return handler


def final_metric(history: Sequence[dict]) -> tuple[str, float | None]:
    """The metric a run reports (its task's return value): the last round's ``theta_error``
    or ``gain_error`` where the run has one, else its ``q_error``."""
    final = history[-1] if history else {}
    key = next((k for k in ("theta_error", "gain_error") if final.get(k) is not None), "q_error")
    return key, final.get(key)


def result_line(strategy: str, history: Sequence[dict], output_dir: Path) -> str:
    """The one line the CLI prints when a run ends: its final metric and where its outputs are."""
    key, value = final_metric(history)
    return f"{strategy}: final {key}={value} after {len(history)} rounds -> {output_dir}"


def execute(cfg: DictConfig, output_dir: Path, overrides: Sequence[str] = ()) -> RunResult:
    """Run the composed experiment ``cfg`` on its engine and return its results.

    Outside a Hydra app (``run_experiment``) the output directory also gets the composed config,
    the overrides and the log (:func:`record_run`); the CLI's Hydra run dir has them already.
    The output directory is locked for the run (:func:`flower_qlearn.outputs.hold_output_dir`):
    a second run into it is refused with a message naming this one.
    """
    fq_config.validate(cfg)
    with hold_output_dir(output_dir) as locked:  # a second run into it is refused meanwhile
        return _execute(cfg, locked, overrides)


def _execute(cfg: DictConfig, output_dir: Path, overrides: Sequence[str]) -> RunResult:
    if _under_hydra():
        _launch(cfg, output_dir)
        return RunResult.load(output_dir)
    ours = logging.getLogger("flower_qlearn")
    handler, level = record_run(cfg, output_dir, overrides), ours.level
    ours.addHandler(handler)
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    try:
        _launch(cfg, output_dir)
    finally:
        ours.removeHandler(handler)
        ours.setLevel(level)
        handler.close()
    return RunResult.load(output_dir)


def _launch(cfg: DictConfig, output_dir: Path) -> None:
    run_config = run_config_for(cfg, output_dir)
    engine = cfg.engine.name
    if engine == "inprocess":
        from .client_app import app as client_app
        from .inprocess import run_inprocess
        from .server_app import app as server_app

        run_inprocess(
            server_app,
            client_app,
            int(cfg.num_clients),
            run_config,
            concurrent=bool(cfg.engine.get("concurrent", False)),
        )
    elif engine == "batched":
        from .batched import run_batched

        run_batched(fq_config.settings(fq_config.from_run_config(run_config)), output_dir)
    elif engine == "ray":
        from .ray_engine import run_ray

        run_ray(cfg, run_config)
    elif engine == "deployment":
        from .deployment import run_deployment

        run_deployment(cfg, run_config)
    else:  # pragma: no cover - refused by the config rule on engine.name
        raise fq_config.ConfigError(f"invalid config: engine.name={engine!r}")


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
    return execute(cfg, output_dir, overrides)
