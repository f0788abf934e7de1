"""DASA's pure rule: one server iteration from the agents' freshest operators.

Dal Fabbro et al., CDC 2024 (docs/ALGORITHMS.md section 6). No Flower: NumPy in, NumPy out;
every function is checked by hand-computed tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..robust import Robust

#: The server rules: DASA and its two baselines.
RULES = ("dasa", "delayed", "nondelayed")
#: Norms of the delay error.
NORMS = ("l2", "linf")

# ============================================================================================
# 1. Pure functions: one server iteration.
# ============================================================================================


@dataclass(frozen=True)
class Operator:
    """An agent's operator ``g`` (shape of the iterate) and the iteration it was computed at."""

    computed_at: int
    g: np.ndarray


@dataclass(frozen=True)
class Step:
    """The outcome of one server iteration.

    Attributes
    ----------
    theta : np.ndarray
        The next iterate ``theta_{t+1}`` (``theta_t`` itself when not updated).
    updated : bool
        False when the iteration was skipped.
    used : tuple[int, ...]
        Agents whose operators were averaged, ascending (empty when skipped).
    staleness : tuple[int, ...]
        ``t - computed_at`` of each used operator, in the order of ``used``.
    errors : np.ndarray
        ``(N,)`` delay errors ``e_i`` (``+inf`` for agents with nothing arrived).
    threshold_error : float
        DASA's ``e_{m_t}``, the largest delay error in ``R_t`` (``nan`` for the baselines).
    """

    theta: np.ndarray
    updated: bool
    used: tuple[int, ...]
    staleness: tuple[int, ...]
    errors: np.ndarray
    threshold_error: float = math.nan


def _distance(x: np.ndarray, y: np.ndarray, norm: str) -> float:
    diff = np.ravel(x - y)
    if norm == "linf":
        return float(np.max(np.abs(diff))) if diff.size else 0.0
    if norm == "l2":
        return float(np.linalg.norm(diff))
    raise ValueError(f"norm={norm!r}; expected one of {', '.join(NORMS)}")


def delay_errors(
    theta: np.ndarray,
    t: int,
    operators: Mapping[int, Operator],
    iterates: Mapping[int, np.ndarray],
    num_agents: int,
    norm: str = "l2",
) -> np.ndarray:
    """Delay errors ``e_i = ||theta_t - theta_{computed_at_i}||`` of every agent.

    Parameters
    ----------
    theta : np.ndarray
        The current iterate ``theta_t``.
    t : int
        The current iteration (an operator computed at ``t`` has ``e_i = 0``).
    operators : Mapping[int, Operator]
        Each agent's freshest arrived operator, by partition id in ``[0, num_agents)``; agents
        without one are absent.
    iterates : Mapping[int, np.ndarray]
        Past iterates by iteration; must hold every ``computed_at < t`` referenced.
    num_agents : int
        ``N``.
    norm : str
        ``"l2"`` (Euclidean, the paper's) or ``"linf"`` on the flattened iterates.

    Returns
    -------
    np.ndarray
        ``(N,)`` float64; ``+inf`` for agents with nothing arrived.
    """
    errors = np.full(num_agents, np.inf)
    for agent, op in operators.items():
        if not 0 <= agent < num_agents:
            raise ValueError(f"agent {agent} is not a partition id in [0, {num_agents})")
        if op.computed_at == t:
            errors[agent] = 0.0
            continue
        if op.computed_at not in iterates:
            raise KeyError(f"iterate {op.computed_at} (agent {agent}'s operator) is not held")
        errors[agent] = _distance(theta, iterates[op.computed_at], norm)
    return errors


