"""Finished runs read back from disk, and their grouping by the swept parameters.

:func:`load_jobs` finds every ``metrics.csv`` under a directory and reads, beside it, the job's
Hydra overrides (``.hydra/overrides.yaml``) and composed config (``.hydra/config.yaml``, else the
``config`` of ``summary.json`` for runs started from Python). :func:`varying_keys` picks the
grouping: the override keys whose values differ across jobs, the seed excluded (it is what we
average over); runs without Hydra overrides fall back to the config entries that differ.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .outputs import METRICS_FILE, SUMMARY_FILE, MetricsTable, read_metrics_table
from .yaml_text import safe_load

#: Override keys that index replicates: averaged over, never a group.
SEED_KEYS: tuple[str, ...] = ("seed",)
#: Config entries that differ between runs without being an experimental choice.
_IGNORED_CONFIG_KEYS = ("output_dir", "plot")


@dataclass
class Job:
    """One finished (or partly finished) run: its directory, overrides, config and metrics."""

    path: Path
    overrides: dict[str, str] | None  # key -> value as typed; None: not a Hydra job
    config: Mapping  # the composed config (read from .hydra/config.yaml when first used)
    rows: Sequence[dict]  # a list of dicts, or the MetricsTable load_job reads

    def column(self, name: str) -> np.ndarray:
        """Column ``name`` of ``metrics.csv`` as float64; empty cells (not applicable) are NaN."""
        if isinstance(self.rows, MetricsTable):  # parsed once, converted by numpy (None: NaN)
            return np.array(self.rows.column(name), dtype=np.float64)
        return np.array(
            [np.nan if row.get(name) is None else float(row[name]) for row in self.rows]
        )

    def value(self, key: str) -> str:
        """This job's value of ``key``: its override if it has one, else the config entry."""
        if self.overrides is not None and key in self.overrides:
            return self.overrides[key]
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return "<unset>"
            node = node[part]
        if isinstance(node, Mapping):  # a config group, e.g. key "strategy": its option name
            return str(node.get("name", "<group>"))
        return "null" if node is None else str(node)


def _natural_key(path: Path) -> list:
    # Job directories are numbered 0, 1, ..., 10: sort them as numbers, not as strings.
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"[/\\]", str(path))]


def _parse_overrides(lines: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        if not sep:  # "~key" deletes a key: keep it as a value so it can still group
            out[key.lstrip("~")] = "<deleted>"
            continue
        out[key.lstrip("+")] = value
    return out


def load_job(run_dir: str | Path) -> Job:
    """Read one run directory (``metrics.csv`` and, if present, ``.hydra/`` and summary)."""
    run_dir = Path(run_dir)
    hydra_dir = run_dir / ".hydra"
    overrides = None
    if (hydra_dir / "overrides.yaml").is_file():
        lines = safe_load((hydra_dir / "overrides.yaml").read_text()) or []
        overrides = _parse_overrides(lines)
    config: Mapping = {}
    if (hydra_dir / "config.yaml").is_file():
        config = _ConfigFile(hydra_dir / "config.yaml")
    elif (run_dir / SUMMARY_FILE).is_file():
        config = json.loads((run_dir / SUMMARY_FILE).read_text()).get("config", {})
    return Job(run_dir, overrides, config, read_metrics_table(run_dir / METRICS_FILE))


class _ConfigFile(Mapping):
    """A job's ``.hydra/config.yaml`` as a mapping, read when first looked into: grouping a
    sweep's Hydra jobs reads their overrides, and only the first job's config (its
    ``plot:`` section)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict | None = None

    def _content(self) -> dict:
        if self._data is None:
            self._data = safe_load(self.path.read_text()) or {}
        return self._data

    def __getitem__(self, key):
        return self._content()[key]

    def __iter__(self):
        return iter(self._content())

    def __len__(self) -> int:
        return len(self._content())

    def __repr__(self) -> str:
        return repr(self._content())


def load_jobs(root: str | Path) -> list[Job]:
    """Every run under ``root`` (a run directory, a multirun directory or any tree of them).

    Jobs are in sweep order (numeric directory names sorted as numbers); runs whose
    ``metrics.csv`` has no rows yet are skipped.

    Raises
    ------
    FileNotFoundError
        If ``root`` holds no ``metrics.csv`` at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    paths = sorted((p.parent for p in root.rglob(METRICS_FILE)), key=_natural_key)
    jobs = [job for job in (load_job(p) for p in paths) if job.rows]
    if not jobs:
        raise FileNotFoundError(f"{root}: no run with a non-empty {METRICS_FILE} below it")
    return jobs


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def varying_keys(jobs: Sequence[Job], average_over: Sequence[str] = SEED_KEYS) -> list[str]:
    """The swept parameters: keys whose value differs across ``jobs``, ``average_over`` excluded.

    Hydra jobs are compared on their overrides (``strategy``, ``client.behavior``, ...), in the
    order they appear on the command line / in ``hydra.sweeper.params``. Runs without overrides
    (started from Python) are compared on their flattened configs.
    """
    excluded = set(average_over)
    if all(job.overrides is not None for job in jobs):
        keys: list[str] = []
        for job in jobs:
            keys.extend(k for k in job.overrides if k not in keys)  # type: ignore[union-attr]
        keys = [k for k in keys if k not in excluded and not k.startswith("hydra")]
    else:
        flats = [_flatten(job.config) for job in jobs]
        keys = []
        for flat in flats:
            keys.extend(k for k in flat if k not in keys)
        keys = [
            k for k in keys if k not in excluded and k.split(".")[0] not in _IGNORED_CONFIG_KEYS
        ]
    return [k for k in keys if len({job.value(k) for job in jobs}) > 1]


def group_jobs(jobs: Sequence[Job], keys: Sequence[str]) -> dict[tuple[str, ...], list[Job]]:
    """Jobs by their values of ``keys``, groups in order of first appearance (sweep order)."""
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.value(k) for k in keys), []).append(job)
    return groups


def group_label(keys: Sequence[str], values: Sequence[str]) -> str:
    """``"strategy=importance, client.behavior=disjoint"`` (``"all runs"`` when no key)."""
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)) or "all runs"


def plot_settings(jobs: Sequence[Job]) -> dict:
    """The ``plot:`` section of the sweep's config (experiment defaults for the plot command)."""
    for job in jobs:
        section = job.config.get("plot")
        if isinstance(section, Mapping):
            return dict(section)
    return {}
