"""Finite tabular MDPs and the builders every experiment draws its environment from.

A :class:`TabularMDP` is an immutable, validated bundle of dense arrays (transition kernel,
expected rewards in ``[0, 1]``, discount, initial distribution). Builders cover the paper's
two-state example, random Garnets, RiverSwim and Gymnasium's toy-text environments read
exactly from their transition tables; :func:`perturb` derives heterogeneous copies for
federated agents. The module depends on NumPy only (Gymnasium is imported lazily).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "MDP_NAMES",
    "TabularMDP",
    "from_gymnasium",  # noqa: F822 - provided by __getattr__ (flower_qlearn.gym_mdp)
    "garnet",
    "make_mdp",
    "perturb",
    "riverswim",
    "two_state",
]

_TOL = 1e-9  # tolerance on probability sums (rows of P, initial); messages say "1e-9"


def _frozen_float_array(value: Any, field_name: str) -> np.ndarray:
    """Return a read-only, C-contiguous float64 copy, so callers cannot mutate an MDP."""
    try:
        array = np.array(value, dtype=np.float64, copy=True, order="C")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field_name} must be a numeric array: {exc}") from exc
    array.flags.writeable = False
    return array


def _check_finite(array: np.ndarray, field_name: str) -> None:
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        index = tuple(int(i) for i in bad[0])
        raise ValueError(f"{field_name}{list(index)} is {array[index]}, expected a finite number")


def _check_distribution(array: np.ndarray, field_name: str) -> None:
    """Check the last axis of ``array`` holds probability distributions (non-negative, sum 1)."""
    _check_finite(array, field_name)
    negative = np.argwhere(array < 0)
    if negative.size:
        index = tuple(int(i) for i in negative[0])
        raise ValueError(f"{field_name}{list(index)} = {array[index]:.6g} is negative")
    sums = array.sum(axis=-1)
    off = np.argwhere(np.abs(np.atleast_1d(sums) - 1.0) > _TOL)
    if off.size:
        if array.ndim == 1:
            raise ValueError(f"{field_name} sums to {float(sums):.12g}, expected 1 (tol 1e-9)")
        index = tuple(int(i) for i in off[0])
        raise ValueError(
            f"{field_name}{list(index)} sums to {sums[index]:.12g}, expected 1 (tol 1e-9)"
        )


@dataclass(frozen=True, eq=False, repr=False)
class TabularMDP:
    """A finite discounted MDP with dense arrays, validated once at construction.

    Immutable on purpose: one instance is shared by the server's evaluation and by every
    client, so the arrays are stored as read-only float64 copies.

    Parameters
    ----------
    P : np.ndarray
        Transition kernel, shape ``(S, A, S)``; ``P[s, a, s']`` is ``P(s' | s, a)``. Each row
        ``P[s, a]`` must be a distribution (non-negative, finite, sums to 1 within 1e-9).
    R : np.ndarray
        Expected one-step rewards, shape ``(S, A)``, finite and in ``[0, 1]``.
    gamma : float
        Discount factor, ``0 <= gamma < 1`` (ignored by the average-reward solvers).
    initial : np.ndarray
        Initial-state distribution, shape ``(S,)``.
    name : str
        Human-readable label used in logs and summaries.

    Raises
    ------
    ValueError
        Naming the offending field and index, e.g. ``"P[3, 1] sums to 0.97, expected 1"``.

    Notes
    -----
    Equality compares all fields, arrays element-wise; instances are not hashable.
    """

    P: np.ndarray
    R: np.ndarray
    gamma: float
    initial: np.ndarray
    name: str = field(default="mdp")

    def __post_init__(self) -> None:
        P = _frozen_float_array(self.P, "P")
        R = _frozen_float_array(self.R, "R")
        initial = _frozen_float_array(self.initial, "initial")
        if P.ndim != 3 or P.shape[0] != P.shape[2] or P.shape[0] == 0 or P.shape[1] == 0:
            raise ValueError(f"P must have shape (S, A, S) with S, A >= 1, got shape {P.shape}")
        num_states, num_actions = P.shape[:2]
        if R.shape != (num_states, num_actions):
            raise ValueError(
                f"R must have shape (S, A) = {(num_states, num_actions)} to match P, "
                f"got shape {R.shape}"
            )
        if initial.shape != (num_states,):
            raise ValueError(
                f"initial must have shape (S,) = ({num_states},) to match P, got shape "
                f"{initial.shape}"
            )
        _check_distribution(P, "P")
        _check_finite(R, "R")
        outside = np.argwhere((R < 0) | (R > 1))
        if outside.size:
            index = tuple(int(i) for i in outside[0])
            raise ValueError(f"R{list(index)} = {R[index]:.6g} is outside [0, 1]")
        _check_distribution(initial, "initial")
        try:
            gamma = float(self.gamma)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"gamma must be a number, got {self.gamma!r}") from exc
        if not 0.0 <= gamma < 1.0:  # also rejects NaN
            raise ValueError(f"gamma = {gamma!r} must satisfy 0 <= gamma < 1")
        # Frozen dataclass: object.__setattr__ is the sanctioned way to normalize fields.
        object.__setattr__(self, "P", P)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "initial", initial)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "name", str(self.name))

    @property
    def num_states(self) -> int:
        """Number of states ``S``."""
        return int(self.P.shape[0])

    @property
    def num_actions(self) -> int:
        """Number of actions ``A``."""
        return int(self.P.shape[1])

    def with_gamma(self, gamma: float) -> TabularMDP:
        """Return the same MDP with another discount (the average-reward schedule needs many)."""
        return TabularMDP(self.P, self.R, gamma, self.initial, self.name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TabularMDP):
            return NotImplemented
        return (
            self.name == other.name
            and self.gamma == other.gamma
            and np.array_equal(self.P, other.P)
            and np.array_equal(self.R, other.R)
            and np.array_equal(self.initial, other.initial)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking arrays: like ndarray, no hash

    def __repr__(self) -> str:
        return (
            f"TabularMDP(name={self.name!r}, num_states={self.num_states}, "
            f"num_actions={self.num_actions}, gamma={self.gamma})"
        )


def two_state(num_actions: int = 10, gamma: float = 0.9, seed: int = 0) -> TabularMDP:
    """Two-state MDP of the importance-averaging experiment (Woo, Joshi, Chi, ICML 2023, Fig. 3).

    States ``{0, 1}``; ``r(1, a) = 1`` and ``r(0, a) = 0`` for every action;
    ``P(0 | 0, a) = p_a`` and ``P(1 | 1, a) = q_a`` with ``p_a, q_a ~ U[0.4, 0.6]`` drawn per
    action (all ``p`` first, then all ``q``, from ``np.random.default_rng(seed)``). Actions are
    numbered from 0 (the paper's ``1..m``). The initial distribution is uniform.

    Parameters
    ----------
    num_actions : int
        The number of actions ``m``.
    gamma : float
        Discount factor.
    seed : int
        Seeds ``p`` and ``q``; the same seed always gives the same MDP.
    """
    if num_actions < 1:
        raise ValueError(f"num_actions must be >= 1, got {num_actions}")
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.4, 0.6, size=num_actions)
    q = rng.uniform(0.4, 0.6, size=num_actions)
    P = np.empty((2, num_actions, 2))
    P[0, :, 0], P[0, :, 1] = p, 1.0 - p
    P[1, :, 1], P[1, :, 0] = q, 1.0 - q
    R = np.zeros((2, num_actions))
    R[1, :] = 1.0
    return TabularMDP(P, R, gamma, np.full(2, 0.5), name=f"two_state(A={num_actions},seed={seed})")


def garnet(
    num_states: int, num_actions: int, branching: int, gamma: float = 0.9, seed: int = 0
) -> TabularMDP:
    """Random Garnet MDP (Archibald, McKinnon, Thomas 1995; Bhatnagar et al. 2009).

    Every ``(s, a)`` has ``branching`` distinct successors drawn uniformly without replacement;
    their probabilities are the gaps between ``branching - 1`` sorted ``U[0, 1]`` cut points
    (a uniform draw from the simplex). Rewards ``R(s, a) ~ U[0, 1]``; the initial distribution
    is uniform. Deterministic for a given ``seed``.

    Parameters
    ----------
    num_states, num_actions : int
        Sizes ``S`` and ``A`` (both >= 1).
    branching : int
        Successors per state-action pair, ``1 <= branching <= num_states``.
    gamma : float
        Discount factor.
    seed : int
        Seed of ``np.random.default_rng``.
    """
    if num_states < 1 or num_actions < 1:
        raise ValueError(
            f"num_states and num_actions must be >= 1, got {num_states} and {num_actions}"
        )
    if not 1 <= branching <= num_states:
        raise ValueError(f"branching must be in [1, num_states={num_states}], got {branching}")
    rng = np.random.default_rng(seed)
    # Argsort of i.i.d. keys is a uniform random permutation; its head is a uniform subset.
    successors = np.argsort(rng.random((num_states, num_actions, num_states)), axis=-1)
    successors = successors[..., :branching]
    cuts = np.sort(rng.random((num_states, num_actions, branching - 1)), axis=-1)
    edges = np.concatenate(
        [np.zeros((num_states, num_actions, 1)), cuts, np.ones((num_states, num_actions, 1))],
        axis=-1,
    )
    P = np.zeros((num_states, num_actions, num_states))
    np.put_along_axis(P, successors, np.diff(edges, axis=-1), axis=-1)
    R = rng.random((num_states, num_actions))
    name = f"garnet(S={num_states},A={num_actions},b={branching},seed={seed})"
    return TabularMDP(P, R, gamma, np.full(num_states, 1.0 / num_states), name=name)


def riverswim(num_states: int = 6, gamma: float = 0.9) -> TabularMDP:
    """RiverSwim chain (Strehl & Littman, JCSS 2008): a classic hard-exploration MDP.

    Actions ``0 = left`` (with the current) and ``1 = right`` (against it). We use the
    parametrization of Osband, Russo & Van Roy (NeurIPS 2013):

    - left: deterministic move to ``s - 1`` (stay at ``0`` in the leftmost state);
    - right, leftmost state: stay 0.4, move right 0.6;
    - right, interior states: move left 0.05, stay 0.6, move right 0.35;
    - right, rightmost state: move left 0.4, stay 0.6.

    Raw rewards are 5/1000 for ``left`` in state 0 and 1 for ``right`` in state ``S - 1``,
    divided by their maximum (1), so ``R`` is already in ``[0, 1]``. The chain starts in the
    leftmost state. (Strehl & Littman's original uses rewards 5 and 10000.)

    Parameters
    ----------
    num_states : int
        Chain length, >= 2.
    gamma : float
        Discount factor.
    """
    if num_states < 2:
        raise ValueError(f"num_states must be >= 2 for RiverSwim, got {num_states}")
    left, right = 0, 1
    last = num_states - 1
    P = np.zeros((num_states, 2, num_states))
    for s in range(num_states):
        P[s, left, max(s - 1, 0)] = 1.0
    P[0, right, 0], P[0, right, 1] = 0.4, 0.6
    for s in range(1, last):
        P[s, right, s - 1], P[s, right, s], P[s, right, s + 1] = 0.05, 0.6, 0.35
    P[last, right, last - 1], P[last, right, last] = 0.4, 0.6
    raw = np.zeros((num_states, 2))
    raw[0, left] = 5.0 / 1000.0
    raw[last, right] = 1.0
    initial = np.zeros(num_states)
    initial[0] = 1.0
    return TabularMDP(P, raw / raw.max(), gamma, initial, name=f"riverswim(S={num_states})")


TERMINAL_MODES = ("absorbing", "reset")



def perturb(mdp: TabularMDP, level: float, seed: int) -> TabularMDP:
    """Heterogeneous copy of ``mdp`` for one federated agent.

    ``P' = (1 - level) P + level Q`` with ``Q`` a random row-stochastic kernel (rows uniform
    on the simplex), and ``R' = clip(R + level U, 0, 1)`` with ``U ~ U[-0.5, 0.5]`` entrywise.
    Both are drawn from ``np.random.default_rng(seed)``. ``level = 0`` returns ``mdp`` itself.

    Parameters
    ----------
    mdp : TabularMDP
        The shared base environment.
    level : float
        Heterogeneity in ``[0, 1]``.
    seed : int
        Per-agent seed.
    """
    level = float(level)
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"level must be in [0, 1], got {level}")
    if level == 0.0:
        return mdp
    rng = np.random.default_rng(seed)
    # Normalized i.i.d. exponentials are uniform on the simplex.
    noise = rng.exponential(size=mdp.P.shape)
    noise /= noise.sum(axis=-1, keepdims=True)
    P = (1.0 - level) * mdp.P + level * noise
    P /= P.sum(axis=-1, keepdims=True)  # remove rounding drift
    R = np.clip(mdp.R + level * rng.uniform(-0.5, 0.5, size=mdp.R.shape), 0.0, 1.0)
    return TabularMDP(P, R, mdp.gamma, mdp.initial, name=f"{mdp.name}~{level:g}#{seed}")


MDP_NAMES = ("two_state", "garnet", "riverswim", "frozenlake", "taxi", "cliffwalking")

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
    seed : int
        Seed of the random constructions (``two_state``, ``garnet``); the others are
        deterministic and ignore it.
    terminal : {"absorbing", "reset"}
        Gymnasium environments only, see :func:`from_gymnasium`.
    map_name : str
        FrozenLake map (``"4x4"`` or ``"8x8"``).
    is_slippery : bool
        FrozenLake only; Taxi and CliffWalking keep their deterministic defaults.
    """
    if name == "two_state":
        _check_size(name, "num_states", num_states, 2)
        return two_state(10 if num_actions is None else int(num_actions), gamma, seed)
    if name == "garnet":
        if num_states is None or num_actions is None:
            raise ValueError("garnet needs num_states and num_actions")
        return garnet(int(num_states), int(num_actions), int(branching), gamma, seed)
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


def __getattr__(name: str):
    if name == "from_gymnasium":  # lives in gym_mdp; importable from here as before
        from .gym_mdp import from_gymnasium

        return from_gymnasium
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
