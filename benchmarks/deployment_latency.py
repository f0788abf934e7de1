"""Deployment round latency: flower-qlearn vs a minimal Flower NumPy app, side by side.

One secured local federation (SuperLink + ``--nodes`` SuperNodes, TLS and SuperNode
authentication: :class:`flower_qlearn.federation.LocalFederation`, what
``scripts/local_federation.py`` starts) runs, alternately, ``--repeats`` times each:

- the baseline, ``benchmarks/minimal_app`` (Flower's FedAvg through ``Strategy.start`` over a
  (2, 10) NumPy array; its ClientApp adds one): ``flwr run benchmarks/minimal_app``;
- flower-qlearn's default experiment (equal averaging on two_state, 50 local steps per round)
  with ``num_clients = --nodes``: ``flwr run .``.

Each run does ``--rounds`` rounds; a round's time is measured inside the ServerApp from the
start of the round loop to the end of the round (flower-qlearn: the ``wall_s`` column of
``metrics.csv``; baseline: the same marks, written by its ServerApp). Prints every round's time,
the medians, their ratio (flower-qlearn / baseline) and ``uptime`` before and after::

    python benchmarks/deployment_latency.py                 # 3 nodes, 3 rounds, 3 repeats
    python benchmarks/deployment_latency.py --rounds 4 --repeats 2 --insecure

A round of either app is dominated by Flower's own timers: a SuperNode asks the SuperLink for
work every 3 s and starts a fresh ``flwr-clientapp`` process per message, and Flower's
``HttpGrid.send_and_receive`` pulls the replies every 3 s (flower-qlearn pulls every 0.1 s:
:mod:`flower_qlearn.strategies.transport`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
from flower_qlearn.strategies.protocol import flatten
from omegaconf import DictConfig, OmegaConf

from flower_qlearn import config as fq_config
from flower_qlearn.deployment import project_dir, submit_run
from flower_qlearn.federation import CONNECTION, LocalFederation
from flower_qlearn.outputs import RunResult

MINIMAL_APP = Path(__file__).resolve().parent / "minimal_app"


def uptime() -> str:
    """The machine's load, as ``uptime`` prints it."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def wait(fed: LocalFederation, run_id: int, timeout: float = 1200.0) -> str:
    """The run's final status; a ``flwr ls`` that times out (a loaded machine) is asked again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fed.wait(run_id, timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                raise
            print(f"`flwr ls` timed out (load: {uptime()}); asking again", flush=True)


def minimal_rounds(fed: LocalFederation, nodes: int, rounds: int, workdir: Path) -> list[float]:
    """Run the minimal NumPy app once; its round times (s)."""
    timings = workdir / f"minimal-{time.monotonic_ns()}.json"
    run_config = {"num-rounds": rounds, "num-nodes": nodes, "timings-file": str(timings)}
    run_id = submit_run(run_config, CONNECTION, fed.cli_env, app_dir=MINIMAL_APP)
    status = wait(fed, run_id)
    if status != "finished:completed":
        raise RuntimeError(
            f"minimal app run {run_id} ended {status}:\n{fed.run_log(run_id)[-2000:]}"
        )
    return [float(s) for s in json.loads(timings.read_text())["round_s"]]


def packaged_keys_only(cfg: DictConfig, output_dir: Path, app_dir: Path) -> dict:
    """The run config of ``cfg`` (only what differs from the defaults) restricted to the keys
    ``app_dir``'s ``pyproject.toml`` declares: Flower refuses any other key. Why: while a new
    conf key is not yet in ``[tool.flwr.app.config]`` (it is generated), a run that leaves it
    at its default still runs; one that sets it is refused here, naming it."""
    cfg = cfg.copy()
    OmegaConf.update(cfg, "output_dir", str(output_dir.resolve()), merge=False)
    packaged = tomllib.loads((app_dir / "pyproject.toml").read_text())
    known = set(flatten(packaged["tool"]["flwr"]["app"]["config"]))
    run_config = fq_config.to_run_config(cfg, full=False)
    defaults = fq_config.to_run_config(fq_config.compose([]), full=False)
    unknown = [k for k, v in run_config.items() if k not in known and defaults.get(k) != v]
    if unknown:
        raise SystemExit(
            f"{app_dir}/pyproject.toml lacks {unknown}: regenerate it "
            "(python -m flower_qlearn.config --run-config)"
        )
    return {k: v for k, v in run_config.items() if k in known}


def ours_rounds(
    fed: LocalFederation,
    nodes: int,
    rounds: int,
    workdir: Path,
    overrides: list[str],
    app_dir: Path | None,
) -> list[float]:
    """Run flower-qlearn once (``flwr run`` of ``app_dir``, default this project); its round
    times (s) from ``metrics.csv``'s ``wall_s``."""
    out = workdir / f"ours-{time.monotonic_ns()}"
    items = [f"num_clients={nodes}", f"num_rounds={rounds}", "figures=false", *overrides]
    run_config = packaged_keys_only(fq_config.compose(items), out, app_dir or project_dir())
    run_id = submit_run(run_config, CONNECTION, fed.cli_env, app_dir=app_dir)
    status = wait(fed, run_id)
    if status != "finished:completed":
        raise RuntimeError(f"flower-qlearn run {run_id} ended {status}:\n{fed.run_log(run_id)}")
    history = RunResult.load(out).history
    wall = [0.0, *(float(row["wall_s"]) for row in history)]
    return [float(t) for t in np.diff(wall)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="SuperNodes (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each app (default 3)")
    parser.add_argument("--insecure", action="store_true", help="no TLS, no node auth")
    parser.add_argument(
        "--app-dir",
        type=Path,
        default=None,
        help="flower-qlearn Flower App directory to submit (default: this checkout)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="extra Hydra overrides for flower-qlearn (after --)"
    )
    args = parser.parse_args(argv)
    print(f"load before: {uptime()}", flush=True)
    times: dict[str, list[float]] = {"minimal": [], "flower-qlearn": []}
    warm_rounds: dict[str, list[float]] = {"minimal": [], "flower-qlearn": []}
    with tempfile.TemporaryDirectory(prefix="deployment-latency-") as tmp:
        workdir = Path(tmp)
        secure = not args.insecure
        with LocalFederation(workdir / "fed", args.nodes, tls=secure, auth=secure) as fed:
            print(
                f"federation up at {fed.address}: {args.nodes} SuperNodes, "
                f"{'TLS + auth' if secure else 'insecure'}",
                flush=True,
            )
            for rep in range(args.repeats):
                order = (
                    ("flower-qlearn", "minimal") if rep % 2 == 0 else ("minimal", "flower-qlearn")
                )
                for name in order:
                    if name == "minimal":
                        got = minimal_rounds(fed, args.nodes, args.rounds, workdir)
                    else:
                        got = ours_rounds(
                            fed, args.nodes, args.rounds, workdir, args.overrides, args.app_dir
                        )
                    times[name].extend(got)
                    warm_rounds[name].extend(got[1:])
                    print(
                        f"run {rep + 1} {name:>13}: rounds "
                        + " ".join(f"{t:.2f}" for t in got)
                        + " s",
                        flush=True,
                    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(
            f"{name:>13}: median round {value:.2f} s over {len(times[name])} rounds "
            f"(mean {statistics.fmean(times[name]):.2f} s)"
        )
    ratio = medians["flower-qlearn"] / medians["minimal"]
    # Round 1 of a run also installs the FAB on each node (and, for flower-qlearn, compiles
    # the kernel into the installed app's numba cache): rounds 2.. are the steady state.
    warm = {name: statistics.median(warm_rounds[name]) for name in times if warm_rounds[name]}
    if len(warm) == 2:
        print(
            f"rounds 2..: median minimal {warm['minimal']:.2f} s, flower-qlearn "
            f"{warm['flower-qlearn']:.2f} s, ratio {warm['flower-qlearn'] / warm['minimal']:.2f}"
        )
    print(f"ratio flower-qlearn / minimal (median round): {ratio:.2f}")
    print(f"load after: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
