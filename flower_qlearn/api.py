"""The Python API: run one composed experiment on its engine and read its results back.

:func:`run_experiment` composes and validates a Hydra config and calls :func:`execute`, which the
CLI calls too. Every engine gets the same Flower run config (the composed config as flat keys,
:func:`flower_qlearn.config.to_run_config`) and runs the same ServerApp and ClientApp:

- ``inprocess``: :func:`flower_qlearn.inprocess.run_inprocess` (real Flower messages, no Ray);
- ``ray``: ``flwr run`` on Flower's Ray simulation runtime (:mod:`flower_qlearn.ray_engine`);
- ``deployment``: ``flwr run`` against a running SuperLink (:mod:`flower_qlearn.deployment`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import config as fq_config
from .outputs import RunResult, default_output_dir

__all__ = ["RunResult", "execute", "run_config_for", "run_experiment"]


def run_config_for(cfg: DictConfig, output_dir: Path) -> dict:
    """The Flower run config that carries the composed experiment ``cfg`` to the apps."""
    cfg = cfg.copy()
    OmegaConf.update(cfg, "output_dir", str(Path(output_dir).resolve()), merge=False)
    run_config = fq_config.to_run_config(cfg)
    fq_config.register_run_config(run_config, cfg)
    return run_config


def execute(cfg: DictConfig, output_dir: Path, overrides: Sequence[str] = ()) -> RunResult:
    """Run the composed experiment ``cfg`` on its engine and return its results."""
    fq_config.validate(cfg)
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
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
    elif engine == "ray":
        from .ray_engine import run_ray

        run_ray(cfg, run_config)
    elif engine == "deployment":
        from .deployment import run_deployment

        run_deployment(cfg, run_config)
    else:  # pragma: no cover - refused by the config rule on engine.name
        raise fq_config.ConfigError(f"invalid config: engine.name={engine!r}")
    return RunResult.load(output_dir)


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
