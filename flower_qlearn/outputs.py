"""A run's output files: ``metrics.csv``, ``summary.json``, ``q_table.npy``; and reading them back.

One place for the file names, the column order and the CSV conventions (an empty cell is a
metric that does not apply), used by the server, :class:`RunResult` and the sweep tables.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import itertools
import json
import math
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .schema import ConfigError

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
Q_TABLE_FILE = "q_table.npy"
LOG_FILE = "flower-qlearn.log"  #: the run's log (Hydra names it after hydra.job.name)
LOCK_FILE = ".flower-qlearn.lock"  #: held (flock) by the run writing into the directory

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


def write_metrics(path: Path, history: Sequence[dict]) -> None:
    """Write ``metrics.csv`` atomically: DESIGN.md columns first, extras after; empty cell =
    not applicable. The bytes are ``csv.writer``'s (:func:`metrics_text`)."""
    path = Path(path)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        fh.write(metrics_text(history))
    tmp.replace(path)


def metrics_text(history: Sequence[dict]) -> str:
    """The text of ``metrics.csv``: what ``csv.writer`` writes for the header and the rows
    (a missing key or None is an empty cell), built column by column.

    A column of ints, floats and Nones (every column a run writes) is converted by one ``map``
    of ``str`` or ``repr`` (what ``csv.writer`` calls on an int or a float), its Nones as
    empty cells; the rows are then joined without ``csv``'s per-cell quoting checks, which
    such cells never need. Any other column (strings, ...), or a header that would need
    quoting, goes through ``csv.writer`` itself. A :class:`MetricsTable` is read by column,
    and a column it shares with other tables (a tuple: the batched engine's rounds, wall
    times and counters, the same for all jobs of a group) is converted once."""
    table = history if isinstance(history, MetricsTable) else None
    keys: set[str] = set()
    if table is not None:
        keys.update(table.header if len(table) else ())
    else:
        for row in history:
            keys.update(row)
    columns = list(METRIC_COLUMNS) + sorted(keys - set(METRIC_COLUMNS))
    if table is not None:
        cells = [_column_cells(table.column(c)) for c in columns]
    else:
        cells = [_number_cells(list(map(dict.get, history, itertools.repeat(c))))
                 for c in columns]
    if any(cell is None for cell in cells) or not all(map(_PLAIN_NAME, columns)):
        fh = io.StringIO(newline="")
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows([[row.get(c) for c in columns] for row in history])
        return fh.getvalue()
    lines = [",".join(columns), *map(",".join, zip(*cells, strict=True))]
    return "\r\n".join(lines) + "\r\n"  # csv.writer's line terminator


#: id(tuple column) -> (that column, its cells): a column shared by many tables, converted once.
_SHARED_CELLS: dict[int, tuple[tuple, list[str] | None]] = {}


def _column_cells(values: Sequence) -> list[str] | None:
    """:func:`_number_cells` of a table's column, remembered for a (shared, immutable) tuple."""
    if type(values) is not tuple:
        return _number_cells(list(values))
    hit = _SHARED_CELLS.get(id(values))
    if hit is None or hit[0] is not values:
        if len(_SHARED_CELLS) >= 256:
            _SHARED_CELLS.clear()
        hit = (values, _number_cells(list(values)))
        _SHARED_CELLS[id(values)] = hit
    return hit[1]


#: A header cell ``csv.writer`` writes as it is (no quoting): no delimiter, quote or newline.
_PLAIN_NAME = re.compile(r'[^,"\r\n]*\Z').match
_NONE = type(None)


def _number_cells(values: list) -> list[str] | None:
    """``csv.writer``'s cells of a column of ints, floats and Nones (``str`` of an int, ``repr``
    of a float, ``""`` for None); None for a column of anything else."""
    kinds = set(map(type, values))
    if kinds <= {int}:
        return list(map(str, values))
    if kinds <= {float}:
        return list(map(repr, values))
    if kinds <= {_NONE}:
        return [""] * len(values)
    if kinds <= {int, float, _NONE}:
        return ["" if v is None else repr(v) if type(v) is float else str(v) for v in values]
    return None


