"""Deployment on Flower infrastructure: the FAB, `flwr run`, and a secured local federation.

The slow tests start real Flower processes on 127.0.0.1 (:mod:`flower_qlearn.federation`): a
SuperLink with TLS (certificates generated per test) and SuperNode authentication, SuperNodes that
each run one agent (``partition-id``), and ``flwr run`` submitting this project as a FAB. Every
deployment number is checked against the in-process engine for the same config and seed: the
apps are the same and aggregation is ordered by partition id, so the numbers must be identical.
A deployment round costs ~3 s of polling plus one ClientApp process per node, so runs are short.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from flower_qlearn import config as fq_config
from flower_qlearn import federation as lf
from flower_qlearn import run_experiment
from flower_qlearn.api import run_config_for
from flower_qlearn.deployment import write_connection
from flower_qlearn.inprocess import FIRST_NODE_ID, InProcessGrid, run_server_app
from flower_qlearn.outputs import RunResult

ROOT = Path(__file__).resolve().parent.parent

# A short importance-averaging experiment over 3 agents (= 3 SuperNodes).
EXPERIMENT = ["strategy=importance", "num_clients=3", "figures=false", "log_every=1"]


def _rows(history: list[dict], *ignore: str) -> list[dict]:
    """Per-round metrics without the wall clock (the engine-dependent column) and ``ignore``."""
    drop = {"wall_s", *ignore}
    return [{k: v for k, v in row.items() if k not in drop} for row in history]


def _fab(tmp_path: Path) -> zipfile.ZipFile:
    from flwr.cli.build import build_fab_from_disk

    path = tmp_path / "app.fab"
    path.write_bytes(build_fab_from_disk(ROOT))
    return zipfile.ZipFile(path)


# ------------------------------------------------------------------------------------------
# Fast: what `flwr run` ships, and how the apps find their config inside it
# ------------------------------------------------------------------------------------------


def test_fab_holds_the_apps_and_conf_but_no_outputs_tests_or_caches(tmp_path):
    names = set(_fab(tmp_path).namelist())
    assert {"pyproject.toml", "conf/config.yaml", "conf/strategy/importance.yaml"} <= names
    assert {"flower_qlearn/server_app.py", "flower_qlearn/client_app.py"} <= names
    assert "strategies/__init__.py" in names
    allowed = ("flower_qlearn/", "strategies/", "conf/", "pyproject.toml", ".info/")
    assert all(n.startswith(allowed) for n in names), sorted(names)
    assert not any("__pycache__" in n or n.endswith((".pyc", ".npy", ".csv")) for n in names)


def test_apps_compose_conf_from_an_unpacked_fab_without_the_installed_package(tmp_path):
    """On a SuperLink/SuperNode the FAB's directory shadows any installed flower_qlearn."""
    _fab(tmp_path).extractall(tmp_path / "app")
    code = (
        "import sys\n"
        # drop the editable-install finder: only the FAB's files may be found
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        f"sys.path.insert(0, {str(tmp_path / 'app')!r})\n"
        "from flower_qlearn import config\n"
        "import flower_qlearn.client_app, flower_qlearn.strategies as s\n"
        "cfg = config.compose(['strategy=importance', 'mdp=garnet'])\n"
        "print(config.config_dir(), cfg.strategy.name, cfg.mdp.name, s.__file__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout.split()
    # the FAB's strategies/ (beside the package) is flower_qlearn.strategies, as in the wheel
    assert out == [str(tmp_path / "app" / "conf"), "importance", "garnet",
                   str(tmp_path / "app" / "strategies" / "__init__.py")]


def test_pyproject_declares_the_flower_app_and_its_run_config():
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "flower_qlearn.server_app:app",
        "clientapp": "flower_qlearn.client_app:app",
    }
    from flwr.common.config import flatten_dict

    assert flatten_dict(app["config"]) == fq_config.packaged_run_config()
    # `flwr run` migrates a legacy federations table and rewrites pyproject.toml in place.
    assert "federations" not in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]


