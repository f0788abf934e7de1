"""Wall time of a Hydra sweep with the basic (sequential) launcher versus the joblib launcher.

Why: the README quotes how long a typical sweep takes and what ``hydra/launcher=joblib`` (one
worker process per core, via the ``hydra-joblib-launcher`` plugin) saves. The sweep is the
reference experiment (two_state, m=10, K=20, tau=50, 100 rounds, in-process engine) for
2 strategies x 20 seeds = 40 jobs, run through the real ``flower-qlearn -m`` command line, once
per launcher, into temporary sweep directories. The script also checks that both launchers
wrote identical ``metrics.csv`` errors (parallelism must not change numbers).

Usage: ``python benchmarks/sweep_timing.py [--seeds N] [--jobs N]``; ``--jobs`` is joblib's
``n_jobs`` (default -1 = all cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flower_qlearn.sweeps import load_jobs  # noqa: E402


def run_sweep(sweep_dir: Path, seeds: int, launcher: list[str]) -> float:
    """Run the 2-strategy x ``seeds`` sweep; return its wall time in seconds."""
    cmd = [
        sys.executable,
        "-m",
        "flower_qlearn",
        "-m",
        *launcher,
        "strategy=equal,importance",
        f"seed=range(0,{seeds})",
        "num_rounds=100",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Time both launchers, print the wall times and their ratio; exit 1 if numbers differ."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=-1, help="joblib n_jobs (-1: all cores)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fq-sweep-"))
    try:
        print(
            f"sweep: strategy=equal,importance x {args.seeds} seeds, reference experiment "
            f"(two_state m=10, K=20, tau=50, 100 rounds); {os.cpu_count()} cores"
        )
        basic = run_sweep(work / "basic", args.seeds, [])
        print(f"  basic launcher : {basic:7.1f} s")
        joblib = run_sweep(
            work / "joblib",
            args.seeds,
            ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"],
        )
        print(f"  joblib launcher: {joblib:7.1f} s   (speedup {basic / joblib:.2f}x)")
        a = [job.column("q_error").tolist() for job in load_jobs(work / "basic")]
        b = [job.column("q_error").tolist() for job in load_jobs(work / "joblib")]
        same = a == b and len(a) == 2 * args.seeds
        print(f"  identical metrics from both launchers: {'yes' if same else 'NO'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