def select_agents(errors: np.ndarray) -> np.ndarray:
    """``R_t``: the ``ceil(N/2)`` agents with the smallest delay errors, smallest first.

    Ties are broken by the lower partition id (a stable sort of the errors), so the selection
    is deterministic whatever order replies arrived in.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 1 or errors.size == 0:
        raise ValueError(f"errors must have shape (N>=1,), got {errors.shape}")
    return np.argsort(errors, kind="stable")[: math.ceil(errors.size / 2)]


@dataclass(frozen=True)
class Defence:
    """DASA's defences against poisoned operators; the default changes nothing.

    Attributes
    ----------
    robust : Robust
        How the used operators are combined (``none``: their mean; ``trimmed_mean``: whole
        operators trimmed, :meth:`~..robust.Robust.combine_operators`; ``median``: per entry).
    operator_bound : float, optional
        Clip every used operator to l1 norm at most this (``g * bound / ||g||_1``); None: off.
        An honest batch Q-learning operator at ``theta`` has ``||g||_1 <= 1 + (1 + gamma)
        ||theta||_inf`` (each of the ``B`` transitions adds at most ``(1 + (1 + gamma)
        ||theta||_inf) / B``), so with the iterate kept in ``value_range`` the bound
        ``1 + (1 + gamma) max|value_range|`` never touches an honest operator.
    value_range : tuple[float, float], optional
        Project every new iterate onto ``[lo, hi]`` entry by entry; None: off. Honest
        iterates stay inside, so the projection leaves their bits unchanged.
    """

    robust: Robust = Robust()
    operator_bound: float | None = None
    value_range: tuple[float, float] | None = None


NO_DEFENCE = Defence()


def clip_operator(g: np.ndarray, bound: float | None) -> np.ndarray:
    """``g`` scaled down to l1 norm ``bound`` if it is larger; ``g`` itself otherwise."""
    if bound is None:
        return g
    size = float(np.sum(np.abs(g)))
    return g if size <= bound else g * (bound / size)


def project(theta: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """``theta`` clipped entry by entry into ``value_range`` (None: unchanged)."""
    if value_range is None:
        return theta
    return np.clip(theta, value_range[0], value_range[1])


def _mean_step(
    theta: np.ndarray,
    t: int,
    operators: Mapping[int, Operator],
    agents: Iterable[int],
    step_size: float,
    defence: Defence = NO_DEFENCE,
) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    # Sum in ascending agent order: bit-identical results whatever order replies arrived in.
    used = tuple(sorted(int(i) for i in agents))
    stacked = np.stack([clip_operator(operators[i].g, defence.operator_bound) for i in used])
    if defence.robust.active:
        mean = defence.robust.combine_operators(stacked)
    else:
        mean = np.mean(stacked, axis=0)
    staleness = tuple(t - operators[i].computed_at for i in used)
    return project(theta + step_size * mean, defence.value_range), used, staleness


def dasa_step(
    theta: np.ndarray,
    t: int,
    operators: Mapping[int, Operator],
    iterates: Mapping[int, np.ndarray],
    num_agents: int,
    step_size: float,
    epsilon: float,
    norm: str = "l2",
    defence: Defence = NO_DEFENCE,
) -> Step:
    """One DASA iteration (ALGORITHMS.md section 6).

    Selects ``R_t`` (:func:`select_agents` on :func:`delay_errors`) and updates
    ``theta_{t+1} = theta_t + step_size * mean_{i in R_t} g_i`` iff ``e_{m_t} <= epsilon``
    (inclusive). While fewer than ``ceil(N/2)`` agents have an operator, ``R_t`` contains an
    agent with ``e = +inf`` and the iteration is skipped, whatever ``epsilon``.

    Parameters are those of :func:`delay_errors`, plus ``step_size`` (alpha > 0),
    ``epsilon`` (>= 0) and ``defence`` (:class:`Defence`, default: none).
    """
    errors = delay_errors(theta, t, operators, iterates, num_agents, norm)
    selected = select_agents(errors)
    threshold = float(errors[selected[-1]])
    if not (math.isfinite(threshold) and threshold <= epsilon):
        return Step(np.array(theta, copy=True), False, (), (), errors, threshold)
    new, used, staleness = _mean_step(theta, t, operators, selected, step_size, defence)
    return Step(new, True, used, staleness, errors, threshold)


def delayed_step(
    theta: np.ndarray,
    t: int,
    operators: Mapping[int, Operator],
    num_agents: int,
    step_size: float,
    defence: Defence = NO_DEFENCE,
) -> Step:
    """The Delayed baseline: the mean of every agent's freshest operator, however stale.

    Skipped only while no agent has anything arrived.
    """
    errors = np.full(num_agents, np.nan)  # not computed: the rule ignores them
    if not operators:
        return Step(np.array(theta, copy=True), False, (), (), errors)
    new, used, staleness = _mean_step(theta, t, operators, operators.keys(), step_size, defence)
    return Step(new, True, used, staleness, errors)


def nondelayed_step(
    theta: np.ndarray,
    t: int,
    operators: Mapping[int, Operator],
    num_agents: int,
    step_size: float,
    defence: Defence = NO_DEFENCE,
) -> Step:
    """The Non-delayed baseline: the mean of the operators computed at ``theta_t`` itself.

    With no delays (the simulated mode forces ``d = 0`` for this rule) that is all ``N``
    agents' fresh operators; an agent that did not answer is left out.
    """
    fresh = {i: op for i, op in operators.items() if op.computed_at == t}
    errors = np.full(num_agents, np.nan)
    if not fresh:
        return Step(np.array(theta, copy=True), False, (), (), errors)
    new, used, staleness = _mean_step(theta, t, fresh, fresh.keys(), step_size, defence)
    return Step(new, True, used, staleness, errors)


def aggregate_step(
    rule: str,
    theta: np.ndarray,
    t: int,
    operators: Mapping[int, Operator],
    iterates: Mapping[int, np.ndarray],
    num_agents: int,
    step_size: float,
    epsilon: float,
    norm: str = "l2",
    defence: Defence = NO_DEFENCE,
) -> Step:
    """One server iteration under ``rule``: ``dasa``, ``delayed`` or ``nondelayed``.

    ``defence`` (:class:`Defence`) clips the used operators, combines them robustly and
    projects the new iterate; the default changes nothing.
    """
    if rule == "dasa":
        return dasa_step(
            theta, t, operators, iterates, num_agents, step_size, epsilon, norm, defence
        )
    if rule == "delayed":
        return delayed_step(theta, t, operators, num_agents, step_size, defence)
    if rule == "nondelayed":
        return nondelayed_step(theta, t, operators, num_agents, step_size, defence)
    raise ValueError(f"strategy.rule={rule!r}; expected one of {', '.join(RULES)}")

