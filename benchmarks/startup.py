"""Start-up time: ``flower-qlearn num_rounds=1 figures=false`` vs ``import flwr, hydra, numpy``.

Both are run as fresh processes, alternately, ``--repeats`` times each (the order flips every
repetition); prints every wall time, the medians, their ratio and ``uptime`` before and after::

    python benchmarks/startup.py                  # 7 repetitions
    python benchmarks/startup.py --repeats 11 -- mdp=garnet

The flower-qlearn run is the default experiment (equal averaging, two_state, 20 clients, 50
local steps) for one round, writing its outputs into a temporary directory. What its time is
made of beyond the three imports: ``python -X importtime`` and cProfile of the same command
line (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = [sys.executable, "-c", "import flwr, hydra, numpy"]


def uptime() -> str:
    """The machine's load, as ``uptime`` prints it."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def flower_qlearn_command(output_dir: Path, overrides: list[str]) -> list[str]:
    """``flower-qlearn num_rounds=1 figures=false`` (the console script beside this Python)."""
    script = Path(sys.executable).parent / "flower-qlearn"
    entry = [str(script)] if script.is_file() else [sys.executable, "-m", "flower_qlearn"]
    return [*entry, "num_rounds=1", "figures=false", f"output_dir={output_dir}", *overrides]


def wall_time(command: list[str]) -> float:
    """Seconds the process takes, start to exit; raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each (default 7)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --)")
    args = parser.parse_args(argv)
    print(f"load before: {uptime()}", flush=True)
    times: dict[str, list[float]] = {"baseline": [], "flower-qlearn": []}
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        ours = flower_qlearn_command(Path(tmp) / "run", args.overrides)
        wall_time(ours)  # not timed: numba's on-disk cache and the OS file cache are warm
        commands = {"baseline": BASELINE, "flower-qlearn": ours}
        for rep in range(args.repeats):
            order = ["baseline", "flower-qlearn"][:: 1 if rep % 2 == 0 else -1]
            for name in order:
                times[name].append(wall_time(commands[name]))
            print(
                f"rep {rep + 1}: baseline {times['baseline'][-1]:.2f} s, "
                f"flower-qlearn {times['flower-qlearn'][-1]:.2f} s",
                flush=True,
            )
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"baseline      `{' '.join(BASELINE[1:])}`: median {medians['baseline']:.2f} s")
    print(f"flower-qlearn `num_rounds=1 figures=false`: median {medians['flower-qlearn']:.2f} s")
    print(
        f"ratio flower-qlearn / baseline (medians): "
        f"{medians['flower-qlearn'] / medians['baseline']:.2f}"
    )
    print(f"load after: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
