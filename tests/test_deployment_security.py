"""Deployment security: a stranger who registers a SuperNode key cannot join a run of ours.

Flower 1.42's open-source SuperLink serves the Control API (``flwr supernode register``, ``flwr
run``) on the same port as the Fleet API, and without Flower Enterprise's account
authentication anyone who can reach that port and holds the (public) CA certificate can
register a key, even with ``--enable-supernode-auth`` (docs/deployment.md, "Security"). So the
defence that must hold is our ServerApp's: the server's own node -> partition map refuses a
node that claims a partition already held or one outside ``0..num_clients-1``, and the run's
numbers are those of the honest run. The strangers below do exactly what an outsider can do:
register a key through the Control API with nothing but the CA certificate, then start a
SuperNode, mid-run, with partition-id 0 (a duplicate) and 3 (an extra agent). A SuperNode runs
the ClientApp of the run's FAB (the operator's), so a stranger chooses only its node config.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from flower_qlearn import federation as lf
from flower_qlearn import run_experiment
from flower_qlearn.deployment import flwr_env, flwr_json, write_connection
from flower_qlearn.outputs import RunResult
from flower_qlearn.tls import make_node_key

# 3 agents, a few rounds: the strangers join after round 1 and are there for the last ones.
EXPERIMENT = ["strategy=importance", "num_clients=3", "num_rounds=5", "figures=false",
              "log_every=1", "round_timeout=120"]
#: Columns a stranger changes although it is refused: the traffic it causes and its rejections.
TRAFFIC = ("wall_s", "rejected", "bytes_up", "bytes_down")


def _rows(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TRAFFIC} for row in history]


def register_as_stranger(fed: lf.LocalFederation, home: Path, name: str) -> int:
    """Register a new SuperNode key the way an outsider can: CA certificate + address only."""
    write_connection(home, "theirs", fed.address, root_certificates=fed.certs["ca"])
    _, public = make_node_key(fed.workdir / "keys" / name)  # start_supernode finds it there
    payload = flwr_json(["supernode", "register", str(public), "theirs"], flwr_env(home))
    return int(payload["node-id"])


def _wait_for_rounds(metrics: Path, rounds: int, fed, run_id: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= rounds + 1):
        assert time.monotonic() < deadline, fed.run_log(run_id)
        time.sleep(0.2)


@pytest.mark.slow
def test_self_registered_strangers_are_refused_and_the_numbers_are_the_honest_runs(tmp_path):
    with lf.LocalFederation(tmp_path / "fed", num_nodes=3) as fed:
        run_id, out = fed.submit(EXPERIMENT, tmp_path / "deployed")
        _wait_for_rounds(out / "metrics.csv", 1, fed, run_id, timeout=240)
        strangers = {}
        for partition, name in ((0, "stranger-duplicate"), (3, "stranger-extra")):
            strangers[partition] = register_as_stranger(fed, tmp_path / name, name)
            fed.start_supernode(partition, name=name, wait=False)
        status = fed.wait(run_id, timeout=600)
        log = fed.run_log(run_id)
        online = fed.online_node_ids()
    assert status == "finished:completed", log[-3000:]
    # Flower let both strangers in: registered through the Control API and online.
    assert set(strangers.values()) <= online

    honest = run_experiment([*EXPERIMENT, f"output_dir={tmp_path / 'honest'}"])
    deployed = RunResult.load(out)
    np.testing.assert_array_equal(deployed.q_table, honest.q_table)
    assert _rows(deployed.history) == _rows(honest.history)
    assert [(r["accepted"], r["missing"]) for r in deployed.history] == [(3, 0)] * 5
    # Each stranger was sent at least one instruction, answered, and was refused for it.
    held_by = fed.node_ids[0]
    assert (
        f"rejected reply from node {strangers[0]}: claims partition_id 0, held by node {held_by}"
        in log
    )
    # The extra agent runs the run's own FAB, whose ClientApp refuses partition-id 3 itself
    # (an error reply); a patched ClientApp claiming 3 would meet the server's range check.
    refused = f"rejected reply from node {strangers[3]}"
    extra = [line for line in log.splitlines() if refused in line]
    assert extra and all(
        "agent must be in [0, num_agents=3), got 3" in line
        or "partition_id 3 is not a partition of this run (0..2)" in line
        for line in extra
    ), log[-3000:]
    assert sum(r["rejected"] for r in deployed.history) >= 2
