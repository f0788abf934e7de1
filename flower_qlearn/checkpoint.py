"""Checkpoints of a run: write the server's state atomically, continue exactly from it.

What is saved: the completed rounds' metrics, the global table, the samples and wall time so
far, the strategy's own state (``state_dict``) and, where the engine can give it, the agents'
state (the in-process grid's node contexts: their Markov states). A resumed run of the same
experiment continues bit for bit where the killed one stopped.

Format (version 2): one NumPy ``.npz`` archive, ``checkpoint.npz``, read with
``allow_pickle=False`` (nothing in it can run code):

- member ``meta``: UTF-8 JSON as a ``uint8`` array, ``{"format": "flower-qlearn checkpoint",
  "version": 2, "sha256": HEX, "state": STATE}``;
- members ``a0``, ``a1``, ...: every NumPy array of the state, referenced from ``STATE`` as
  ``{"$array": "a0"}``. Tuples are ``{"$tuple": [...]}``, dicts with keys that are not
  strings ``{"$dict": [[key, value], ...]}``, bytes ``{"$bytes": BASE64}``, so Python
  values come back with their types;
- ``sha256`` = SHA-256 of the canonical JSON of ``STATE`` (sorted keys, no spaces) followed,
  for each array in name order, by its name, dtype, shape and raw bytes.

``STATE`` = ``identity`` (the config parts a resumed run must share), ``round``, ``q``,
``history``, ``samples``, ``wall_s``, ``strategy`` (``state_dict()`` or null), ``grid``
(``InProcessGrid.checkpoint_state()`` or null). :func:`load` checks, in order: the file is a
zip archive, the format and version, the hash, the experiment, then the values (Q's shape,
finiteness and ``|Q| <= value_bound(gamma)``; history rows 1..n with n <= the run's rounds;
the strategy state loads into a fresh strategy; the grid state is per-partition records).
Every problem is a :class:`~flower_qlearn.schema.ConfigError` of one line starting
``resume:``. Pickle files (``checkpoint.pkl`` of earlier versions) are never opened.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .schema import ConfigError

log = logging.getLogger("flower_qlearn")

CHECKPOINT_NAME = "checkpoint.npz"
#: The pickle checkpoint of earlier versions: recognised by name only, never opened.
LEGACY_NAME = "checkpoint.pkl"
FORMAT = "flower-qlearn checkpoint"
CHECKPOINT_VERSION = 2
META = "meta"
#: Parts of the composed config a resumed run must share with its checkpoint.
IDENTITY_KEYS = ("strategy", "mdp", "client", "delay", "num_clients", "seed")

_ZIP_MAGIC = b"PK\x03\x04"


def identity(settings: Mapping[str, Any]) -> dict:
    """The parts of a config a resumed run must share with its checkpoint."""
    ident = {k: settings.get(k) for k in IDENTITY_KEYS}
    ident["client"] = {k: v for k, v in (settings.get("client") or {}).items() if k != "sleep_s"}
    return ident


# --- JSON + arrays encoding -----------------------------------------------------------------


def encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``value`` as JSON-able data; NumPy arrays move to ``arrays`` under generated keys."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("checkpoint: object arrays cannot be saved")
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(value)
        return {"$array": key}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return {"$tuple": [encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return [encode(v, arrays) for v in value]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode(v, arrays) for k, v in value.items()}
        return {"$dict": [[encode(k, arrays), encode(v, arrays)] for k, v in value.items()]}
    raise TypeError(f"checkpoint: cannot save a {type(value).__name__}")


def decode(data: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """Inverse of :func:`encode`; raises ``ValueError`` on anything :func:`encode` never wrote."""
    if isinstance(data, list):
        return [decode(v, arrays) for v in data]
    if not isinstance(data, dict):
        return data
    special = [k for k in data if k.startswith("$")]
    if not special:
        return {k: decode(v, arrays) for k, v in data.items()}
    if len(data) != 1:
        raise ValueError(f"malformed entry {sorted(data)[:3]}")
    (tag, body), = data.items()
    if tag == "$array":
        if not isinstance(body, str) or body not in arrays:
            raise ValueError(f"array {body!r} is referenced but not in the archive")
        return arrays[body]
    if tag == "$tuple" and isinstance(body, list):
        return tuple(decode(v, arrays) for v in body)
    if tag == "$dict" and isinstance(body, list):
        if not all(isinstance(p, list) and len(p) == 2 for p in body):
            raise ValueError("malformed $dict entry")
        return {_hashable(decode(k, arrays)): decode(v, arrays) for k, v in body}
    if tag == "$bytes" and isinstance(body, str):
        return base64.b64decode(body.encode("ascii"), validate=True)
    raise ValueError(f"unknown entry {tag!r}")


def _hashable(key: Any) -> Any:
    if isinstance(key, list | dict | np.ndarray):
        raise ValueError(f"unhashable key {type(key).__name__}")
    return key


def content_hash(state_json: Any, arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the encoded state and its arrays (see the module docstring)."""
    h = hashlib.sha256(canonical_json(state_json).encode("utf-8"))
    for name in sorted(arrays):
        a = arrays[name]
        h.update(f"\0{name}\0{a.dtype.str}\0{list(a.shape)}\0".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True)


