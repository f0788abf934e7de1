"""flower-qlearn: federated tabular Q-learning on Flower, configured by Hydra.

The Flower-free core (``mdp``, ``solvers``, ``sampling``, ``kernels``) imports quickly; the Flower
side (``run_experiment``, the apps, the engines) is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["run_experiment", "RunResult", "__version__"]

if TYPE_CHECKING:
    from .engine import RunResult, run_experiment


def __getattr__(name: str):
    if name in ("run_experiment", "RunResult"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'flower_qlearn' has no attribute {name!r}")
