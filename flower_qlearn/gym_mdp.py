"""Gymnasium's toy-text environments as exact tabular MDPs (FrozenLake, Taxi, CliffWalking).

Read exactly from ``env.unwrapped.P``, rewards rescaled affinely into ``[0, 1]``, terminal
states absorbing (discounted use) or reset to the initial distribution (average reward).
Gymnasium is imported lazily: the core imports without its load time.
"""

from __future__ import annotations

import re
import warnings
from functools import lru_cache
from typing import Any

import numpy as np

from .mdp import TERMINAL_MODES, TabularMDP


def _resolve_env_id(name: str, registry: Any) -> str:
    """Return a registered Gymnasium id for ``name``, tolerating a missing version suffix.

    Gymnasium renames toy-text versions across releases (Taxi-v3 -> v4 in 1.3,
    CliffWalking-v0 -> v1 in 1.0) without changing the dry, non-slippery dynamics, so an id
    whose version is not registered falls back to the newest registered version of the
    same environment, with a warning when a specific version was asked for.
    """
    if name in registry:
        return name
    match = re.fullmatch(r"(?P<base>.+?)(?:-v(?P<version>\d+))?", name)
    base = match["base"] if match else name
    versions = []
    for env_id in registry:
        found = re.fullmatch(re.escape(base) + r"-v(\d+)", env_id)
        if found:
            versions.append((int(found[1]), env_id))
    if not versions:
        raise ValueError(f"unknown Gymnasium environment {name!r}")
    resolved = max(versions)[1]
    if match and match["version"] is not None:
        warnings.warn(
            f"{name} is not registered in the installed Gymnasium; using {resolved}",
            UserWarning,
            stacklevel=3,
        )
    return resolved


def reward_scale(rewards: Any) -> tuple[float, float]:
    """``(r_min, span)`` of the affine map ``r' = (r - r_min) / span`` into ``[0, 1]``.

    ``r_min`` and ``r_min + span`` are the extremes of ``rewards`` together with 0 (the
    absorbing self-loop's raw reward), so a raw 0 maps to ``-r_min / span`` and back.
    """
    raw = np.append(np.asarray(rewards, dtype=np.float64), 0.0)
    r_min, r_max = float(raw.min()), float(raw.max())
    return r_min, (r_max - r_min if r_max > r_min else 1.0)  # all rewards 0: keep them 0


