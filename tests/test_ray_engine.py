"""engine=ray: the apps on Flower's simulation runtime via ``flwr run``, same numbers as in-process.

The run goes through a private simulation SuperLink (:mod:`flower_qlearn.ray_engine`); afterwards
no process of it may be left, Ray's daemons included (they can outlive their parent).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from flower_qlearn import config as fq_config
from flower_qlearn import ray_engine, run_experiment

COMMON = [
    "strategy=importance",
    "client.behavior=disjoint",
    "num_clients=3",
    "num_rounds=3",
    "log_every=0",
    "figures=false",
]


def test_federation_config_reaches_the_ray_backend_as_flower_parses_it():
    """The ``--federation-config`` pairs, read back by Flower's own parsers (as ``flwr run`` and
    ``flwr-simulation`` do), give K virtual SuperNodes with the configured CPUs on Ray."""
    from flwr.common.config import parse_config_args
    from flwr.simulation.app import _run_simulation_settings
    from flwr.supercore.utils import simulation_config_from_json

    def backend(overrides: list[str], cpu_count: int = 8):
        config = ray_engine.federation_config(fq_config.compose(overrides), cpu_count=cpu_count)
        pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())  # as submit_run
        parsed = {k.replace("-", "_"): v for k, v in parse_config_args([pairs]).items()}
        return _run_simulation_settings(simulation_config_from_json(parsed))

    num, name, config, verbose, _ = backend(["engine=ray", "num_clients=5"])
    assert (num, name, verbose) == (5, "ray", False)
    assert config["client_resources"] == {"num_cpus": 1}
    assert config["init_args"] == {"logging_level": "WARNING", "log_to_driver": True}
    # Whole CPUs only in Flower's SimulationConfig: half a CPU each = twice the CPUs for Ray.
    _, _, config, _, _ = backend(["engine=ray", "engine.num_cpus_per_client=0.5"], cpu_count=3)
    assert config["client_resources"] == {"num_cpus": 1} and config["init_args"]["num_cpus"] == 6


def test_run_config_keys_with_dots_stay_flat_through_the_toml_file(tmp_path):
    """submit_run writes the run config as TOML: dotted keys are quoted, Flower reads them flat."""
    import tomli_w
    from flwr.common.config import parse_config_args

    run_config = {"strategy.name": "importance", "num_rounds": 4, "mdp.gamma": 0.9, "a": "b c"}
    text = tomli_w.dumps(run_config)
    assert '"strategy.name" = "importance"' in text
    (tmp_path / "run.toml").write_text(text)
    assert parse_config_args([str(tmp_path / "run.toml")]) == run_config


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live process (zombies have exited)."""
    cmd = ["ps", "-eo", "pid,ppid,stat,cmd"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines()[1:]:
        pid, ppid, stat, cmd = (line.split(None, 3) + ["", ""])[:4]
        if not stat.startswith("Z"):
            table[int(pid)] = (int(ppid), cmd)
    return table


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _leftovers(run_dirs: list[str]) -> list[str]:
    """Ray/Flower processes of this run still alive: below this test process in the process
    tree, or naming the run's directory (Ray session) on their command line or environment."""
    table, me, found = _processes(), os.getpid(), []
    for pid, (_, cmd) in table.items():
        chain, p = set(), pid
        while p in table and p not in chain and p > 1:
            chain.add(p)
            p = table[p][0]
        rayish = cmd.startswith("ray::") or any(
            name in cmd for name in ("raylet", "gcs_server", "/ray/", "flwr", "flower-super")
        )
        session = any(d in cmd or d.encode() in _environ(pid) for d in run_dirs)
        if (rayish and me in chain) or session:
            found.append(f"{pid} {cmd[:120]}")
    return found


LOUD = [o if o != "log_every=0" else "log_every=1" for o in COMMON]


@pytest.mark.slow
def test_ray_engine_gives_identical_numbers_to_inprocess_and_leaves_no_process(
    tmp_path, monkeypatch
):
    run_dirs: list[str] = []  # the private directory run_ray makes (RAY_TMPDIR is inside it)
    mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        path = mkdtemp(*args, **kwargs)
        if "fq-ray-" in Path(path).name:
            run_dirs.append(path)
        return path

    monkeypatch.setattr(ray_engine.tempfile, "mkdtemp", recording_mkdtemp)
    ray = run_experiment([*LOUD, "engine=ray", f"output_dir={tmp_path / 'ray'}"])
    assert len(run_dirs) == 1
    # the ServerApp's progress lines, from Flower's log of the run, reached the user's side
    lines = (tmp_path / "ray" / "flower-qlearn.log").read_text()
    assert all(f"[round {r}/3]" in lines for r in (1, 2, 3))
    assert _leftovers(run_dirs) == []
    assert not Path(run_dirs[0]).exists()  # certificates, logs and Ray's session are gone
    monkeypatch.undo()

    inproc = run_experiment([*LOUD, f"output_dir={tmp_path / 'inproc'}"])
    np.testing.assert_array_equal(ray.q_table, inproc.q_table)
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in ray.history]
    assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in inproc.history]
    assert ray.summary["engine"] == "ray" and all(r["accepted"] == 3 for r in ray.history)
    assert len(ray.history) == 3
