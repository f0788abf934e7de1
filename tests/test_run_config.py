"""Flower run config: the composed config as flat keys, and our ServerApp driven by them.

`flwr run . --run-config "strategy.name='importance' num_rounds=50"` gives the ServerApp the
packaged defaults of pyproject.toml fused with the user's keys (Flower's own fuse); the ServerApp
composes the same config Hydra would for the equivalent overrides.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.common.config import flatten_dict, fuse_dicts, parse_config_args

from flower_qlearn import config as fq_config
from flower_qlearn import run_experiment, run_inprocess
from flower_qlearn.client_app import app as client_app
from flower_qlearn.server_app import app as server_app

ROOT = Path(__file__).resolve().parents[1]


def _packaged() -> dict:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return flatten_dict(project["tool"]["flwr"]["app"]["config"])


def _flwr_run_config(cli: str) -> dict:
    """What the ServerApp sees for `flwr run . --run-config CLI` (Flower's own parse + fuse)."""
    return fuse_dicts(_packaged(), parse_config_args([cli]))


def test_pyproject_holds_the_whole_default_config_as_run_config_keys():
    assert _packaged() == fq_config.packaged_run_config()
    defaults = fq_config.settings(fq_config.compose([]))
    assert _packaged()["strategy.name"] == defaults["strategy"]["name"] == "equal"
    assert _packaged()["client.learning_rate"] == defaults["client"]["learning_rate"]


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["strategy=importance", "client.behavior=disjoint", "num_rounds=7"],
        ["+experiment=woo_heterogeneity"],
        ["+experiment=avg_frozenlake"],
        ["strategy=dasa", "delay=stragglers", "delay.agents=[0,3]", "client.slow_agents=[1]"],
        ["mdp=garnet", "mdp.num_states=2", "mdp.branching=2", "client.behavior_groups=2"],
        ["engine=deployment", "engine.address=10.0.0.1:9000"],
    ],
)
def test_a_whole_config_survives_the_round_trip_through_run_config(overrides):
    cfg = fq_config.compose(overrides)
    run_config = fq_config.to_run_config(cfg)
    assert all(isinstance(v, int | float | str | bool) for v in run_config.values())
    fq_config._RUN_CACHE.clear()  # compose again, do not use the launcher's registration
    back = fq_config.from_run_config(run_config)
    assert fq_config.settings(back) == fq_config.settings(cfg)


@pytest.mark.parametrize(
    ("cli", "overrides"),
    [
        ("strategy.name='importance' num_rounds=50 client.learning_rate=0.1",
         ["strategy=importance", "num_rounds=50", "client.learning_rate=0.1"]),
        # a chosen option keeps its own defaults (garnet's 10 states, not two_state's 2)
        ("mdp.name='garnet' mdp.num_actions=4", ["mdp=garnet", "mdp.num_actions=4"]),
        ("mdp.name='frozenlake' mdp.map_name='8x8' mdp.num_states=64",
         ["mdp=frozenlake", "mdp.map_name=8x8", "mdp.num_states=64"]),  # 8x8: 64 states
        ("strategy.name='dasa' strategy.epsilon=0.2 delay.name='stragglers' delay.agents='[1]'",
         ["strategy=dasa", "strategy.epsilon=0.2", "delay=stragglers", "delay.agents=[1]"]),
    ],
)
def test_flwr_run_config_keys_compose_what_hydra_composes(cli, overrides):
    fq_config._RUN_CACHE.clear()
    got = fq_config.from_run_config(_flwr_run_config(cli))
    assert fq_config.settings(got) == fq_config.settings(fq_config.compose(overrides))


@pytest.mark.parametrize(
    ("run_config", "message"),
    [
        ({"client.learning_rate": 1.5}, "client.learning_rate=1.5 is out of range"),
        ({"strategy.name": "nope"}, "strategy=nope is not an option"),
        ({"num_rounds": 0}, "num_rounds=0"),
        ({"mdp.map_name": "8x8"}, "mdp.map_name is not a key"),  # two_state has no map
        ({"delay.name": "stragglers", "delay.agents": "[1,"}, "delay.agents"),
    ],
)
def test_bad_run_config_fails_in_one_line_naming_the_key(run_config, message):
    fq_config._RUN_CACHE.clear()
    with pytest.raises(fq_config.ConfigError) as info:
        fq_config.from_run_config({**_packaged(), **run_config})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_our_server_app_is_driven_by_flat_run_config_keys(tmp_path):
    cli = (f"strategy.name='importance' num_clients=3 num_rounds=4 client.behavior='disjoint' "
           f"log_every=0 figures=false output_dir='{tmp_path / 'flat'}'")
    fq_config._RUN_CACHE.clear()
    run_inprocess(server_app, client_app, 3, run_config=_flwr_run_config(cli))
    ours = run_experiment(["strategy=importance", "num_clients=3", "num_rounds=4",
                           "client.behavior=disjoint", "log_every=0", "figures=false",
                           f"output_dir={tmp_path / 'hydra'}"])
    np.testing.assert_array_equal(np.load(tmp_path / "flat" / "q_table.npy"), ours.q_table)
