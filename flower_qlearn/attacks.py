"""Poisoning attacks, client side, for experiments on robust aggregation.

``client.attack`` (:data:`ATTACKS`, the option list, declared here only) is applied by the agents
whose partition id is listed in ``client.attack_agents``: after the honest local task ran, the
reply's value arrays (the table ``q``, or DASA's operator ``g``) are replaced. Visit counts are
left as the agent really made them. Every attack stays inside the range the server accepts
(:func:`accepted_range`), so validation does NOT reject it: that is the point, only robust
aggregation can stop it. With ``[lo, hi]`` that range, every entry ``x`` of the array becomes

``max_value``
    ``hi``;
``min_value``
    ``lo``;
``random``
    uniform in ``[lo, hi)``, drawn from the attacker's own stream
    ``SeedSequence([seed, agent, server_round, ATTACK_STREAM])`` (the honest task's random
    numbers are untouched);
``sign_flip``
    the reflection ``(lo + hi) - x`` clipped to ``[lo, hi]`` (``-x`` for a symmetric range or an
    unbounded one).

One pure function per attack; :func:`apply_attack` is the one place they are applied (the
ClientApp calls it on every task's result, so it works on every engine). Ranges come from the
server's own bounds: ``[VALUE_FLOOR, value_bound(gamma)]`` of
:mod:`flower_qlearn.strategies.base` (Q-learning tables), ``[VALUE_FLOOR, 1 + 1e-6]`` for
average-reward tables, ``+-`` DASA's
:func:`~flower_qlearn.strategies.dasa.spec.operator_bound`; the TD operator has no bound, so only
``sign_flip`` applies to it (a config rule of DASA refuses the others).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

#: ``client.attack``: what an attacking agent sends instead of its honest values.
ATTACKS = ("none", "max_value", "min_value", "random", "sign_flip")
#: Fourth word of the attacker's seed sequence (keeps its stream apart from the task's).
ATTACK_STREAM = 0xA77AC
Range = tuple[float, float]


def max_value(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Every entry the largest value the server accepts, ``hi``."""
    return np.full(np.shape(values), hi, dtype=np.float64)


def min_value(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Every entry the smallest value the server accepts, ``lo``."""
    return np.full(np.shape(values), lo, dtype=np.float64)


def random_values(
    values: np.ndarray, lo: float, hi: float, rng: np.random.Generator
) -> np.ndarray:
    """Every entry uniform in ``[lo, hi)`` from ``rng`` (the attacker's own stream)."""
    return rng.uniform(lo, hi, size=np.shape(values))


def sign_flip(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The reflection ``(lo + hi) - x`` that stays in ``[lo, hi]`` (``-x`` if unbounded)."""
    values = np.asarray(values, dtype=np.float64)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return -values
    return np.clip((lo + hi) - values, lo, hi)


def attack_rng(seed: int, agent: int, server_round: int) -> np.random.Generator:
    """The attacker's stream of round ``server_round``: ``SeedSequence([seed, agent, round,
    ATTACK_STREAM])``."""
    return np.random.default_rng(np.random.SeedSequence([seed, agent, server_round, ATTACK_STREAM]))


def attack_values(
    attack: str, values: np.ndarray, value_range: Range, rng: np.random.Generator
) -> np.ndarray:
    """``values`` replaced by ``attack`` (one of :data:`ATTACKS`) within ``value_range``."""
    lo, hi = value_range
    plain: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
        "max_value": max_value,
        "min_value": min_value,
        "sign_flip": sign_flip,
    }
    if attack == "none":
        return values
    if attack == "random":
        return random_values(values, lo, hi, rng)
    if attack in plain:
        return plain[attack](values, lo, hi)
    raise ValueError(f"client.attack={attack!r}; expected one of {', '.join(ATTACKS)}")


def accepted_range(task: str, gamma: float) -> Range:
    """``(lo, hi)``: what the server accepts in the value arrays of ``task``'s replies.

    ``(-inf, inf)`` for a task whose replies are only checked to be finite (``td_operator``).
    """
    from flower_qlearn.strategies.average_reward.strategy import (
        AVERAGE_REWARD,
        NORMALIZED_VALUE_BOUND,
    )
    from flower_qlearn.strategies.base import VALUE_FLOOR, value_bound
    from flower_qlearn.strategies.dasa.spec import Q_OPERATOR, operator_bound
    from flower_qlearn.strategies.equal import Q_LEARNING

    # Tables: Q >= 0 for rewards in [0, 1] (the server's one-sided floor); operators are signed.
    bounds = {
        Q_LEARNING.name: lambda: (VALUE_FLOOR, value_bound(gamma)),
        AVERAGE_REWARD.name: lambda: (VALUE_FLOOR, NORMALIZED_VALUE_BOUND),
        Q_OPERATOR.name: lambda: (-operator_bound(gamma), operator_bound(gamma)),
    }
    if task not in bounds:
        return (-np.inf, np.inf)
    lo, hi = bounds[task]()
    return float(lo), float(hi)


def apply_attack(
    arrays: Mapping[str, np.ndarray],
    settings: Mapping[str, Any],
    task: str,
    agent: int,
    server_round: int,
) -> dict[str, np.ndarray]:
    """A task's result arrays as agent ``agent`` sends them: attacked iff it is listed in
    ``client.attack_agents`` and ``client.attack`` is not ``none``; otherwise unchanged (the
    same objects, so honest replies keep their bits).

    Parameters
    ----------
    arrays : Mapping[str, np.ndarray]
        The task's reply arrays (``q`` and ``counts``, or ``g``).
    settings : Mapping
        The task's validated settings (``seed``, ``mdp``, ``client``).
    task : str
        The task's name (decides the accepted range, :func:`accepted_range`).
    agent, server_round : int
        The agent's partition id and the instruction's round.
    """
    from .strategies.protocol import OPERATOR, Q  # the value arrays; counts stay honest

    client = settings["client"]
    attack = client.get("attack") or "none"
    if attack == "none" or agent not in set(client.get("attack_agents") or ()):
        return dict(arrays)
    value_range = accepted_range(task, float(settings["mdp"]["gamma"]))
    rng = attack_rng(int(settings["seed"]), agent, server_round)
    return {
        name: attack_values(attack, values, value_range, rng) if name in (Q, OPERATOR) else values
        for name, values in arrays.items()
    }
