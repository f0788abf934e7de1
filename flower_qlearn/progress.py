"""One progress-line format for every engine, and the multirun's jobs-done line.

A round line carries rounds done/total, the rate, the ETA and the metric the figures plot
(``normalized_q_error``, ``gain_error`` for average reward, ``theta_error`` for TD), e.g.::

    [round 50/100] 50% 71.4 rounds/s ETA 0.7s normalized_q_error=0.3037 samples/agent=2500
        accepted=20 rejected=0 wall=0.7s                                    (one line)

The ServerApp logs it wherever it runs; under ``flwr run`` and on a SuperLink the launchers
follow the run's log and print the same lines on the user's terminal (:data:`MARKER` picks them
out of Flower's log). A multirun prints ``[multirun] 3/40 jobs done ... ETA ...`` after each job.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("flower_qlearn")

#: Every progress line starts with this tag (after an optional ``[job N] ``).
MARKER = "[round "
#: The figures' metric, in order of preference: the first one a row has a value for.
HEADLINE_METRICS = ("theta_error", "gain_error", "normalized_q_error")
#: Environment variables a multirun's launcher sets for its jobs (total jobs, start time).
SWEEP_TOTAL_ENV = "FLOWER_QLEARN_SWEEP_TOTAL"
SWEEP_START_ENV = "FLOWER_QLEARN_SWEEP_START"

_LINE = re.compile(r"\[round (\d+)/(\d+)\]")


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: short and fixed-width enough for a terminal."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def headline(row: Mapping) -> tuple[str, float | None]:
    """The figures' metric of a metrics row and its value."""
    for name in HEADLINE_METRICS:
        if row.get(name) is not None:
            return name, float(row[name])
    return HEADLINE_METRICS[-1], None


def round_line(row: Mapping, num_rounds: int, elapsed: float, done_here: int) -> str:
    """The progress line of a finished round.

    ``elapsed`` seconds were spent on the ``done_here`` rounds run by this process (a resumed
    run counts only its own rounds for the rate).
    """
    r = int(row["round"])
    rate = done_here / elapsed if elapsed > 0 and done_here > 0 else math.nan
    eta = (num_rounds - r) / rate if rate and math.isfinite(rate) else math.nan
    name, value = headline(row)
    shown = "n/a" if value is None else f"{value:.4g}"
    samples = row.get("samples_per_agent")
    samples = f"{samples:.6g}" if isinstance(samples, float) else samples
    return (
        f"{MARKER}{r}/{num_rounds}] {100 * r / max(num_rounds, 1):.0f}% "
        f"{rate:.3g} rounds/s ETA {duration(eta)} {name}={shown} samples/agent={samples} "
        f"accepted={row.get('accepted')} rejected={row.get('rejected')} "
        f"wall={duration(float(row.get('wall_s') or 0.0))}"
    )


def parse_round(line: str) -> tuple[int, int] | None:
    """``(round, total)`` of a progress line, or None."""
    match = _LINE.search(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


#: Per sweep dir, the job dirs already seen finished: a finished job stays finished, so each
#: call lists the sweep dir but looks for ``summary.json`` only in the others (a sweep of N
#: jobs made N^2 checks).
_FINISHED: dict[str, set[str]] = {}


def forget_sweep(sweep_dir: str | Path) -> None:
    """Start counting ``sweep_dir``'s finished jobs afresh (a multirun starts into it)."""
    _FINISHED.pop(str(Path(sweep_dir).resolve()), None)


def _count_done(sweep_dir: Path) -> int:
    """How many job dirs of ``sweep_dir`` hold a ``summary.json``."""
    finished = _FINISHED.setdefault(str(sweep_dir.resolve()), set())
    try:
        entries = [e.name for e in os.scandir(sweep_dir)
                   if e.is_dir() and not e.name.startswith(".")]
    except FileNotFoundError:
        return 0
    for name in entries:
        if name not in finished and (sweep_dir / name / "summary.json").is_file():
            finished.add(name)
    return len(finished.intersection(entries))


def job_done_line(sweep_dir: str | Path) -> str | None:
    """``[multirun] 3/40 jobs done, ETA 1m20s`` from the finished jobs under ``sweep_dir``.

    Counts the jobs whose ``summary.json`` exists (so it works whatever process each job ran
    in, joblib workers included); the total and start time come from the launcher's
    environment (:data:`SWEEP_TOTAL_ENV`, :data:`SWEEP_START_ENV`). None outside a multirun.
    """
    total = os.environ.get(SWEEP_TOTAL_ENV)
    if not total:
        return None
    done = _count_done(Path(sweep_dir))
    start = float(os.environ.get(SWEEP_START_ENV) or time.time())
    elapsed = time.time() - start
    remaining = max(int(total) - done, 0)
    eta = elapsed / done * remaining if done else math.nan
    return (
        f"[multirun] {done}/{total} jobs done, {duration(elapsed)} elapsed, ETA {duration(eta)}"
    )
