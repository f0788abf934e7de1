"""Deferred compilation (flower_qlearn.jit): interpreted kernels give the compiled numbers.

A short run executes the kernels as the Python functions they are instead of importing numba
(~0.4 s); the same code must give the same floats, bit for bit. Each check runs in a fresh
process, so that nothing is compiled before the interpreted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from flower_qlearn import jit
    from flower_qlearn.kernel_drivers import (run_async_q, run_average_reward, run_q_operator,
                                              run_sync_q)
    from flower_qlearn.mdp import garnet, two_state
    from flower_qlearn.samplers import action_table, next_state_table
    from flower_qlearn.sampling import behavior_policy

    def everything():
        out = []
        for mdp in (two_state(num_actions=4), garnet(30, 4, 5, seed=3)):
            S, A = mdp.num_states, mdp.num_actions
            policy = behavior_policy("uniform", S, A, agent=0, num_agents=1, seed=0)
            for sampler in ("cdf", "alias"):
                p = next_state_table(mdp.transitions, sampler)
                pi = action_table(policy, sampler)
                rng = np.random.default_rng([7, S, len(sampler)])
                q = np.zeros((S, A)); counts = np.zeros((S, A), dtype=np.int64)
                state = run_async_q(q, counts, mdp.R, mdp.gamma, 0.1, p, pi, 0, 700, rng)
                out += [q.tolist(), counts.tolist(), state]
                q = np.zeros((S, A))
                run_sync_q(q, mdp.R, mdp.gamma, 0.2, p, 9, rng)
                out.append(q.tolist())
                q = np.zeros((S, A))
                run_average_reward(q, mdp.R, 0.8, q.max(axis=1) + 0.5,
                                   np.linspace(1.0, 0.1, 6), p, rng)
                out.append(q.tolist())
                g, state = run_q_operator(np.full((S, A), 0.3), mdp.R, mdp.gamma, p, pi, 1,
                                          333, rng)
                out += [g.tolist(), state]
        return out

    first = everything()
    numba_before = "numba" in sys.modules
    jit.compile_all()
    second = everything()
    print(json.dumps({"numba_before": numba_before, "compiled_after": jit.compiled(),
                      "same": repr(first) == repr(second), "first": first[:2]}))
    """
)


def _run(budget: str) -> dict:
    env = dict(os.environ, FLOWER_QLEARN_INTERPRETED_STEPS=budget)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_interpreted_kernels_give_the_compiled_numbers_bit_for_bit():
    seen = _run("100000000")
    assert seen["numba_before"] is False  # the first pass ran interpreted: numba not imported
    assert seen["compiled_after"] is True
    assert seen["same"] is True  # every table, count and state, both samplers, both MDPs
    assert any(v != 0.0 for row in seen["first"][0] for v in row)  # it did learn something


def test_a_zero_budget_compiles_from_the_first_call():
    seen = _run("0")
    assert seen["numba_before"] is True and seen["same"] is True


def test_the_budget_is_spent_then_the_kernels_compile(monkeypatch):
    from flower_qlearn import jit

    monkeypatch.setattr(jit, "INTERPRETED_STEPS", 10)
    monkeypatch.setitem(jit._STATE, "interpreted_steps", 0)
    monkeypatch.setitem(jit._STATE, "compiled", False)
    with jit.interpreted(6) as first:
        assert jit._LOCAL.active is True
    assert jit._LOCAL.active is False
    with jit.interpreted(6) as second:  # 12 > 10: over the budget
        assert getattr(jit._LOCAL, "active", False) is False
    monkeypatch.setitem(jit._STATE, "compiled", True)
    with jit.interpreted(1) as third:  # once compiled, never interpreted
        pass
    assert (first, second, third) == (True, False, False)


def test_a_bad_budget_is_one_line_exit_2_nothing_written(tmp_path):
    for bad in ("abc", "-3"):
        env = dict(os.environ, FLOWER_QLEARN_INTERPRETED_STEPS=bad)
        proc = subprocess.run([sys.executable, "-m", "flower_qlearn", "num_rounds=1",
                               f"output_dir={tmp_path / 'out'}"], capture_output=True,
                              text=True, env=env, timeout=300, check=False)
        assert proc.returncode == 2
        assert proc.stderr.strip() == (f"flower-qlearn: invalid environment: "
                                       f"FLOWER_QLEARN_INTERPRETED_STEPS={bad!r}; "
                                       "expected an integer >= 0")
        assert not (tmp_path / "out").exists()


def test_dispatcher_of_a_kernel_before_and_after_compilation():
    # An @numba.njit caller outside the package (benchmarks/kernel_speed.py) needs numba's
    # dispatcher whether it imported the Kernel before compilation or the rebound global after.
    code = textwrap.dedent("""
        import numba
        from flower_qlearn import jit
        from flower_qlearn.samplers import inverse_cdf as before
        jit.compile_all()
        from flower_qlearn.samplers import inverse_cdf as after
        assert isinstance(before, jit.Kernel) and not isinstance(after, jit.Kernel)
        assert jit.dispatcher(before) is after and jit.dispatcher(after) is after
        import numpy as np
        @numba.njit
        def caller(row, u):
            return jit_inverse_cdf(row, u)
        jit_inverse_cdf = jit.dispatcher(before)
        print(caller(np.array([0.25, 1.0]), 0.5))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "1"