def test_deployment_config_is_validated_with_one_line_errors():
    cfg = fq_config.compose(["engine=deployment"])
    assert cfg.engine.address == "127.0.0.1:8000" and cfg.engine.insecure is False
    for override, field in [
        ("engine.address=localhost", "engine.address"),
        ("engine.address=host:99999", "engine.address"),
        ("engine.poll_interval=0", "engine.poll_interval"),
        ("engine.run_timeout=-1", "engine.run_timeout"),
        ("engine.insecure=maybe", "engine.insecure"),
    ]:
        with pytest.raises(fq_config.ConfigError, match=field) as err:
            fq_config.compose(["engine=deployment", override])
        assert "\n" not in str(err.value)
    # a named connection replaces the address
    assert fq_config.compose(["engine=deployment", "engine.address=x", "engine.connection=c"])


def test_write_connection_produces_the_flower_cli_config(tmp_path):
    write_connection(tmp_path, "a", "127.0.0.1:9", root_certificates=tmp_path / "ca.crt")
    write_connection(tmp_path, "b", "10.0.0.1:8000", insecure=True)
    conf = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"]
    assert conf["default"] == "a"
    assert conf["a"] == {"address": "127.0.0.1:9", "root-certificates": str(tmp_path / "ca.crt")}
    assert conf["b"] == {"address": "10.0.0.1:8000", "insecure": True}


def test_launcher_stops_every_process_it_started(tmp_path):
    """Processes (and the helpers Flower spawns for them) are gone after stop(), by pid."""
    fed = lf.LocalFederation(tmp_path / "fed", simulation=True, auth=False).start()
    deadline = time.monotonic() + 30
    while not fed.superlink.helpers and time.monotonic() < deadline:
        fed.superlink.remember_helpers()  # the SuperExec it starts in its own session
        time.sleep(0.2)
    pids = [fed.superlink.pid, *sorted(fed.superlink.helpers)]
    assert len(pids) >= 2
    fed.stop()
    time.sleep(0.2)
    assert not [pid for pid in pids if lf._alive(pid)]
    assert os.path.getsize(fed.superlink.log) > 0


# ------------------------------------------------------------------------------------------
# Slow: real Flower processes
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_flwr_run_on_the_simulation_runtime_matches_inprocess(tmp_path):
    """`flwr run .` against a simulation SuperLink (Ray, num-supernodes=3, TLS)."""
    with lf.LocalFederation(tmp_path / "fed", simulation=True, auth=False) as fed:
        sim = fed.run([*EXPERIMENT, "num_rounds=2"], tmp_path / "sim", timeout=300)
    assert (tmp_path / "sim" / "metrics.csv").is_file()
    inproc = run_experiment([*EXPERIMENT, "num_rounds=2", f"output_dir={tmp_path / 'inproc'}"])
    np.testing.assert_array_equal(sim.q_table, inproc.q_table)
    assert _rows(sim.history) == _rows(inproc.history)
    assert [r["accepted"] for r in sim.history] == [3, 3]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """3 authorized SuperNodes (TLS + node auth), and an intruder with an unregistered key.

    The intruder claims partition-id 0: were it let in, agent 0 would be counted twice. The
    tests below share this federation (starting one costs ~15 s); the node-loss test, which
    kills a SuperNode, comes last in this file.
    """
    workdir = tmp_path_factory.mktemp("federation")
    with lf.LocalFederation(workdir, num_nodes=3) as fed:
        intruder = fed.start_supernode(0, register=False, name="intruder")
        intruder.popen.wait(timeout=120)
        yield fed


@pytest.mark.slow
def test_supernode_with_unregistered_key_is_refused(federation):
    intruder = federation.supernodes["intruder"]
    assert intruder.popen.returncode not in (0, None)  # Flower exits 305: cannot activate
    assert "Failed to activate SuperNode" in intruder.log.read_text(errors="replace")
    # The SuperLink knows the 3 registered keys' nodes only; the intruder never got a node id.
    nodes = {int(n["node-id"]) for n in federation.nodes()}
    assert nodes == set(federation.node_ids.values()) and len(nodes) == 3
    assert "--insecure" not in federation.superlink.popen.args


