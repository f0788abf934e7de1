"""The README's plugin example: a user's own ServerApp with our strategy and our ClientApp."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from flower_qlearn import run_experiment
from flower_qlearn.client_app import app as client_app
from flower_qlearn.engine import InProcessGrid, run_server_app

EXAMPLE = Path(__file__).parents[1] / "examples" / "own_server_app.py"


def test_users_server_app_with_flwr_start_matches_our_server_app(tmp_path):
    spec = importlib.util.spec_from_file_location("own_server_app", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    grid = InProcessGrid(client_app, 20, {"output-dir": str(tmp_path)})
    # Flower's own Strategy.start drives the rounds
    run_server_app(module.app, grid, {"output-dir": str(tmp_path)})
    ours = run_experiment(["strategy=importance", "num_rounds=20", "log_every=0",
                           "figures=false", f"output_dir={tmp_path / 'ours'}"])
    np.testing.assert_array_equal(np.load(tmp_path / "q_table.npy"), ours.q_table)
