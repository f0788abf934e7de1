"""The Woo heterogeneity sweep: ``flower-qlearn -m`` versus a bare compiled script, side by side.

Why: issue 11's goal is that ``flower-qlearn -m +experiment=woo_heterogeneity`` (two_state
m=10, K=20, tau=50, eta=0.05, 600 rounds, 2 strategies x 2 behaviors x 100 seeds; the shipped
experiment runs on ``engine=batched`` with ``hydra/launcher=batched``) takes at most 3x the wall
time of the bare numba script ``benchmarks/woo_bare.py`` doing the same computation, and that
both give bit-identical q_error curves. This script runs both, in this order, as fresh
processes (after a small warm-up run of each, so that numba's on-disk caches exist and no
compilation is timed), checks every job's curve for equality, and prints both wall times,
their ratio and the machine's load (``uptime``) before and after.

Usage: ``python benchmarks/woo_sweep_speed.py [--seeds N] [--rounds R] [--keep DIR]``
(default: 100 seeds, 600 rounds: the paper scale).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flower_qlearn.outputs import read_metrics  # noqa: E402
from flower_qlearn.sweeps import load_jobs  # noqa: E402

STRATEGIES, BEHAVIORS = ("equal", "importance"), ("disjoint", "uniform")


def uptime() -> str:
    """The machine's load, as ``uptime`` prints it."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def timed(cmd: list[str]) -> float:
    """Wall time of ``cmd`` as a fresh process (its output discarded; it must succeed)."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def bare_cmd(seeds: int, rounds: int, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "woo_bare.py"), f"--seeds={seeds}",
            f"--rounds={rounds}", f"--out={out}"]


def sweep_cmd(seeds: int, rounds: int, sweep_dir: Path) -> list[str]:
    return [sys.executable, "-m", "flower_qlearn", "-m", "+experiment=woo_heterogeneity",
            f"seed=range(0,{seeds})", f"num_rounds={rounds}", f"hydra.sweep.dir={sweep_dir}"]


def sweep_curves(sweep_dir: Path, seeds: int) -> np.ndarray:
    """q_error curves of the sweep's jobs as ``(strategy, behavior, seed, round)``."""
    curves: dict[tuple, np.ndarray] = {}
    for job in load_jobs(sweep_dir):
        cfg = job.config
        key = (cfg["strategy"]["name"], cfg["client"]["behavior"], int(cfg["seed"]))
        curves[key] = np.array([row["q_error"] for row in read_metrics(job.path / "metrics.csv")])
    return np.stack([np.stack([np.stack([curves[(st, be, s)] for s in range(seeds)])
                               for be in BEHAVIORS]) for st in STRATEGIES])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100, help="seeds per cell (default 100)")
    ap.add_argument("--rounds", type=int, default=600, help="rounds (default 600)")
    ap.add_argument("--keep", default=None, help="keep the sweep directory here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="woo_speed_") as tmp:
        tmp = Path(tmp)
        timed(bare_cmd(1, 2, tmp / "warm.npz"))  # numba caches: no compilation is timed
        timed(sweep_cmd(1, 2, tmp / "warm"))
        before = uptime()
        bare_s = timed(bare_cmd(args.seeds, args.rounds, tmp / "bare.npz"))
        sweep_dir = Path(args.keep) if args.keep else tmp / "sweep"
        ours_s = timed(sweep_cmd(args.seeds, args.rounds, sweep_dir))
        after = uptime()
        bare = np.load(tmp / "bare.npz")["q_error"]
        ours = sweep_curves(sweep_dir, args.seeds)
    jobs = bare.shape[0] * bare.shape[1] * bare.shape[2]
    same = bare.shape == ours.shape and np.array_equal(bare, ours)
    print(f"{jobs} jobs x {args.rounds} rounds (two_state m=10, K=20, tau=50)")
    print(f"bare numba script (benchmarks/woo_bare.py): {bare_s:.1f} s")
    print(f"flower-qlearn -m +experiment=woo_heterogeneity: {ours_s:.1f} s")
    print(f"ratio: {ours_s / bare_s:.2f}x (goal <= 3x)")
    print(f"q_error curves bit-identical: {same}")
    print(f"load before: {before}")
    print(f"load after:  {after}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
