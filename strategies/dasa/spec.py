"""DASA as the config layer sees it: its client task, config rules and builder (registered).

The ``q_operator`` task computes an agent's batch Q-learning operator; the rules check the
``strategy.*`` keys of ``conf/strategy/dasa.yaml`` (with the constructor's parameter rules) and
the combinations that make no sense; the builder turns a composed config into a :class:`Plan`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord

from flower_qlearn.schema import Rule, int_at_least, one_of

from ..base import common_args, value_bound
from ..delays import DelayModel
from ..protocol import ITERATION, NUM_SAMPLES, OPERATOR, task_keys
from ..registry import ClientTask, Plan, StrategySpec, TaskJob, TaskResult, register
from .strategy import BATCH_SIZE, DASA, PARAMETER_RULES

# --- the client task ------------------------------------------------------------------------


def q_operator(job: TaskJob) -> TaskResult:
    """DASA's batch Q-learning operator at the received iterate (docs/ALGORITHMS.md section 6).

    ``B = strategy.batch_size`` consecutive transitions of the agent's continuing Markov chain
    give ``g(s, a) = (1/B) sum_j 1{(s_j, a_j) = (s, a)} (r_j + gamma max_b q(s'_j, b) -
    q(s_j, a_j))``. The reply echoes ``iteration`` so the server knows how stale the operator is
    on arrival. Agents listed in ``client.slow_agents`` first sleep ``client.slow_sleep_s``
    seconds (real stragglers).
    """
    from flower_qlearn.agent import initial_state
    from flower_qlearn.kernels import run_q_operator

    c, env = job.settings["client"], job.env
    batch_size = int(job.settings[BATCH_SIZE])
    if job.agent in set(c.get("slow_agents") or ()):
        time.sleep(float(c.get("slow_sleep_s") or 0.0))  # a real straggler
    state = job.state.get("state")
    if state is None:
        state = initial_state(env, job.settings["seed"], job.agent)
    g, job.state["state"] = run_q_operator(
        job.q, env.mdp.R, env.mdp.gamma, env.p_cdf, env.pi_cdf, int(state), batch_size, job.rng
    )
    return {OPERATOR: g}, {NUM_SAMPLES: batch_size, ITERATION: int(job.settings[ITERATION])}


Q_OPERATOR = ClientTask(
    DASA.task,
    q_operator,
    round_rules=(
        Rule(BATCH_SIZE, int_at_least(1), "an integer >= 1"),
        Rule(ITERATION, int_at_least(0), "an integer >= 0"),
    ),
)



# --- config rules and builder ---------------------------------------------------------------

def _async(settings: Mapping) -> bool:
    return (settings.get("strategy") or {}).get("execution") == "async"


RULES_OF_CONFIG = (
    *PARAMETER_RULES,
    Rule(
        "client.sampling",
        one_of(["markovian"]),
        "markovian (DASA's operator samples each agent's Markov chain)",
    ),
    Rule(
        "strategy.rule",
        one_of(["dasa", "delayed"]),
        "dasa or delayed with execution=async (nondelayed is the synchronous baseline: use "
        "execution=simulated)",
        when=_async,
    ),
    Rule(
        "delay.name",
        one_of(["none"]),
        "none with execution=async (real delays replace the simulated ones)",
        when=_async,
    ),
)


def operator_bound(gamma: float) -> float:
    """Largest ``|g|`` a valid operator may have: ``|g| <= 1 + (1 + gamma) ||theta||_inf``,
    with slack for the transients of a large step size."""
    return 4.0 * (1.0 + (1.0 + gamma) * value_bound(gamma))


def build(settings: Mapping[str, Any], mdp) -> Plan:
    """``strategy=dasa`` (or a baseline) on batch Q-learning operators.

    One round = one server iteration; ``strategy.execution=async`` swaps the round loop for
    :func:`~flower_qlearn.strategies.dasa.asynchronous.asynchronous_iterations`.
    """
    from .asynchronous import asynchronous_iterations

    s, num_agents = settings["strategy"], int(settings["num_clients"])
    common = common_args(settings, mdp)
    strategy = DASA(
        mdp.num_states,
        mdp.num_actions,
        num_agents=num_agents,
        rule=str(s["rule"]),
        step_size=float(s["step_size"]),
        epsilon=float(s["epsilon"]),
        batch_size=int(s["batch_size"]),
        delays=DelayModel.from_config(settings["delay"], num_agents, int(settings["seed"])),
        max_staleness=int(s["max_staleness"]),
        norm=str(s["norm"]),
        execution=str(s["execution"]),
        tick_s=float(s["tick_s"]),
        value_bound=operator_bound(mdp.gamma),
        min_available_nodes=common["min_available_nodes"],
        wait_timeout=common["wait_timeout"],
    )
    train_config = ConfigRecord(
        {**task_keys(settings, Q_OPERATOR.name), BATCH_SIZE: int(s["batch_size"])}
    )
    plan = Plan(strategy, train_config, int(settings["num_rounds"]))
    if s["execution"] == "async":
        plan.loop = asynchronous_iterations
    return plan


SPEC = register(StrategySpec("dasa", build, Q_OPERATOR, rules=RULES_OF_CONFIG))
