"""One agent's world: its MDP (possibly perturbed), its behavior policy, its random numbers.

Built from the task settings of a client's instruction (plain nested dict: ``seed``,
``num_clients``, ``mdp.*``, ``client.*``) and the node's partition id; no Flower, no Hydra. The
server builds the experiment's MDP (its ground truth) with the same :func:`experiment_mdp`.

Randomness of round ``r`` of agent ``k`` is drawn from ``SeedSequence([seed, k, r])``: the same
numbers on every engine, and a resumed run continues exactly where a killed one stopped. The
agent's first Markov state is drawn from ``SeedSequence([seed, k, 0])``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .mdp import TabularMDP, make_mdp, perturb
from .sampling import behavior_policy, cumulative


@dataclass(frozen=True)
class AgentEnv:
    """Everything an agent samples from: its MDP and behavior policy, as cumulative tables."""

    mdp: TabularMDP
    behavior: np.ndarray  # (S, A)
    p_cdf: np.ndarray  # (S, A, S)
    pi_cdf: np.ndarray  # (S, A)


def _mdp_key(mdp_settings: Mapping[str, Any]) -> tuple:
    return tuple(sorted(mdp_settings.items()))


def experiment_mdp(mdp_settings: Mapping[str, Any]) -> TabularMDP:
    """The experiment's MDP (the server's ground truth) from the ``mdp`` settings; cached."""
    return _mdp_cached(_mdp_key(mdp_settings))


@lru_cache(maxsize=32)
def _mdp_cached(key: tuple) -> TabularMDP:
    return make_mdp(**dict(key))


def agent_env(
    settings: Mapping[str, Any],
    agent: int,
    heterogeneity: float | None = None,
    perturb_seed: int | None = None,
) -> AgentEnv:
    """Agent ``agent``'s environment: the experiment's MDP, perturbed if heterogeneous.

    The perturbation level is ``client.heterogeneity`` unless ``heterogeneity`` is given (a
    SuperNode's node config); its seed is drawn from ``(seed, agent)`` unless ``perturb_seed``
    is given.
    """
    c = settings["client"]
    level = float(c["heterogeneity"] if heterogeneity is None else heterogeneity)
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"heterogeneity={level} is outside [0, 1]")
    if perturb_seed is None:
        perturb_seed = int(np.random.SeedSequence([settings["seed"], agent]).generate_state(1)[0])
    key = (
        _mdp_key(settings["mdp"]),
        int(agent),
        int(settings["num_clients"]),
        str(c["behavior"]),
        float(c["behavior_alpha"]),
        float(c["behavior_epsilon"]),
        c.get("behavior_groups"),
        level,
        int(perturb_seed),
        int(settings["seed"]),
    )
    return _agent_env_cached(key)


@lru_cache(maxsize=1024)
def _agent_env_cached(key: tuple) -> AgentEnv:
    mdp_key, agent, num_agents, behavior, alpha, epsilon, groups, level, perturb_seed, seed = key
    mdp = _mdp_cached(mdp_key)
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


def round_rng(seed: int, agent: int, server_round: int) -> np.random.Generator:
    """Randomness of round ``server_round`` of agent ``agent``, the same on every engine."""
    return np.random.default_rng([int(seed), int(agent), int(server_round)])


def initial_state(env: AgentEnv, seed: int, agent: int) -> int:
    """The agent's first Markov state, drawn from the MDP's initial distribution."""
    rng = np.random.default_rng([int(seed), int(agent), 0])
    return int(rng.choice(env.mdp.num_states, p=env.mdp.initial))