def _parse_cell(text: str | None) -> int | float | None:
    if text is None or text == "":  # a short (truncated) row's missing cells are empty too
        return None
    if "." in text or "e" in text or "n" in text:  # 0.25, 1e-05, nan, inf: never an int
        return float(text)
    try:
        return int(text)
    except ValueError:
        return float(text)


def read_metrics(path: Path) -> list[dict]:
    """Read ``metrics.csv`` back: numbers as int/float, empty cells as ``None``.

    What ``csv.DictReader`` with :func:`_parse_cell` on every cell gives, read column by
    column (a sweep's figures read hundreds of files of thousands of cells): a column whose
    cells are all ints or all floats is converted by one ``map``; any other column, or a file
    with a short or long row, cell by cell.
    """
    return list(read_metrics_table(path))


def read_metrics_table(path: Path) -> MetricsTable:
    """``metrics.csv`` as a :class:`MetricsTable`: the rows of :func:`read_metrics`, each
    column parsed only when it is first asked for (a sweep's figures use a few of them)."""
    with Path(path).open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return MetricsTable.of_rows([], [])
        lines = [cells for cells in reader if cells]  # blank lines skipped, as DictReader does
    width = len(header)
    if any(len(cells) != width for cells in lines):
        return MetricsTable.of_rows(header, [_parse_row(header, cells) for cells in lines])
    table = MetricsTable(header, [None] * width, len(lines))
    table._cells = list(zip(*lines, strict=True)) if lines else [()] * width
    return table


class MetricsTable(Sequence):
    """A metrics history by column: its rows are dicts (``header`` order; a repeated name
    holds its last column, as a dict built from a csv row does), built when asked for.

    ``columns`` are the values of each header position (a shared tuple may be the column of
    many tables: the batched engine's jobs share their rounds, counters and wall times); a
    table read from ``metrics.csv`` parses each column when first asked for.
    """

    def __init__(self, header: Sequence[str], columns: Sequence[Sequence | None],
                 length: int) -> None:
        self.header = list(header)
        self._columns = list(columns)
        self._length = length
        self._cells: list[tuple[str, ...]] | None = None  # unparsed text, by position
        self._rows: list[dict] | None = None
        self._position = {name: i for i, name in enumerate(self.header)}  # the last one

    @classmethod
    def of_rows(cls, header: Sequence[str], rows: list[dict]) -> MetricsTable:
        """A table of rows that are not columns (a file with short or long rows)."""
        table = cls(header, [], len(rows))
        table._rows = rows
        return table

    def column(self, name: str) -> Sequence:
        """The values of column ``name`` (None for an empty cell, or for every row if there
        is no such column)."""
        if self._rows is not None:
            return [row.get(name) for row in self._rows]
        position = self._position.get(name)
        if position is None:
            return [None] * self._length
        return self._values(position)

    def _values(self, position: int) -> Sequence:
        if self._columns[position] is None:
            self._columns[position] = _parse_column(self._cells[position])
        return self._columns[position]

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[dict]:
        if self._rows is not None:
            yield from self._rows
            return
        columns = [self._values(i) for i in range(len(self.header))]
        for values in zip(*columns, strict=True):
            yield dict(zip(self.header, values, strict=True))

    def __getitem__(self, index):
        if self._rows is not None:
            return self._rows[index]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError("metrics row index out of range")
        return {name: self._values(i)[index] for i, name in enumerate(self.header)}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment] - equal to lists, so not hashable


def history_column(history: Sequence[dict], name: str) -> Sequence:
    """The values of ``name`` in each row of a history (None where a row has none)."""
    if isinstance(history, MetricsTable):
        return history.column(name)
    return [row.get(name) for row in history]


#: A cell with one of these characters is never an int (0.25, 1e-05, nan, inf): _parse_cell.
_FLOAT_MARK = re.compile(r"[.en]").search


def _parse_column(cells: tuple[str, ...]) -> list:
    """``[_parse_cell(c) for c in cells]``, by one ``map`` where the column allows it."""
    try:
        return list(map(int, cells))  # every cell an int literal: _parse_cell's int() of each
    except ValueError:
        pass
    if all(map(_FLOAT_MARK, cells)):  # every cell float-marked: _parse_cell's float() of each
        try:
            return list(map(float, cells))
        except ValueError:
            pass
    return list(map(_parse_cell, cells))