@pytest.mark.slow
def test_engine_deployment_over_tls_and_auth_matches_inprocess(federation, tmp_path):
    """engine=deployment submits to the SuperLink, waits, reads back: same numbers as in-process."""
    experiment = [*EXPERIMENT, "num_rounds=2"]
    deployed = run_experiment(
        [
            *experiment,
            "engine=deployment",
            f"engine.address={federation.address}",
            f"engine.root_certificates={federation.certs['ca']}",
            "engine.poll_interval=1.0",
            "engine.run_timeout=300",
            f"output_dir={tmp_path / 'deployed'}",
        ]
    )
    inproc = run_experiment([*experiment, f"output_dir={tmp_path / 'inproc'}"])
    np.testing.assert_array_equal(deployed.q_table, inproc.q_table)
    assert _rows(deployed.history) == _rows(inproc.history)
    assert deployed.summary["engine"] == "deployment"
    assert [r["accepted"] for r in deployed.history] == [3, 3]  # the intruder added nothing


class LoseNodeGrid(InProcessGrid):
    """In-process grid whose node ``lost`` stops answering after ``rounds_before_loss`` rounds."""

    def __init__(self, *args, lost: int, rounds_before_loss: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lost, self.rounds_before_loss, self.rounds = lost, rounds_before_loss, 0

    def send_and_receive(self, messages, *, timeout=None):
        self.rounds += 1
        if self.rounds > self.rounds_before_loss:
            self.disconnected.add(FIRST_NODE_ID + self.lost)
        return super().send_and_receive(messages, timeout=timeout)


def _inprocess_losing_node(overrides: list[str], output_dir: Path, lost: int, after: int):
    from flower_qlearn.client_app import app as client_app
    from flower_qlearn.server_app import app as server_app

    cfg = fq_config.compose(overrides)
    run_config = run_config_for(cfg, output_dir)
    grid = LoseNodeGrid(
        client_app, cfg.num_clients, run_config, lost=lost, rounds_before_loss=after
    )
    run_server_app(server_app, grid, run_config)
    return RunResult.load(output_dir)


@pytest.mark.slow
def test_supernode_killed_mid_run_the_run_finishes_with_the_others(federation, tmp_path):
    """SIGKILL one SuperNode after round 1: round 2 goes on with 2 agents, round 1 is intact.

    The SuperLink only notices a dead node after 2 missed heartbeats (30-60 s after the kill),
    so the server waits for its reply until ``round_timeout`` or until the SuperLink answers
    for the offline node, and aggregates the other two (``min_replies=2``). Expected numbers:
    the in-process engine losing the same node.
    """
    fed = federation
    experiment = [*EXPERIMENT, "num_rounds=2", "min_replies=2", "round_timeout=75"]
    run_id, out = fed.submit(experiment, tmp_path / "deployed")
    metrics = out / "metrics.csv"
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline, fed.run_log(run_id)
        time.sleep(0.2)
    victim = fed.supernodes["supernode-2"]
    victim.kill()
    assert fed.wait(run_id, timeout=300) == "finished:completed"
    assert victim.popen.returncode == -9
    deployed = RunResult.load(out)
    expected = _inprocess_losing_node(experiment, tmp_path / "inproc", lost=2, after=1)
    # The lost reply is `missing` if round_timeout expires first, or `rejected` if the SuperLink
    # has meanwhile declared the node offline and answered for it (a "Node Unavailable" error).
    lost = [(r["accepted"], r["rejected"] + r["missing"]) for r in deployed.history]
    assert lost == [(3, 0), (2, 1)]
    assert _rows(deployed.history, "rejected", "missing") == _rows(
        expected.history, "rejected", "missing"
    )
    np.testing.assert_array_equal(deployed.q_table, expected.q_table)
