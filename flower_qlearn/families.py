"""Heterogeneous environments: each agent on its own member of a seeded MDP family.

``client.environment=own`` gives agent ``k`` the MDP built from the experiment's ``mdp``
settings with the seed :func:`member_seed` ``(mdp.seed, k)`` instead of ``mdp.seed``: its own
random maze, Garnet or two-state MDP (``shared``, the default, gives every agent the same one).
In deployment this needs nothing from the node config: the member is the node's partition id.

The objective the server evaluates against is then the *global* one of Jin et al. (AISTATS
2022) and Wang, Yang, Su (arXiv 2409.03897): ``Q*`` of the averaged environment
``(Pbar, Rbar) = ((1/K) sum_k P_k, (1/K) sum_k R_k)`` (:func:`averaged_mdp`), the fixed point
of the averaged Bellman operator that the equal average of the agents' synchronous updates
targets. Pure NumPy, no Flower (the core).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .mdp import TabularMDP
from .mdp_catalog import make_mdp
from .transitions import Transitions

#: ``client.environment``: every agent on the experiment's MDP, or each on its own member.
ENVIRONMENTS = ("shared", "own")
#: MDP builders with a ``seed`` (a family of random MDPs): the only ones ``own`` accepts.
SEEDED_MDPS = ("two_state", "garnet", "maze")


def member_seed(mdp_seed: int, agent: int) -> int:
    """The MDP seed of agent ``agent``'s own member: ``SeedSequence([mdp_seed, agent])``."""
    return int(np.random.SeedSequence([int(mdp_seed), int(agent)]).generate_state(1)[0])


def member_settings(mdp_settings: Mapping[str, Any], agent: int) -> dict[str, Any]:
    """The ``mdp`` settings of agent ``agent``'s own member (only the seed changes)."""
    if mdp_settings["name"] not in SEEDED_MDPS:
        raise ValueError(
            f"client.environment=own needs a seeded MDP ({', '.join(SEEDED_MDPS)}), "
            f"got {mdp_settings['name']}"
        )
    return {**mdp_settings, "seed": member_seed(mdp_settings.get("seed", 0), agent)}


def averaged_mdp(members: Sequence[TabularMDP], name: str | None = None) -> TabularMDP:
    """The averaged environment ``(mean_k P_k, mean_k R_k)`` of a family of MDPs.

    All members must share the sizes and the discount; the initial distribution is
    averaged too.
    """
    if not members:
        raise ValueError("averaged_mdp needs at least one MDP")
    first = members[0]
    for mdp in members[1:]:
        if mdp.R.shape != first.R.shape or mdp.gamma != first.gamma:
            raise ValueError(f"{mdp.name} does not match {first.name} in sizes or gamma")
    P = _mean_transitions([m.transitions for m in members])
    R = np.mean([m.R for m in members], axis=0)
    initial = np.mean([m.initial for m in members], axis=0)
    label = name or f"average of {len(members)} ({first.name}, ...)"
    return TabularMDP(P, R, first.gamma, initial, name=label)


def _mean_transitions(kernels: Sequence[Transitions]) -> Transitions:
    """``(1/K) sum_k P_k`` on the sparse lists: the dense ``np.mean(P_k, axis=0)`` bit for bit
    (the same additions in the same order, zeros aside, then one division by ``K``)."""
    total = kernels[0].to_csr()
    for kernel in kernels[1:]:
        total = total + kernel.to_csr()
    total.sum_duplicates()
    total.data = total.data / len(kernels)  # not scipy's ``/ K`` (it multiplies by 1 / K)
    return Transitions.from_csr(total, kernels[0].num_states, kernels[0].num_actions)


def global_mdp(mdp_settings: Mapping[str, Any], num_agents: int) -> TabularMDP:
    """The averaged environment of agents ``0 .. num_agents - 1``'s own members."""
    members = [make_mdp(**member_settings(mdp_settings, k)) for k in range(int(num_agents))]
    return averaged_mdp(members, name=f"average of {num_agents} {mdp_settings['name']} members")
