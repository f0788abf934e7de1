"""Flower ClientApp: one Q-learning agent per node, its state kept in ``Context.state``.

A ``train`` message carries the global Q-table (``ArrayRecord`` key ``"q"``) and a
``ConfigRecord`` saying which local task to run and with which step size, discount and number of
steps. The agent's environment (its MDP, possibly perturbed, and its behavior policy) comes from
the composed Hydra config and the node's ``partition-id``; its Markov state persists across
rounds in ``Context.state`` because ClientApp objects themselves are ephemeral.

Randomness of round ``r`` of agent ``k`` is drawn from ``SeedSequence([seed, k, r])``: the same
numbers on every engine, and a resumed run continues exactly where a killed one stopped.

Local tasks (the ``task`` key of the config):

``q_learning``
    ALGORITHMS.md sections 2-4: ``local_steps`` synchronous (generative) or asynchronous
    (Markovian) Q-learning steps from the global table; replies with ``q`` and the visit
    ``counts`` of the round (all ``local_steps`` for every entry in generative mode).

``average_reward``
    ALGORITHMS.md section 5: synchronous steps with the normalized target of the epoch's
    ``gamma`` and the frozen ``Vbar = max_a Qbar``, one per entry of ``step_sizes``; replies
    with ``q``.

``q_operator``
    ALGORITHMS.md section 6 (DASA): the batch Q-learning operator ``g`` at the received iterate
    from ``batch_size`` fresh transitions of the agent's continuing Markov chain; replies with
    ``g`` and echoes the ``iteration`` it was computed at. Agents listed in
    ``client.slow_agents`` first sleep ``client.slow_sleep_s`` seconds (real stragglers).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import PARTITION_ID_KEY
from omegaconf import DictConfig

from . import config as fq_config
from .kernels import run_async_q, run_average_reward, run_q_operator, run_sync_q, warmup
from .mdp import TabularMDP, make_mdp, perturb
from .sampling import behavior_policy, cumulative

AGENT_STATE_KEY = "agent"


@dataclass(frozen=True)
class AgentEnv:
    """Everything an agent samples from: its MDP and behavior policy, as cumulative tables."""

    mdp: TabularMDP
    behavior: np.ndarray  # (S, A)
    p_cdf: np.ndarray  # (S, A, S)
    pi_cdf: np.ndarray  # (S, A)


def base_mdp(cfg: DictConfig) -> TabularMDP:
    """The experiment's MDP (the server's ground truth) built from ``cfg.mdp``."""
    return _base_mdp_cached(_mdp_key(fq_config.plain(cfg)))


def _mdp_key(settings: dict) -> tuple:
    return tuple(sorted(settings["mdp"].items()))


@lru_cache(maxsize=32)
def _base_mdp_cached(key: tuple) -> TabularMDP:
    return make_mdp(**dict(key))


#: Optional node-config keys (``flower-supernode --node-config``) that give one SuperNode its own
#: environment: the perturbation level and seed of its MDP (default: ``client.heterogeneity``
#: and a seed derived from ``(seed, partition-id)``).
NODE_HETEROGENEITY_KEY = "heterogeneity"
NODE_PERTURB_SEED_KEY = "perturb-seed"


def agent_env(cfg: DictConfig, agent: int, node_config: dict | None = None) -> AgentEnv:
    """Agent ``agent``'s environment: base MDP, perturbed if the agent is heterogeneous.

    The perturbation level is ``client.heterogeneity`` unless the node config sets
    ``heterogeneity``; its seed is drawn from ``(seed, agent)`` unless the node config sets
    ``perturb-seed``.
    """
    settings = fq_config.plain(cfg)
    c = settings["client"]
    node_config = node_config or {}
    level = float(node_config.get(NODE_HETEROGENEITY_KEY, c["heterogeneity"]))
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"node config {NODE_HETEROGENEITY_KEY}={level} is outside [0, 1]")
    perturb_seed = node_config.get(NODE_PERTURB_SEED_KEY)
    if perturb_seed is None:
        perturb_seed = int(np.random.SeedSequence([settings["seed"], agent]).generate_state(1)[0])
    key = (
        _mdp_key(settings),
        agent,
        settings["num_clients"],
        c["behavior"],
        float(c["behavior_alpha"]),
        float(c["behavior_epsilon"]),
        c["behavior_groups"],
        level,
        int(perturb_seed),
        settings["seed"],
    )
    return _agent_env_cached(key)


@lru_cache(maxsize=1024)
def _agent_env_cached(key: tuple) -> AgentEnv:
    mdp_key, agent, num_agents, behavior, alpha, epsilon, groups, level, perturb_seed, seed = key
    mdp = _base_mdp_cached(mdp_key)
    if level > 0:
        mdp = perturb(mdp, level, seed=perturb_seed)
    policy = behavior_policy(
        behavior,
        mdp.num_states,
        mdp.num_actions,
        agent=agent,
        num_agents=num_agents,
        seed=seed,
        alpha=alpha,
        epsilon=epsilon,
        num_groups=groups,
    )
    return AgentEnv(mdp=mdp, behavior=policy, p_cdf=cumulative(mdp.P), pi_cdf=cumulative(policy))


def client_config(context: Context, fallback: dict | None = None) -> DictConfig:
    """The composed experiment config this node runs under (from the run config's overrides).

    ``fallback`` is the launcher's run config, used where the runtime's is empty (the legacy
    ``run_simulation`` API passes an empty run config and forbids modifying it).
    """
    overrides = context.run_config.get(fq_config.OVERRIDES_KEY)
    if overrides is None and fallback:
        overrides = fallback.get(fq_config.OVERRIDES_KEY)
    return fq_config.compose(str(overrides or ""))


def partition_id(context: Context) -> int:
    """This node's agent index: ``partition-id`` from the node config (simulation or SuperNode)."""
    if PARTITION_ID_KEY not in context.node_config:
        raise ValueError(
            f"node config has no '{PARTITION_ID_KEY}': start the SuperNode with "
            f'--node-config "{PARTITION_ID_KEY}=<k>"'
        )
    return int(context.node_config[PARTITION_ID_KEY])


def round_rng(cfg: DictConfig, agent: int, server_round: int) -> np.random.Generator:
    """Randomness of round ``server_round`` of agent ``agent``, the same on every engine."""
    return np.random.default_rng([int(fq_config.plain(cfg)["seed"]), agent, server_round])


def markov_state(context: Context, env: AgentEnv, cfg: DictConfig, agent: int) -> int:
    """The agent's current state; drawn from the MDP's initial distribution on first use."""
    if AGENT_STATE_KEY in context.state.config_records:
        return int(context.state.config_records[AGENT_STATE_KEY]["state"])
    rng = np.random.default_rng([int(cfg.seed), agent, 0])
    return int(rng.choice(env.mdp.num_states, p=env.mdp.initial))


def save_markov_state(context: Context, state: int) -> None:
    """Persist the agent's current state so the trajectory continues next round."""
    context.state.config_records[AGENT_STATE_KEY] = ConfigRecord({"state": int(state)})


# --------------------------------------------------------------------------------------------
# Local tasks: each takes the global table and the round config and returns (arrays, metrics).
# --------------------------------------------------------------------------------------------

TaskFn = Callable[[np.ndarray, ConfigRecord, Context, DictConfig, int], tuple[dict, dict]]


def q_learning_task(
    q: np.ndarray, conf: ConfigRecord, context: Context, cfg: DictConfig, agent: int
) -> tuple[dict, dict]:
    """Local Q-learning from the global table (FedSynQ / FedAsynQ): ``local_steps`` steps."""
    env = agent_env(cfg, agent, context.node_config)
    rng = round_rng(cfg, agent, int(conf["server_round"]))
    steps = int(conf["local_steps"])
    lr = float(conf["learning_rate"])
    gamma = float(conf["gamma"])
    if conf["sampling"] == "generative":
        run_sync_q(q, env.mdp.R, gamma, lr, env.p_cdf, steps, rng)
        counts = np.full(q.shape, steps, dtype=np.int64)
    else:
        counts = np.zeros(q.shape, dtype=np.int64)
        state = markov_state(context, env, cfg, agent)
        state = run_async_q(
            q, counts, env.mdp.R, gamma, lr, env.p_cdf, env.pi_cdf, state, steps, rng
        )
        save_markov_state(context, state)
    return {"q": q, "counts": counts}, {"num_samples": steps}


def average_reward_task(
    q: np.ndarray, conf: ConfigRecord, context: Context, cfg: DictConfig, agent: int
) -> tuple[dict, dict]:
    """One communication period of federated average-reward Q-learning (ALGORITHMS.md 5).

    Warm start from the received ``Qbar``; the targets ``(1 - gamma_e) r + gamma_e Vbar(s')``
    use ``Vbar = max_a Qbar`` frozen for the whole period; synchronous (generative) sampling
    over every ``(s, a)``; the step sizes are the server's (``step_sizes``), never re-derived.
    """
    env = agent_env(cfg, agent, context.node_config)
    rng = round_rng(cfg, agent, int(conf["server_round"]))
    step_sizes = np.asarray(conf["step_sizes"], dtype=np.float64)
    v_frozen = q.max(axis=1)  # a new array: q is updated in place below
    run_average_reward(q, env.mdp.R, float(conf["gamma"]), v_frozen, step_sizes, env.p_cdf, rng)
    return {"q": q}, {"num_samples": int(step_sizes.shape[0])}


def q_operator_task(
    q: np.ndarray, conf: ConfigRecord, context: Context, cfg: DictConfig, agent: int
) -> tuple[dict, dict]:
    """DASA's batch Q-learning operator at the received iterate (ALGORITHMS.md section 6).

    ``B = batch_size`` consecutive transitions of the agent's continuing Markov chain give
    ``g(s, a) = (1/B) sum_j 1{(s_j, a_j) = (s, a)} (r_j + gamma max_b q(s'_j, b) - q(s_j, a_j))``.
    The reply echoes ``iteration`` so the server knows how stale the operator is on arrival.
    """
    env = agent_env(cfg, agent, context.node_config)
    rng = round_rng(cfg, agent, int(conf["server_round"]))
    batch_size = int(conf["batch_size"])
    if agent in set(cfg.client.get("slow_agents") or ()):
        time.sleep(float(cfg.client.get("slow_sleep_s", 0.0)))  # a real straggler
    state = markov_state(context, env, cfg, agent)
    g, state = run_q_operator(
        q, env.mdp.R, float(conf["gamma"]), env.p_cdf, env.pi_cdf, state, batch_size, rng
    )
    save_markov_state(context, state)
    return {"g": g}, {"num_samples": batch_size, "iteration": int(conf["iteration"])}


#: Registry of local tasks by the ``task`` key of the round config.
TASKS: dict[str, TaskFn] = {"q_learning": q_learning_task, "average_reward": average_reward_task}
TASKS["q_operator"] = q_operator_task


def handle_train(message: Message, context: Context, fallback: dict | None = None) -> Message:
    """Run the local task the server asked for and reply with NumPy arrays and metrics."""
    start = time.perf_counter()
    cfg = client_config(context, fallback)
    agent = partition_id(context)
    conf = message.content["config"]
    task = str(conf["task"])
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; this client runs {sorted(TASKS)}")
    q = np.array(message.content["arrays"]["q"].numpy(), dtype=np.float64, copy=True, order="C")
    sleep_s = float(fq_config.plain(cfg)["client"]["sleep_s"])
    if sleep_s > 0:
        time.sleep(sleep_s)
    arrays, metrics = TASKS[task](q, conf, context, cfg, agent)
    metrics = {**metrics, "partition_id": agent, "compute_s": time.perf_counter() - start}
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
            "metrics": MetricRecord(metrics),
        }
    )
    return Message(content, reply_to=message)


def make_client_app(run_config: dict | None = None) -> ClientApp:
    """A ClientApp; ``run_config`` fills in the run config where the runtime leaves it empty.

    ``flwr run`` and SuperNodes pass the run config in the ``Context``; the legacy
    ``run_simulation`` API does not, so the launcher bakes it in here.
    """
    client = ClientApp()
    warmed = []

    @client.train()
    def train(message: Message, context: Context) -> Message:
        if not warmed:  # compile the kernels once per process, outside any round's timing
            warmup()
            warmed.append(True)
        return handle_train(message, context, run_config)

    return client


app = make_client_app()