def _parse_row(header: list[str], cells: list[str]) -> dict:
    """One row as ``csv.DictReader`` reads it, its cells by :func:`_parse_cell`."""
    width = len(header)
    row = dict(zip(header, map(_parse_cell, cells), strict=False))
    if len(cells) < width:  # a short (truncated) row: its missing cells are empty
        row.update(dict.fromkeys(header[len(cells):]))
    elif len(cells) > width:
        row[None] = _parse_cell(cells[width:])
    return row


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


# --------------------------------------------------------------------------------------------
# Where a run may write: the output directory's checks and its lock
# --------------------------------------------------------------------------------------------


def output_dir_problem(output_dir: str | Path) -> str | None:
    """Why ``output_dir`` cannot hold a run's outputs, in a few words; ``None`` if it can.

    The directory (or its nearest existing ancestor, where it would be created) must be a
    directory this process can write: probed with a temporary file that is removed at once,
    which also catches read-only mounts and pseudo file systems (``/proc``) that permission
    bits do not show, and root's writes into read-only directories that succeed.
    """
    path = Path(os.path.abspath(output_dir))  # as the run will use it (no ~ expansion)
    node = path
    while not os.path.lexists(node):
        node = node.parent
    if not node.is_dir():
        return f"{node} is not a directory" + ("" if node == path else f" (inside {path})")
    if node != path:  # creating it needs the ancestor searchable and writable
        access = os.access(node, os.W_OK | os.X_OK)
        if not access:
            return f"cannot create it in {node} (not writable)"
    try:
        fd, probe = tempfile.mkstemp(prefix=".flower-qlearn-probe-", dir=node)
    except OSError as exc:
        return f"{node} is not writable ({exc.strerror or type(exc).__name__})"
    os.close(fd)
    os.unlink(probe)
    return None


class OutputDirInUse(ConfigError):
    """Another live run holds the output directory's lock; the message names it (one line)."""


_HELD: dict[str, int] = {}  # resolved output dir -> the locked file descriptor, this process


def _holder_text(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        data = {}
    command = " ".join(data.get("command", [])) or "?"
    return (
        f"pid {data.get('pid', '?')} on {data.get('host', '?')}, started "
        f"{data.get('started', '?')}: {command}"
    )


def _lock(path: Path) -> int:
    """An open descriptor of ``path`` exclusively flock-ed; raise OutputDirInUse if held."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(fd)
            os.close(fd)
            raise OutputDirInUse(
                f"output_dir {path.parent} is in use by a running run ({holder}); wait for it "
                "to end or choose another output_dir"
            ) from None
        try:  # the holder may have removed the file between our open and our flock
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def hold_output_dir(output_dir: str | Path) -> Iterator[Path]:
    """Hold ``output_dir``'s lock for a run; a second run into it is refused with a message
    naming this one (:class:`OutputDirInUse`).

    The lock is an ``flock`` on ``output_dir/.flower-qlearn.lock`` recording the pid, host,
    start time and command line: the kernel drops it when the process dies however it dies,
    so a lock left by a killed run (a dead pid) is simply taken over. Re-entrant within a
    process (the CLI holds it, then the run it starts takes it again).
    """
    directory = Path(output_dir).resolve()
    key = str(directory)
    if key in _HELD:
        yield directory
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = _lock(path)
    _HELD[key] = fd
    started = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": started,
              "command": [os.path.basename(sys.argv[0]), *sys.argv[1:]]}
    data = json.dumps(record).encode()
    # Written, then cut to its length (a record left by a dead run may be longer): truncating to
    # zero first made ext4 (auto_da_alloc) flush the file when it was closed, ~3 ms a run.
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    try:
        yield directory
    finally:
        del _HELD[key]
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)  # closing releases the flock


def lock_holder(output_dir: str | Path) -> str | None:
    """The run holding ``output_dir``'s lock, in words, or ``None`` if none (checked without
    writing anything: for refusing a run before its first file is written)."""
    directory = Path(output_dir).resolve()
    if str(directory) in _HELD:
        return None
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_text(fd)
    finally:
        os.close(fd)  # also releases the probe's shared lock
    return None
