"""MDPs by their config name: the ``mdp.name`` options, :func:`make_mdp` (the config layer's
single entry point to the builders) and the sizes a construction fixes (:func:`fixed_sizes`,
checked by the config rules before anything is built).

The builders themselves are in :mod:`flower_qlearn.mdp` (two-state, Garnet, RiverSwim),
:mod:`flower_qlearn.mazes` and :mod:`flower_qlearn.gym_mdp` (imported lazily).
"""

from __future__ import annotations

from typing import Any

from .mdp import TabularMDP, garnet, riverswim, two_state

__all__ = ["MDP_NAMES", "fixed_sizes", "make_mdp"]

MDP_NAMES = ("two_state", "garnet", "riverswim", "frozenlake", "taxi", "cliffwalking", "maze")

# Unversioned ids: _resolve_env_id picks the newest version installed.
_GYM_IDS = {"frozenlake": "FrozenLake", "taxi": "Taxi", "cliffwalking": "CliffWalking"}


def _check_size(name: str, label: str, given: int | None, actual: int) -> None:
    if given is not None and int(given) != actual:
        raise ValueError(f"{name} has {label}={actual} fixed by its construction, got {given}")


def make_mdp(
    name: str,
    *,
    gamma: float,
    num_states: int | None = None,
    num_actions: int | None = None,
    branching: int = 3,
    seed: int = 0,
    terminal: str = "absorbing",
    map_name: str = "4x4",
    is_slippery: bool = True,
    wall_density: float = 0.2,
    slip: float = 0.1,
    successors: str = "argsort",
) -> TabularMDP:
    """Build an MDP by its config name; the single entry point of the config layer.

    Parameters
    ----------
    name : str
        One of :data:`MDP_NAMES`.
    gamma : float
        Discount factor.
    num_states, num_actions : int or None
        Sizes. Required for ``garnet``; ``two_state`` uses ``num_actions`` (default 10) and
        ``riverswim`` uses ``num_states`` (default 6). Sizes fixed by a construction (the
        two-state example's 2 states, RiverSwim's 2 actions, the Gymnasium environments'
        sizes) are checked when given: a mismatch raises ``ValueError`` stating the real size.
    branching : int
        Garnet successors per state-action pair.
    successors : {"argsort", "floyd"}
        Garnet only: how successor sets are drawn (:data:`GARNET_SUCCESSORS`).
    seed : int
        Seed of the random constructions (``two_state``, ``garnet``); the others are
        deterministic and ignore it.
    terminal : {"absorbing", "reset"}
        Gymnasium environments only, see :func:`from_gymnasium`.
    map_name : str
        FrozenLake map (``"4x4"`` or ``"8x8"``).
    is_slippery : bool
        FrozenLake only; Taxi and CliffWalking keep their deterministic defaults.
    wall_density, slip : float
        ``maze`` only (:func:`flower_qlearn.mazes.random_maze`, ``num_states = n^2``, 4 actions).
    """
    if name == "two_state":
        _check_size(name, "num_states", num_states, 2)
        return two_state(10 if num_actions is None else int(num_actions), gamma, seed)
    if name == "garnet":
        if num_states is None or num_actions is None:
            raise ValueError("garnet needs num_states and num_actions")
        return garnet(
            int(num_states), int(num_actions), int(branching), gamma, seed, str(successors)
        )
    if name == "maze":
        from .mazes import ACTIONS, random_maze

        _check_size(name, "num_actions", num_actions, len(ACTIONS))
        size = 25 if num_states is None else int(num_states)
        return random_maze(size, float(wall_density), float(slip), gamma, seed)
    if name == "riverswim":
        _check_size(name, "num_actions", num_actions, 2)
        return riverswim(6 if num_states is None else int(num_states), gamma)
    if name in _GYM_IDS:
        from .gym_mdp import from_gymnasium

        kwargs: dict[str, Any] = {}
        if name == "frozenlake":
            kwargs = {"map_name": map_name, "is_slippery": bool(is_slippery)}
        mdp = from_gymnasium(_GYM_IDS[name], gamma=gamma, terminal=terminal, **kwargs)
        _check_size(name, "num_states", num_states, mdp.num_states)
        _check_size(name, "num_actions", num_actions, mdp.num_actions)
        return mdp
    raise ValueError(f"unknown MDP name {name!r}; expected one of {MDP_NAMES}")


def fixed_sizes(
    name: str, *, map_name: str = "4x4", is_slippery: bool = True
) -> tuple[int | None, int | None]:
    """``(num_states, num_actions)`` that the construction of MDP ``name`` fixes (None: free).

    The sizes :func:`make_mdp` checks after building, known before building, so the config
    rules refuse a mismatch up front. Gymnasium sizes come from the environment's spaces
    (:func:`flower_qlearn.gym_mdp.space_sizes`: no table is built).
    """
    if name == "two_state":
        return 2, None
    if name == "riverswim":
        return None, 2
    if name == "maze":
        from .mazes import ACTIONS

        return None, len(ACTIONS)
    if name in _GYM_IDS:
        from .gym_mdp import space_sizes

        kwargs = {"map_name": map_name, "is_slippery": bool(is_slippery)}
        return space_sizes(_GYM_IDS[name], **(kwargs if name == "frozenlake" else {}))
    return None, None
