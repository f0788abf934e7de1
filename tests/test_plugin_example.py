"""flower-qlearn as a plugin: a user's own ServerApp drives our ClientApp with Flower's records.

The example file is the README's plugin section. Its numbers must equal our own ServerApp's for
the same experiment (which tests/test_pipeline.py checks against a bare NumPy
re-implementation), and the ClientApp must answer a bad ConfigRecord with an error naming it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from flower_helpers import instruction, task_identity
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from flower_qlearn import run_experiment, run_inprocess
from flower_qlearn.client_app import app as client_app

EXAMPLE = Path(__file__).parents[1] / "examples" / "own_server_app.py"


def _example():
    spec = importlib.util.spec_from_file_location("own_server_app", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ours(module, tmp_path) -> np.ndarray:
    t = module.TASK
    overrides = [
        "strategy=importance", "mdp=garnet", "num_rounds=30", "log_every=0", "figures=false",
        f"num_clients={t['num_clients']}", f"mdp.num_states={t['mdp.num_states']}",
        f"mdp.num_actions={t['mdp.num_actions']}", f"mdp.branching={t['mdp.branching']}",
        f"client.local_steps={t['client.local_steps']}",
        f"client.learning_rate={t['client.learning_rate']}",
        f"client.behavior={t['client.behavior']}", f"output_dir={tmp_path / 'ours'}",
    ]
    return run_experiment(overrides).q_table


def test_users_server_app_drives_our_client_app_on_a_garnet_in_process(tmp_path):
    module = _example()
    run_inprocess(module.app, client_app, 4, run_config={"output_dir": str(tmp_path)})
    theirs = np.load(tmp_path / "q_table.npy")
    assert theirs.shape == (20, 4) and np.abs(theirs).max() > 0  # the Garnet, not the defaults
    np.testing.assert_array_equal(theirs, _ours(module, tmp_path))


def _context(partition_id: int = 0) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": partition_id,
                                                      "num-partitions": 2},
                   state=RecordDict(), run_config={})


def _train(config: dict, q: np.ndarray | None = None):
    q = np.zeros((2, 10)) if q is None else q
    with task_identity():
        message = instruction(
            RecordDict({"arrays": ArrayRecord({"q": Array(q)}), "config": ConfigRecord(config)}),
            node_id=7,
        )
        return client_app(message=message, context=_context())


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"client.learning_rat": 0.1}, "client.learning_rat"),
        ({"client.learning_rate": 1.5}, "client.learning_rate=1.5"),
        ({"mdp.gamma": 1.0}, "mdp.gamma=1.0"),
        ({"mdp.name": "nope"}, "mdp.name='nope'"),
        ({"client.behavior": "greedy"}, "client.behavior='greedy'"),
        ({"task": "sarsa"}, "task='sarsa'"),
        ({"period.gamma": 0.5}, "period.gamma"),  # another task's round key
    ],
)
def test_bad_config_record_key_gets_an_error_reply_naming_it(config, named):
    reply = _train({"task": "q_learning", "server-round": 1, **config})
    assert reply.has_error()
    assert named in reply.error.reason and "\n" not in reply.error.reason


def test_config_record_alone_chooses_the_environment():
    # Keys left out take conf/'s defaults (two_state, m = 10); given keys choose a Garnet.
    reply = _train({"task": "q_learning", "server-round": 1})
    assert not reply.has_error() and reply.content["arrays"]["q"].numpy().shape == (2, 10)
    garnet = {"task": "q_learning", "server-round": 1, "mdp.name": "garnet",
              "mdp.num_states": 6, "mdp.num_actions": 3}
    reply = _train(garnet, q=np.zeros((6, 3)))
    assert reply.content["arrays"]["counts"].numpy().sum() == 50  # conf's client.local_steps
    wrong_shape = _train(garnet)  # a (2, 10) table for a 6x3 Garnet
    assert wrong_shape.has_error() and "shape" in wrong_shape.error.reason


@pytest.mark.parametrize("budget", ["0", "50000"])
def test_a_client_app_process_imports_no_hydra_and_loads_one_kernel(budget):
    """A ClientApp process imports neither Hydra nor OmegaConf; compiled (a zero interpreted
    budget) it loads only the kernel its task needs; a small task within the budget runs
    interpreted and imports no numba at all (``flower_qlearn.jit``)."""
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np
        from flower_helpers import instruction, task_identity
        from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
        from flower_qlearn.client_app import app
        config = ConfigRecord({{"task": "q_learning", "server-round": 1}})
        with task_identity():
            msg = instruction(RecordDict({{"arrays": ArrayRecord({{"q": Array(np.zeros((2, 10)))}}),
                                          "config": config}}), node_id=1)
            reply = app(message=msg, context=Context(1, 1, {{"partition-id": 0}}, RecordDict(),
                                                      {{}}))
        from flower_qlearn import kernels
        from flower_qlearn.jit import Kernel
        def dispatcher(value):
            return value._dispatcher if isinstance(value, Kernel) else value
        compiled = sorted(n for n in dir(kernels)
                          if getattr(dispatcher(getattr(kernels, n)), "signatures", None))
        print(json.dumps({{"error": reply.has_error(), "compiled": compiled,
                          "numba": "numba" in sys.modules,
                          "modules": sorted(m for m in sys.modules
                                            if m.split(".")[0] in ("hydra", "omegaconf",
                                                                   "matplotlib", "ray"))}}))
        """
    )
    env = dict(os.environ, FLOWER_QLEARN_INTERPRETED_STEPS=budget)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=True, env=env)
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["error"] is False
    assert seen["modules"] == []  # no Hydra, OmegaConf, matplotlib or Ray in a client
    if budget == "0":
        assert seen["compiled"] == ["async_q_steps"]  # only the kernel its task needs
    else:
        assert seen["compiled"] == [] and seen["numba"] is False


@pytest.mark.slow
def test_users_server_app_drives_our_client_app_through_flwr_run(tmp_path):
    """The example as a Flower App of its own, run by `flwr run` on the simulation runtime."""
    from flower_qlearn.deployment import submit_run, wait_for_run
    from flower_qlearn.federation import CONNECTION, LocalFederation

    app_dir = tmp_path / "own-app"
    app_dir.mkdir()
    (app_dir / "own_server_app.py").write_text(EXAMPLE.read_text())
    (app_dir / "pyproject.toml").write_text(textwrap.dedent(
        """
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "own-app"
        version = "1.0.0"
        dependencies = ["flower-qlearn"]

        [tool.flwr.app]
        publisher = "a-flower-user"

        [tool.flwr.app.components]
        serverapp = "own_server_app:app"
        clientapp = "flower_qlearn.client_app:app"

        [tool.flwr.app.config]
        output_dir = ""
        """
    ))
    out = tmp_path / "out"
    out.mkdir()
    with LocalFederation(tmp_path / "fed", simulation=True, auth=False) as fed:
        run_id = submit_run({"output_dir": str(out)}, CONNECTION, fed.cli_env, app_dir=app_dir,
                            federation_config={"num-supernodes": 4,
                                               "client-resources-num-cpus": 1})
        status = wait_for_run(run_id, CONNECTION, fed.cli_env, timeout=300, poll_interval=1.0)
        assert status == "finished:completed", fed.run_log(run_id)[-2000:]
    np.testing.assert_array_equal(np.load(out / "q_table.npy"), _ours(_example(), tmp_path))
