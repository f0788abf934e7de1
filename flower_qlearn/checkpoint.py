"""Checkpoints of a run: write the server's state atomically, continue exactly from it.

What is saved: the completed rounds' metrics, the global table, the samples and wall time so
far, the strategy's own state (``state_dict``) and, where the engine can give it, the agents'
state (the in-process grid's node contexts: their Markov states). A resumed run of the same
experiment continues bit for bit where the killed one stopped.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .schema import ConfigError

log = logging.getLogger("flower_qlearn")

CHECKPOINT_NAME = "checkpoint.pkl"
CHECKPOINT_VERSION = 1
#: Parts of the composed config a resumed run must share with its checkpoint.
IDENTITY_KEYS = ("strategy", "mdp", "client", "delay", "num_clients", "seed")


def identity(settings: Mapping[str, Any]) -> dict:
    """The parts of a config a resumed run must share with its checkpoint."""
    ident = {k: settings.get(k) for k in IDENTITY_KEYS}
    ident["client"] = {k: v for k, v in (settings.get("client") or {}).items() if k != "sleep_s"}
    return ident


def write(path: Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (write a temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump({"version": CHECKPOINT_VERSION, **state}, fh, protocol=pickle.HIGHEST_PROTOCOL)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    return path


def read(path: Path, settings: Mapping[str, Any]) -> dict:
    """Read a checkpoint of the experiment ``settings``; refuse one of another experiment."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"resume: no checkpoint at {path}")
    with path.open("rb") as fh:  # our own file: written by write() above
        state = pickle.load(fh)
    mine, theirs = identity(settings), state["identity"]
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ConfigError(
            f"resume: checkpoint {path} is of a different experiment (differs in {diff})"
        )
    state["q"] = np.asarray(state["q"])
    state["path"] = path
    return state
