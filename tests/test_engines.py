"""The in-process engine and Flower's Ray simulation run the same apps to the same numbers."""

from __future__ import annotations

import numpy as np
import pytest

from flower_qlearn import run_experiment


@pytest.mark.slow
def test_ray_engine_gives_identical_numbers_to_inprocess(tmp_path):
    common = ["strategy=importance", "client.behavior=disjoint", "num_clients=3",
              "num_rounds=4", "log_every=0", "figures=false"]
    ray = run_experiment(common + ["engine=ray", f"output_dir={tmp_path / 'ray'}"])
    inproc = run_experiment(common + [f"output_dir={tmp_path / 'inproc'}"])
    np.testing.assert_array_equal(ray.q_table, inproc.q_table)
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in ray.history]
    assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in inproc.history]
    assert ray.summary["engine"] == "ray" and all(r["accepted"] == 3 for r in ray.history)