# --- write ----------------------------------------------------------------------------------


def write(path: Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (write a temporary file, fsync, rename)."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    state_json = encode(state, arrays)
    meta = {
        "format": FORMAT,
        "version": CHECKPOINT_VERSION,
        "sha256": content_hash(state_json, arrays),
        "state": state_json,
    }
    meta_bytes = np.frombuffer(json.dumps(meta, allow_nan=True).encode("utf-8"), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **{META: meta_bytes}, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some filesystems do not fsync directories
        pass
    return path


# --- read and check -------------------------------------------------------------------------


def _refuse(message: str) -> ConfigError:
    return ConfigError("resume: " + " ".join(message.split()))


def locate(target: Path) -> Path:
    """The checkpoint file of ``target`` (a run dir or the file itself); refuse a missing one."""
    target = Path(target)
    if target.is_dir():
        path = target / CHECKPOINT_NAME
        if not path.is_file():
            legacy = target / LEGACY_NAME
            if legacy.exists():
                raise _refuse(
                    f"{target} has only {LEGACY_NAME}, a pickle checkpoint of an older "
                    f"flower-qlearn; it is not loaded (unpickling can run code): rerun the "
                    f"experiment to get a {CHECKPOINT_NAME}"
                )
            raise _refuse(f"no checkpoint at {target} (no {CHECKPOINT_NAME} in it)")
        return path
    if not target.exists():
        raise _refuse(f"no checkpoint at {target}")
    return target


def read_archive(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a checkpoint file, format/version/hash checked; no pickle."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise _refuse(f"cannot read {path}: {exc.strerror or exc}") from None
    if head != _ZIP_MAGIC:
        raise _refuse(
            f"{path} is not a flower-qlearn checkpoint (not an .npz archive; pickle files are "
            f"never loaded)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            members = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise _refuse(f"{path} is corrupt, truncated or not a checkpoint ({first})") from None
    meta_array = members.pop(META, None)
    if meta_array is None or meta_array.dtype != np.uint8 or meta_array.ndim != 1:
        raise _refuse(f"{path} is not a flower-qlearn checkpoint (no {META!r} entry)")
    try:
        meta = json.loads(meta_array.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(f"{path} is corrupt (its metadata is not JSON: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _refuse(f"{path} is not a flower-qlearn checkpoint (format {FORMAT!r} expected)")
    version = meta.get("version")
    if version != CHECKPOINT_VERSION:
        raise _refuse(
            f"{path} has checkpoint format version {version!r}; this flower-qlearn reads "
            f"version {CHECKPOINT_VERSION} only"
        )
    if not isinstance(meta.get("state"), dict) or not isinstance(meta.get("sha256"), str):
        raise _refuse(f"{path} is corrupt (metadata lacks 'state' or 'sha256')")
    if content_hash(meta["state"], members) != meta["sha256"]:
        raise _refuse(f"{path} is corrupt: its SHA-256 does not match its content")
    return meta, members


#: Checkpoints already checked, by (file, size, mtime, identity, num_rounds).
_CHECKED: set[str] = set()


def _plan(settings: Mapping[str, Any]):
    from .agent import experiment_mdp
    from .strategies import registry

    mdp = experiment_mdp(settings["mdp"])
    registry.load_all()
    return registry.STRATEGIES[settings["strategy"]["name"]].build(settings, mdp)


def load(target: Path, settings: Mapping[str, Any], plan=None) -> dict:
    """Read and check the checkpoint at ``target`` for the experiment ``settings``.

    ``plan`` is the run's :class:`~flower_qlearn.strategies.registry.Plan` (built from
    ``settings`` when None; its strategy state is then loaded into that throw-away plan's
    strategy to check it). Returns the state with ``path`` added; raises ``ConfigError``.
    """
    from .strategies.base import value_bound

    path = locate(Path(target))
    meta, arrays = read_archive(path)
    try:
        state = decode(meta["state"], arrays)
    except (ValueError, TypeError) as exc:
        raise _refuse(f"{path} is corrupt ({exc})") from None
    missing = sorted(
        {"identity", "round", "q", "history", "samples", "wall_s", "strategy", "grid"}
        - set(state)
    )
    if missing:
        raise _refuse(f"{path} is corrupt (no {', '.join(missing)})")
    mine, theirs = identity(settings), state["identity"]
    if not isinstance(theirs, dict):
        raise _refuse(f"{path} is corrupt (identity is not a mapping)")
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ConfigError(
            f"resume: checkpoint {path} is of a different experiment (differs in {diff})"
        )
    throwaway = plan is None
    if plan is None:
        try:
            plan = _plan(settings)
        except Exception as exc:  # noqa: BLE001 - the run itself will report this config
            raise _refuse(f"cannot build the experiment to check {path}: {exc}") from None
    shape = tuple(plan.iterate_shape or plan.strategy.shape)
    bound = None if plan.objective == "td" else value_bound(float(settings["mdp"]["gamma"]))
    _check_values(path, state, shape, bound, int(plan.num_rounds))
    if throwaway and state["strategy"] is not None and hasattr(plan.strategy, "load_state_dict"):
        load_strategy_state(path, plan.strategy, state["strategy"])
    state["q"] = np.asarray(state["q"])
    state["path"] = path
    return state


def load_strategy_state(path: Path, strategy, strategy_state: Any) -> None:
    """``strategy.load_state_dict(strategy_state)``; a malformed state is one ``resume:`` line."""
    try:
        strategy.load_state_dict(strategy_state)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise _refuse(f"{path}: the strategy state does not load ({detail})") from None


def _finite_array(value: Any) -> bool:
    return (
        isinstance(value, np.ndarray)
        and value.dtype.kind in "fiub"
        and bool(np.all(np.isfinite(value)))
    )


def _number(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    )


def _arrays_in(value: Any):
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _arrays_in(k)
            yield from _arrays_in(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _arrays_in(v)


def _check_values(
    path: Path, state: dict, shape: tuple, bound: float | None, num_rounds: int
) -> None:
    q = state["q"]
    if not isinstance(q, np.ndarray) or q.dtype.kind != "f":
        raise _refuse(f"{path}: the global table is not a float array")
    if q.shape != shape:
        raise _refuse(f"{path}: the global table has shape {q.shape}, this experiment {shape}")
    if not np.all(np.isfinite(q)):
        raise _refuse(f"{path}: the global table holds non-finite values (NaN or inf)")
    if bound is not None and q.size and float(np.max(np.abs(q))) > bound:
        raise _refuse(
            f"{path}: the global table has |Q| = {float(np.max(np.abs(q))):.6g} > the value "
            f"bound {bound:.6g} of gamma={state['identity']['mdp'].get('gamma')}"
        )
    history, done = state["history"], state["round"]
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise _refuse(f"{path}: the history is not a list of rows")
    if not isinstance(done, int) or isinstance(done, bool) or done != len(history):
        raise _refuse(f"{path}: round {done!r} does not match the {len(history)} history rows")
    if len(history) > num_rounds:
        raise _refuse(
            f"{path} has {len(history)} rounds done but this run has {num_rounds} rounds: set "
            f"num_rounds >= {len(history)} to continue it"
        )
    for i, row in enumerate(history, start=1):
        if row.get("round") != i:
            raise _refuse(f"{path}: history row {i} is of round {row.get('round')!r}")
        for k, v in row.items():
            if not isinstance(k, str) or not (v is None or isinstance(v, int | float | str)):
                raise _refuse(f"{path}: history row {i} has a bad entry {k!r}")
    for name in ("samples", "wall_s"):
        if not _number(state[name]) or state[name] < 0:
            raise _refuse(f"{path}: {name}={state[name]!r} is not a finite number >= 0")
    for array in _arrays_in(state["strategy"]):
        if not _finite_array(array):
            raise _refuse(f"{path}: the strategy state holds a non-finite or non-numeric array")
        if array.dtype.kind == "f" and array.shape != shape:
            raise _refuse(
                f"{path}: the strategy state holds an array of shape {array.shape}, not {shape}"
            )
    _check_grid(path, state["grid"], int(state["identity"]["num_clients"]))


def _check_grid(path: Path, grid: Any, num_clients: int) -> None:
    if grid is None:
        return
    from flwr.app import ConfigRecord

    if not isinstance(grid, dict):
        raise _refuse(f"{path}: the agents' state is not a mapping")
    for partition, records in grid.items():
        if not isinstance(partition, int) or not 0 <= partition < num_clients:
            raise _refuse(f"{path}: the agents' state names partition {partition!r}")
        if not isinstance(records, dict):
            raise _refuse(f"{path}: the agents' state of partition {partition} is malformed")
        for name, values in records.items():
            try:
                if not isinstance(name, str) or not isinstance(values, dict):
                    raise TypeError("not a named record")
                ConfigRecord(values)
            except (TypeError, ValueError) as exc:
                raise _refuse(
                    f"{path}: the agents' state of partition {partition} is malformed ({exc})"
                ) from None


def check_resume(settings: Mapping[str, Any]) -> None:
    """Refuse (``ConfigError``, one line) a ``resume`` target this run cannot continue from.

    Called by config validation, so the CLI (before Hydra starts) and ``run_experiment``
    (before the output directory exists) refuse a bad checkpoint before writing anything.
    Cached per file (size, mtime) and experiment, since validation runs more than once.
    """
    target = settings.get("resume")
    if not target:
        return
    path = locate(Path(str(target)))
    try:
        stat = path.stat()
    except OSError as exc:
        raise _refuse(f"cannot read {path}: {exc.strerror or exc}") from None
    key = canonical_json(
        encode(
            [str(path.resolve()), stat.st_size, stat.st_mtime_ns, identity(settings),
             settings.get("num_rounds")],
            {},
        )
    )
    if key in _CHECKED:
        return
    load(path, settings)
    _CHECKED.add(key)