def from_gymnasium(
    name: str, gamma: float = 0.95, terminal: str = "absorbing", **kwargs: Any
) -> TabularMDP:
    """Build the exact tabular MDP of a Gymnasium toy-text environment from its table ``P``.

    Reads ``env.unwrapped.P[s][a]``, a list of ``(prob, next_state, reward, done)``, so no
    sampling is involved. Works for FrozenLake, Taxi and CliffWalking (and any environment
    exposing the same table and an ``initial_state_distrib``/``isd`` attribute).

    Episode ends are made explicit, since a :class:`TabularMDP` has no terminal flag:

    - ``terminal="absorbing"`` (discounted use): a transition with ``done=True`` leads to its
      next state, and every such state is made absorbing (self-loop, raw reward 0). In the
      toy-text environments a terminal state is entered only with ``done=True`` (or from
      states reachable only after termination), so this is exact on the reachable part.
    - ``terminal="reset"`` (average reward): a transition with ``done=True`` goes to the
      initial distribution instead; its reward still counts. The episodic task becomes one
      long recurrent chain, as the unichain theory of average reward needs.

    Rewards are rescaled affinely into ``[0, 1]``: ``r' = (r - r_min) / (r_max - r_min)``,
    where ``r_min``/``r_max`` are the extremes over all raw rewards in the table together with
    0 (the absorbing self-loop reward), in both modes so that the two share one scale. ``R`` is
    the expected rescaled reward. An affine reward map keeps the optimal policies (and maps
    discounted values and gains affinely); FrozenLake's ``{0, 1}`` rewards are unchanged.

    Parameters
    ----------
    name : str
        Gymnasium id, e.g. ``"FrozenLake-v1"``, ``"Taxi-v3"``, ``"CliffWalking-v1"``. An
        unregistered version (or none) resolves to the newest registered one.
    gamma : float
        Discount factor.
    terminal : {"absorbing", "reset"}
        Treatment of ``done=True`` transitions, see above.
    **kwargs
        Passed to ``gymnasium.make`` (``map_name``, ``is_slippery``, ``desc``, ``is_rainy``...).

    Raises
    ------
    ValueError
        Unknown ``terminal`` or environment; kwargs whose effect is not in the table
        (Taxi's ``fickle_passenger``); an environment without a tabular ``P``.
    """
    if terminal not in TERMINAL_MODES:
        raise ValueError(f"terminal must be one of {TERMINAL_MODES}, got {terminal!r}")
    if kwargs.get("fickle_passenger"):
        # The fickle passenger is implemented in Taxi.step, not in P: the table would lie.
        raise ValueError("fickle_passenger=True is not represented in Taxi's table P")
    import gymnasium  # lazy: the core must import without Gymnasium's load time

    env_id = _resolve_env_id(name, gymnasium.registry)
    env = gymnasium.make(env_id, **kwargs)
    try:
        base = env.unwrapped
        table = getattr(base, "P", None)
        if not isinstance(table, dict):
            raise ValueError(f"{env_id} exposes no tabular transition table env.unwrapped.P")
        num_states = int(base.observation_space.n)
        num_actions = int(base.action_space.n)
        initial = getattr(base, "initial_state_distrib", None)
        if initial is None:
            initial = getattr(base, "isd", None)  # older gym/gymnasium toy-text name
        if initial is None:
            raise ValueError(f"{env_id} exposes no initial_state_distrib/isd attribute")
        initial = np.asarray(initial, dtype=np.float64)
    finally:
        env.close()

    outcomes = [
        (s, a, float(prob), int(nxt), float(reward), bool(done))
        for s in range(num_states)
        for a in range(num_actions)
        for prob, nxt, reward, done in table[s][a]
    ]
    r_min, span = reward_scale([o[4] for o in outcomes])

    P = np.zeros((num_states, num_actions, num_states))
    R = np.zeros((num_states, num_actions))
    for s, a, prob, nxt, reward, done in outcomes:
        R[s, a] += prob * (reward - r_min) / span
        if done and terminal == "reset":
            P[s, a] += prob * initial
        else:
            P[s, a, nxt] += prob
    if terminal == "absorbing":
        absorbing = sorted({o[3] for o in outcomes if o[5]})
        P[absorbing] = 0.0
        P[absorbing, :, absorbing] = 1.0
        R[absorbing] = (0.0 - r_min) / span
    options = [f"{key}={value}" for key, value in sorted(kwargs.items())] + [terminal]
    name = f"{env_id.split('-v')[0].lower()}({','.join(options)})"
    return TabularMDP(P, R, gamma, initial, name=name)



@lru_cache(maxsize=16)
def space_sizes(name: str, **kwargs: Any) -> tuple[int, int]:
    """``(num_states, num_actions)`` of a Gymnasium toy-text environment, its table unbuilt.

    What :func:`from_gymnasium` would build, read from the environment's discrete spaces
    (a few milliseconds after Gymnasium's import), for checking a config before a run.
    """
    import gymnasium

    env = gymnasium.make(_resolve_env_id(name, gymnasium.registry), **kwargs)
    try:
        base = env.unwrapped
        return int(base.observation_space.n), int(base.action_space.n)
    finally:
        env.close()


def frozenlake_maps() -> tuple[str, ...]:
    """The FrozenLake map names (``mdp.map_name``) of the installed Gymnasium."""
    from gymnasium.envs.toy_text.frozen_lake import MAPS

    return tuple(MAPS)
