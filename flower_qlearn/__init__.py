"""flower-qlearn: federated tabular Q-learning on Flower, configured by Hydra.

Public entry points: :func:`run_experiment` (compose a Hydra config, run it, read the results
back), :func:`run_inprocess` (run any ServerApp with any ClientApp on the embedded engine), the
strategies in :mod:`flower_qlearn.strategies` and the ClientApp in :mod:`flower_qlearn.client_app`.

The Flower-free core (``mdp``, ``solvers``, ``sampling``, ``kernels``) imports quickly; the Flower
side (``run_experiment``, the apps, the engines) is imported on first use.
"""

from __future__ import annotations

from importlib import metadata as _metadata
from pathlib import Path as _Path
from typing import TYPE_CHECKING

try:
    __version__ = _metadata.version("flower-qlearn")
except _metadata.PackageNotFoundError:  # a source tree that is not installed (e.g. a FAB)
    __version__ = "0+unknown"

# In a source tree without the installed package (a Flower App Bundle unpacked by a SuperNode, or
# a checkout on sys.path) the repo folders strategies/ and conf/ sit beside this package instead
# of inside it; let them be found as its subpackages, as the wheel installs them.
_here = _Path(__file__).resolve().parent
if not (_here / "strategies").is_dir() and (_here.parent / "strategies" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # noqa: F821 - the package's own __path__

__all__ = ["RunResult", "__version__", "run_experiment", "run_inprocess"]

if TYPE_CHECKING:
    from .api import RunResult, run_experiment
    from .inprocess import run_inprocess

_LAZY = {"run_experiment": "api", "RunResult": "api", "run_inprocess": "inprocess"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'flower_qlearn' has no attribute {name!r}")
