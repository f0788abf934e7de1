"""DASA as the config layer sees it: its client tasks, config rules and builder (registered).

``strategy.operator`` chooses the stochastic approximation DASA runs (:data:`OPERATORS`): the
``q_operator`` task computes an agent's batch Q-learning operator on the Q-table, the
``td_operator`` task the TD(0) operator with linear features on ``theta in R^d``
(:mod:`flower_qlearn.td`, docs/dasa_td.md). The rules check the ``strategy.*`` keys of
``conf/strategy/dasa.yaml`` (with the constructor's parameter rules) and the combinations that
make no sense; the builder turns a composed config into a :class:`Plan`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord

from flower_qlearn.schema import (
    Rule,
    get,
    int_at_least,
    int_between,
    is_int,
    never,
    one_of,
    options,
    positive,
)
from flower_qlearn.td import FEATURES, MAX_FEATURES

from ..base import common_args, value_bound
from ..delays import DelayModel
from ..protocol import ITERATION, NUM_SAMPLES, OPERATOR, task_keys
from ..registry import ClientTask, Plan, StrategySpec, TaskJob, TaskResult, register
from ..robust import ROBUST_RULES, Robust, as_range
from .rule import Defence
from .strategy import BATCH_SIZE, DASA, PARAMETER_RULES

#: The stochastic approximations DASA runs (``strategy.operator``): each has its client task.
OPERATORS = ("q_learning", "td_linear")
#: ``q_learning``'s step size when ``strategy.step_size`` is null (the house default since DASA
#: was added; ``td_linear``'s is ``omega / strategy.omega_divisor``).
Q_LEARNING_STEP_SIZE = 2.0
#: The instruction's round keys of the ``td_operator`` task (the client builds Phi from them).
FEATURES_KEY = "strategy.features"
NUM_FEATURES = "strategy.num_features"
FEATURE_SEED = "strategy.feature_seed"

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
    from flower_qlearn.kernel_drivers import run_q_operator

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


def _num_features(settings: Mapping, num_states: int) -> int:
    """``d``: ``S`` for tabular features or when ``strategy.num_features`` is null."""
    d = settings.get(NUM_FEATURES)
    return num_states if settings[FEATURES_KEY] == "tabular" or d is None else int(d)


def td_operator(job: TaskJob) -> TaskResult:
    """DASA's TD(0) operator with linear features at the received ``theta`` (docs/dasa_td.md).

    ``B = strategy.batch_size`` consecutive transitions of the agent's continuing chain under
    its behavior policy give ``g(theta) = (1/B) sum_j phi(s_j) (r_j + gamma phi(s'_j)^T theta -
    phi(s_j)^T theta)``, ``Phi`` built from the round keys ``strategy.features``,
    ``strategy.num_features``, ``strategy.feature_seed`` exactly as the server builds it. The
    chain, its random numbers and the echoed ``iteration`` are those of :func:`q_operator`.
    """
    from flower_qlearn.agent import initial_state
    from flower_qlearn.td import feature_matrix, run_td_operator

    c, env, settings = job.settings["client"], job.env, job.settings
    batch_size = int(settings[BATCH_SIZE])
    if job.agent in set(c.get("slow_agents") or ()):
        time.sleep(float(c.get("slow_sleep_s") or 0.0))  # a real straggler
    phi = feature_matrix(
        settings[FEATURES_KEY],
        env.mdp.num_states,
        settings.get(NUM_FEATURES),
        int(settings[FEATURE_SEED]),
    )
    state = job.state.get("state")
    if state is None:
        state = initial_state(env, settings["seed"], job.agent)
    g, job.state["state"] = run_td_operator(
        job.q, phi, env.mdp, env.behavior, int(state), batch_size, job.rng
    )
    return {OPERATOR: g}, {NUM_SAMPLES: batch_size, ITERATION: int(settings[ITERATION])}


TD_OPERATOR = ClientTask(
    "td_operator",
    td_operator,
    round_rules=(
        *Q_OPERATOR.round_rules,
        Rule(FEATURES_KEY, one_of(FEATURES), options(FEATURES)),
        Rule(NUM_FEATURES, int_at_least(1), "null or an integer >= 1", optional=True),
        Rule(FEATURE_SEED, int_at_least(0), "an integer >= 0"),
    ),
    iterate_shape=lambda settings, env: (_num_features(settings, env.mdp.num_states),),
)


# --- config rules and builder ---------------------------------------------------------------

def _async(settings: Mapping) -> bool:
    return (settings.get("strategy") or {}).get("execution") == "async"


def _td(settings: Mapping) -> bool:
    return get(settings, "strategy.operator") == "td_linear"


def _features_of_every_state(settings: Mapping) -> bool:
    """``d = S`` (tabular features, or ``num_features`` null) beyond
    :data:`~flower_qlearn.td.MAX_FEATURES` states: the exact ``A`` is a dense ``d x d`` matrix."""
    n = get(settings, "mdp.num_states")
    tabular = get(settings, FEATURES_KEY) == "tabular" or get(settings, NUM_FEATURES) is None
    return _td(settings) and tabular and is_int(n) and n > MAX_FEATURES


def _too_many_features(settings: Mapping) -> bool:
    d, n = get(settings, NUM_FEATURES), get(settings, "mdp.num_states")
    if not (_td(settings) and is_int(d) and is_int(n)):
        return False
    return d > n if get(settings, FEATURES_KEY) == "random" else d != n


RULES_OF_CONFIG = (
    *PARAMETER_RULES,
    *ROBUST_RULES,
    Rule(
        "client.attack",
        one_of(["none", "sign_flip"]),
        "none or sign_flip with operator=td_linear (the TD iterate has no value bound, so "
        "max_value, min_value and random have no range to draw from)",
        when=_td,
        optional=True,
    ),
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
    Rule("strategy.operator", one_of(OPERATORS), options(OPERATORS)),
    Rule("strategy.omega_divisor", positive, "a number > 0"),
    Rule(FEATURES_KEY, one_of(FEATURES), options(FEATURES), when=_td),
    Rule(NUM_FEATURES, int_between(1, MAX_FEATURES), f"null or an integer in [1, {MAX_FEATURES}]",
         when=_td, optional=True),
    Rule(
        NUM_FEATURES,
        never,
        "null or an integer <= mdp.num_states (random features; tabular: = mdp.num_states)",
        when=_too_many_features,
    ),
    Rule(
        "mdp.num_states",
        never,
        f"at most {MAX_FEATURES} with tabular features or strategy.num_features=null (d = "
        "mdp.num_states, and the exact TD solution is a dense d x d system): use "
        f"strategy.features=random strategy.num_features=d with d <= {MAX_FEATURES}",
        when=_features_of_every_state,
    ),
    Rule(FEATURE_SEED, int_at_least(0), "an integer >= 0", when=_td),
    Rule(
        "client.behavior",
        one_of(["uniform"]),
        "uniform with operator=td_linear (every agent samples the same behavior chain, whose "
        "TD fixed point is the ground truth)",
        when=_td,
    ),
    Rule(
        "client.heterogeneity",
        lambda v: v == 0,
        "0 with operator=td_linear (one MDP, one TD fixed point)",
        when=_td,
    ),
)


def operator_bound(gamma: float) -> float:
    """Largest ``|g|`` a valid operator may have: ``|g| <= 1 + (1 + gamma) ||theta||_inf``,
    with slack for the transients of a large step size."""
    return 4.0 * (1.0 + (1.0 + gamma) * value_bound(gamma))


def defence_of(strategy_settings: Mapping[str, Any], gamma: float, td: bool) -> Defence:
    """DASA's :class:`~.rule.Defence` of a run: ``strategy.robust`` always; for the Q-learning
    operator also the l1 clip ``1 + (1 + gamma) max|value range|`` of every used operator and
    the projection of the iterate onto the value range (neither touches an honest run:
    ``docs/robustness.md``). The TD iterate has no a-priori range: no clip, no projection."""
    robust = Robust.from_settings(strategy_settings)
    if td:
        return Defence(robust)
    lo, hi = as_range(value_bound(gamma))
    return Defence(robust, 1.0 + (1.0 + gamma) * max(abs(lo), abs(hi)), (lo, hi))


def td_ground_truth(settings: Mapping[str, Any], mdp):
    """The :class:`~flower_qlearn.td.TDProblem` of a ``td_linear`` run: the features the
    clients build, on the chain of the behavior policy every agent follows (agent 0's: the
    config rules make them all equal)."""
    from flower_qlearn.agent import agent_env
    from flower_qlearn.td import feature_matrix, td_problem

    s = settings["strategy"]
    phi = feature_matrix(
        s["features"], mdp.num_states, s.get("num_features"), int(s["feature_seed"])
    )
    return td_problem(mdp, agent_env(settings, 0).behavior, phi)


def step_size_of(strategy_settings: Mapping[str, Any], problem=None) -> float:
    """``alpha``: ``strategy.step_size`` if set; else ``q_learning``: 2.0,
    ``td_linear``: ``omega / strategy.omega_divisor`` (``problem.omega``)."""
    if strategy_settings.get("step_size") is not None:
        return float(strategy_settings["step_size"])
    if problem is None:
        return Q_LEARNING_STEP_SIZE
    return problem.omega / float(strategy_settings["omega_divisor"])


def build(settings: Mapping[str, Any], mdp) -> Plan:
    """``strategy=dasa`` (or a baseline) on batch Q-learning or TD(0) operators.

    One round = one server iteration; ``strategy.execution=async`` swaps the round loop for
    :func:`~flower_qlearn.strategies.dasa.asynchronous.asynchronous_iterations`.
    ``strategy.operator=td_linear`` iterates on ``theta`` ``(d,)``, evaluated against the TD
    fixed point (objective ``td``).
    """
    from .asynchronous import asynchronous_iterations

    s, num_agents = settings["strategy"], int(settings["num_clients"])
    common = common_args(settings, mdp)
    td = s.get("operator", "q_learning") == "td_linear"
    problem = td_ground_truth(settings, mdp) if td else None
    task = TD_OPERATOR if td else Q_OPERATOR
    shape = problem.theta_star.shape if td else (mdp.num_states, mdp.num_actions)
    strategy = DASA(
        mdp.num_states,
        mdp.num_actions,
        num_agents=num_agents,
        rule=str(s["rule"]),
        step_size=step_size_of(s, problem),
        epsilon=float(s["epsilon"]),
        batch_size=int(s["batch_size"]),
        delays=DelayModel.from_config(settings["delay"], num_agents, int(settings["seed"])),
        max_staleness=int(s["max_staleness"]),
        norm=str(s["norm"]),
        execution=str(s["execution"]),
        tick_s=float(s["tick_s"]),
        # The TD iterate has no a-priori bound (it scales with the features' conditioning):
        # its replies are only checked to be finite.
        value_bound=None if td else operator_bound(mdp.gamma),
        min_available_nodes=common["min_available_nodes"],
        wait_timeout=common["wait_timeout"],
        shape=shape,
        task=task.name,
    )
    strategy.defence = defence_of(s, mdp.gamma, td)  # read by DASA.advance
    round_keys: dict[str, Any] = {BATCH_SIZE: int(s["batch_size"])}
    if td:
        round_keys[FEATURES_KEY] = str(s["features"])
        round_keys[FEATURE_SEED] = int(s["feature_seed"])
        if s.get("num_features") is not None:
            round_keys[NUM_FEATURES] = int(s["num_features"])
    train_config = ConfigRecord({**task_keys(settings, task.name), **round_keys})
    plan = Plan(
        strategy,
        train_config,
        int(settings["num_rounds"]),
        objective="td" if td else "discounted",
        iterate_shape=shape,
        ground_truth=problem,
    )
    if s["execution"] == "async":
        plan.loop = asynchronous_iterations
    return plan


SPEC = register(
    StrategySpec("dasa", build, Q_OPERATOR, rules=RULES_OF_CONFIG, extra_tasks=(TD_OPERATOR,))
)
