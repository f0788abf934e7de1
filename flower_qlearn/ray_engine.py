"""``engine=ray``: the apps on Flower's simulation runtime (Ray), submitted with ``flwr run``.

Flower's ``run_simulation`` is deprecated and hands the apps an empty run config, so the Ray
engine runs the way ``flwr run .`` does for local simulation: a private simulation SuperLink
(:class:`flower_qlearn.federation.LocalFederation` with ``simulation=True``, TLS on 127.0.0.1)
in a temporary directory with its own ``FLWR_HOME`` and ``RAY_TMPDIR``; ``flwr run`` submits
this project with the run config as given and ``--federation-config`` for the runtime
(``num-supernodes``, client CPUs, Ray's init arguments, which
``flwr.simulation.app._run_simulation_settings`` turns into the Ray backend config); the run's
status is polled until it finishes.

Everything started for the run is stopped when it ends, whatever the outcome: a run still going
first (``flwr-simulation`` shuts Ray down cleanly while its SuperLink is up), then the SuperLink
and the helpers Flower spawned (by pid), then any process still carrying the federation's
environment marker or pointing into the run's ``RAY_TMPDIR`` (Ray's agents and workers outlive a
killed parent); the temporary directory, Ray's session logs included, is removed.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import federation
from .deployment import echo, submit_run, wait_for_run

log = logging.getLogger("flower_qlearn")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*:")

#: Environment of the simulation runtime (beside its private ``RAY_TMPDIR``): no usage stats, no
#: uv runtime-env hook (offline), no metrics collection, no accelerator FutureWarning.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_enable_metrics_collection": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # as that warning advises (no GPUs are used)
}


def federation_config(cfg: Any, cpu_count: int | None = None) -> dict:
    """``--federation-config`` of a run: ``cfg.num_clients`` virtual SuperNodes on Ray.

    Flower's ``SimulationConfig`` takes whole CPUs per client. A fractional
    ``engine.num_cpus_per_client`` ``c`` gets the same number of concurrent actors (Ray's CPUs
    divided by ``c``) by declaring one CPU per client and ``cpus / c`` CPUs to Ray.
    """
    cpus = float(cfg.engine.num_cpus_per_client)
    config: dict = {
        "num-supernodes": int(cfg.num_clients),
        "init-args-logging-level": "WARNING",  # Ray's driver logger (its startup banner)
        "init-args-log-to-driver": True,  # ClientApp output still reaches the run's log
        "verbose": False,
    }
    if cpus.is_integer():
        config["client-resources-num-cpus"] = int(cpus)
    else:
        config["client-resources-num-cpus"] = 1
        available = cpu_count or os.cpu_count() or 1
        config["init-args-num-cpus"] = max(1, math.floor(available / cpus))
    return config


def ray_processes(ray_tmpdir: str | Path) -> list[int]:
    """Live processes whose command line points into ``ray_tmpdir`` (a run's Ray session)."""
    needle = (str(Path(ray_tmpdir).resolve()) + os.sep).encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    for pid in list(found):
        found.extend(federation.descendants(pid))
    return sorted({p for p in found if p != os.getpid()})


def log_tail(text: str, lines: int = 6) -> str:
    """The end of a run's log on one line: its last exception first, then its last lines."""
    kept = [
        _ANSI.sub("", ln).strip()
        for ln in text.splitlines()
        if ln.strip() and "Printing logstream" not in ln and "flower.ai/docs" not in ln
    ]
    errors = [ln for ln in kept if _EXCEPTION.match(ln)]
    tail = " | ".join(kept[-lines:])
    return (f"{errors[-1]} (log tail: {tail})" if errors else tail)[-2000:]


def run_ray(cfg: Any, run_config: dict) -> None:
    """Run the apps on Flower's Ray simulation runtime with ``flwr run``; wait for the run.

    Parameters
    ----------
    cfg
        The composed config (an OmegaConf ``DictConfig`` or any object with attribute access):
        ``num_clients`` virtual SuperNodes, ``engine.num_cpus_per_client`` CPUs each;
        ``engine.run_timeout`` (if set) bounds the whole run.
    run_config
        The Flower run config, passed to the apps as given (the ServerApp writes the outputs).

    Raises
    ------
    RuntimeError
        The run did not complete (one line: the status and the end of the run's log).
    """
    if importlib.util.find_spec("ray") is None:
        raise ImportError(
            "engine=ray needs Ray: pip install 'flower-qlearn[ray]' (flwr[simulation])"
        )
    simulation = federation_config(cfg)
    # A short path: Ray's unix sockets live under RAY_TMPDIR (107-byte limit).
    workdir = Path(tempfile.mkdtemp(prefix="fq-ray-")).resolve()
    ray_tmpdir = workdir / "ray"
    env = {**RAY_ENV, "RAY_TMPDIR": str(ray_tmpdir)}
    fed = federation.LocalFederation(workdir / "fed", simulation=True, auth=False, env=env)
    try:
        ray_tmpdir.mkdir()
        fed.start()
        connection, cli_env = federation.CONNECTION, fed.cli_env
        run_id = submit_run(run_config, connection, cli_env, federation_config=simulation)
        log.info("flower-qlearn: run %s on Flower's simulation runtime (Ray)", run_id)
        timeout = float(getattr(cfg.engine, "run_timeout", None) or math.inf)
        status = wait_for_run(
            run_id, connection, cli_env, timeout=timeout, poll_interval=0.5, on_line=echo
        )
        if status != "finished:completed":
            raise RuntimeError(
                f"engine=ray: run {run_id} ended {status}: {log_tail(fed.run_log(run_id))}"
            )
    finally:
        fed.stop()
        federation.stop_pids(ray_processes(ray_tmpdir), grace=5.0)
        shutil.rmtree(workdir, ignore_errors=True)
