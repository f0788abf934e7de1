"""Checkpoint and resume: a run killed with SIGKILL and resumed equals an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from flower_qlearn import config as fq_config
from flower_qlearn import run_experiment

COMMON = ["strategy=importance", "client.behavior=dirichlet", "num_clients=4",
          "client.local_steps=30", "log_every=0", "figures=false"]


def _without_wall(history):
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in history]


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    full = run_experiment(COMMON + ["num_rounds=20", f"output_dir={tmp_path / 'full'}"])
    run_experiment(COMMON + ["num_rounds=8", "checkpoint_every=4", f"output_dir={tmp_path / 'a'}"])
    resumed = run_experiment(COMMON + ["num_rounds=20", f"resume={tmp_path / 'a'}",
                                       f"output_dir={tmp_path / 'b'}"])
    np.testing.assert_array_equal(resumed.q_table, full.q_table)
    assert _without_wall(resumed.history) == _without_wall(full.history)
    assert resumed.summary["resumed_from"] == str(tmp_path / "a")


def test_resume_refuses_a_checkpoint_of_another_experiment(tmp_path):
    run_experiment(COMMON + ["num_rounds=2", "checkpoint_every=2", f"output_dir={tmp_path / 'a'}"])
    with pytest.raises(fq_config.ConfigError, match="different experiment.*seed"):
        run_experiment(COMMON + ["num_rounds=4", "seed=9", f"resume={tmp_path / 'a'}",
                                 f"output_dir={tmp_path / 'b'}"])


@pytest.mark.slow
def test_sigkill_then_resume_gives_exactly_the_uninterrupted_result(tmp_path):
    args = COMMON + ["num_rounds=400", "checkpoint_every=5", "client.sleep_s=0.01"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "flower_qlearn", *args,
                             f"output_dir={killed}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoint.npz"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let it get past the checkpoint, into the middle of later rounds
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint.exists() and not (killed / "summary.json").exists()
    resumed = run_experiment(args[:-1] + [f"resume={killed}", f"output_dir={tmp_path / 'r'}"])
    full = run_experiment(args[:-1] + [f"output_dir={tmp_path / 'full'}"])
    assert len(resumed.history) == 400
    np.testing.assert_array_equal(resumed.q_table, full.q_table)
    assert _without_wall(resumed.history) == _without_wall(full.history)
