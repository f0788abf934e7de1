"""One agent's world: its MDP (possibly perturbed), its behavior policy, its random numbers.

Built from the task settings of a client's instruction (plain nested dict: ``seed``,
``num_clients``, ``mdp.*``, ``client.*``) and the node's partition id; no Flower, no Hydra. The
server builds the experiment's MDP (its ground truth) with the same :func:`experiment_mdp`.

Randomness of round ``r`` of agent ``k`` is drawn from ``SeedSequence([seed, k, r])``: the same
numbers on every engine, and a resumed run continues exactly where a killed one stopped. The
agent's first Markov state is drawn from ``SeedSequence([seed, k, 0])``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .families import global_mdp, member_settings
from .mdp import TabularMDP, perturb
from .mdp_catalog import make_mdp
from .samplers import ActionTable, NextStateTable, action_table, next_state_table
from .sampling import behavior_policy


@dataclass(frozen=True)
class AgentEnv:
    """Everything an agent samples from: its MDP and behavior policy, as sampling tables.

    ``p_cdf`` is the MDP's :class:`~flower_qlearn.samplers.NextStateTable` for
    ``client.sampler``: cached on the MDP's transition lists, so every agent of a process on
    the same (unperturbed) MDP shares one read-only table. ``pi_cdf`` is the agent's own
    :class:`~flower_qlearn.samplers.ActionTable`. (Names kept from the dense cumulative
    tables they replace; the kernels accept both.)
    """

    mdp: TabularMDP
    behavior: np.ndarray  # (S, A)
    p_cdf: NextStateTable  # (S, A, W) arrays, shared
    pi_cdf: ActionTable  # (S, A) arrays
    sampler: str = "cdf"


def _mdp_key(mdp_settings: Mapping[str, Any]) -> tuple:
    return tuple(sorted(mdp_settings.items()))


def experiment_mdp(mdp_settings: Mapping[str, Any]) -> TabularMDP:
    """The experiment's MDP (the server's ground truth) from the ``mdp`` settings; cached."""
    return _mdp_cached(_mdp_key(mdp_settings))


@lru_cache(maxsize=32)
def _mdp_cached(key: tuple) -> TabularMDP:
    return make_mdp(**dict(key))


def objective_mdp(settings: Mapping[str, Any]) -> TabularMDP:
    """The MDP whose exact solution the server evaluates against.

    The experiment's MDP, or with ``client.environment=own`` (each agent on its own member of
    the family, :mod:`flower_qlearn.families`) the averaged environment of the
    ``num_clients`` members: the global objective. Cached.
    """
    if settings["client"].get("environment", "shared") != "own":
        return experiment_mdp(settings["mdp"])
    return _global_cached(_mdp_key(settings["mdp"]), int(settings["num_clients"]))


@lru_cache(maxsize=8)
def _global_cached(mdp_key: tuple, num_agents: int) -> TabularMDP:
    return global_mdp(dict(mdp_key), num_agents)


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
    mdp_settings = settings["mdp"]
    if c.get("environment", "shared") == "own":  # agent k on its own member of the family
        mdp_settings = member_settings(mdp_settings, agent)
    key = (
        _mdp_key(mdp_settings),
        int(agent),
        int(settings["num_clients"]),
        str(c["behavior"]),
        float(c["behavior_alpha"]),
        float(c["behavior_epsilon"]),
        c.get("behavior_groups"),
        level,
        int(perturb_seed),
        int(settings["seed"]),
        str(c.get("sampler", "cdf")),
    )
    return _agent_env_cached(key)


@lru_cache(maxsize=1024)
def _agent_env_cached(key: tuple) -> AgentEnv:
    (mdp_key, agent, num_agents, behavior, alpha, epsilon, groups, level, perturb_seed, seed,
     sampler) = key
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
    policy, table = _shared_policy(policy, sampler)
    return AgentEnv(
        mdp=mdp,
        behavior=policy,
        p_cdf=next_state_table(mdp.transitions, sampler),
        pi_cdf=table,
        sampler=sampler,
    )


# Behavior policies by content: agents with equal policies (uniform, disjoint groups) share one
# read-only policy and table instead of an (S, A) pair each (320 MB at K=20, S=10^5, A=10).
_POLICIES: dict[tuple, tuple[np.ndarray, ActionTable]] = {}
_MAX_POLICIES = 64


def _shared_policy(policy: np.ndarray, sampler: str) -> tuple[np.ndarray, ActionTable]:
    """The process's copy of ``policy`` (equal bytes) and its sampling table."""
    digest = hashlib.blake2b(np.ascontiguousarray(policy).tobytes(), digest_size=16).digest()
    key = (digest, policy.shape, sampler)
    if key not in _POLICIES:
        if len(_POLICIES) >= _MAX_POLICIES:
            _POLICIES.clear()
        policy = np.array(policy, dtype=np.float64)
        policy.flags.writeable = False
        _POLICIES[key] = (policy, action_table(policy, sampler))
    return _POLICIES[key]


def round_rng(seed: int, agent: int, server_round: int) -> np.random.Generator:
    """Randomness of round ``server_round`` of agent ``agent``, the same on every engine."""
    return np.random.default_rng([int(seed), int(agent), int(server_round)])


def initial_state(env: AgentEnv, seed: int, agent: int) -> int:
    """The agent's first Markov state, drawn from the MDP's initial distribution."""
    rng = np.random.default_rng([int(seed), int(agent), 0])
    return int(rng.choice(env.mdp.num_states, p=env.mdp.initial))
