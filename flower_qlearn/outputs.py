"""A run's output files: ``metrics.csv``, ``summary.json``, ``q_table.npy``; and reading them back.

One place for the file names, the column order and the CSV conventions (an empty cell is a
metric that does not apply), used by the server, :class:`RunResult` and the sweep tables.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
Q_TABLE_FILE = "q_table.npy"
LOG_FILE = "flower-qlearn.log"  #: the run's log (Hydra names it after hydra.job.name)

#: Columns of ``metrics.csv`` in this order (DESIGN.md); extra metrics follow, sorted.
METRIC_COLUMNS = (
    "round",
    "samples_per_agent",
    "q_error",
    "normalized_q_error",
    "gain_error",
    "policy_gain_gap",
    "gamma",
    "accepted",
    "rejected",
    "skipped",
    "bytes_up",
    "bytes_down",
    "wall_s",
)


def write_metrics(path: Path, history: list[dict]) -> None:
    """Write ``metrics.csv`` atomically: DESIGN.md columns first, extras after; empty cell =
    not applicable."""
    path = Path(path)
    extras = sorted({k for row in history for k in row} - set(METRIC_COLUMNS))
    columns = list(METRIC_COLUMNS) + extras
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in history:
            writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    tmp.replace(path)


def _parse_cell(text: str | None) -> int | float | None:
    if text is None or text == "":  # a short (truncated) row's missing cells are empty too
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def read_metrics(path: Path) -> list[dict]:
    """Read ``metrics.csv`` back: numbers as int/float, empty cells as ``None``."""
    with Path(path).open(newline="") as fh:
        return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def jsonable(value):
    """``value`` for JSON: non-finite floats become ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_summary(output_dir: Path, summary: dict) -> Path:
    """Write ``summary.json`` (indented)."""
    path = Path(output_dir) / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2))
    return path


def default_output_dir() -> Path:
    """``outputs/<date>/<time>`` under the working directory, like Hydra's run dir."""
    now = _dt.datetime.now()
    return Path("outputs") / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S-%f")


@dataclass
class RunResult:
    """What a run leaves behind, read back from its output directory."""

    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    q_table: np.ndarray | None = None
    output_dir: Path | None = None

    @classmethod
    def load(cls, output_dir: str | Path) -> RunResult:
        """Read ``metrics.csv``, ``summary.json`` and ``q_table.npy`` of a finished run."""
        out = Path(output_dir)
        return cls(
            history=read_metrics(out / METRICS_FILE),
            summary=json.loads((out / SUMMARY_FILE).read_text()),
            q_table=np.load(out / Q_TABLE_FILE),
            output_dir=out,
        )
