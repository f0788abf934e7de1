"""Finite tabular MDPs and the builders every experiment draws its environment from.

(The MDPs by config name, ``make_mdp`` and ``MDP_NAMES``, are in :mod:`flower_qlearn.mdp_catalog`
and importable from here.)

A :class:`TabularMDP` is an immutable, validated bundle of dense arrays (transition kernel,
expected rewards in ``[0, 1]``, discount, initial distribution). Builders cover the paper's
two-state example, random Garnets, RiverSwim and Gymnasium's toy-text environments read
exactly from their transition tables; :func:`perturb` derives heterogeneous copies for
federated agents. The module depends on NumPy only (Gymnasium is imported lazily).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .transitions import Transitions

__all__ = [
    "GARNET_SUCCESSORS",
    "MDP_NAMES",  # noqa: F822 - provided by __getattr__ (flower_qlearn.mdp_catalog)
    "TabularMDP",
    "from_gymnasium",  # noqa: F822 - provided by __getattr__ (flower_qlearn.gym_mdp)
    "garnet",
    "make_mdp",  # noqa: F822 - provided by __getattr__ (flower_qlearn.mdp_catalog)
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


def _check_sparse_rows(transitions: Transitions) -> None:
    """Row sums of sparse successor lists, with the dense check's message."""
    sums = transitions.row_sums()
    off = np.argwhere(np.abs(sums - 1.0) > _TOL)
    if off.size:
        index = tuple(int(i) for i in off[0])
        raise ValueError(f"P{list(index)} sums to {sums[index]:.12g}, expected 1 (tol 1e-9)")


class TabularMDP:
    """A finite discounted MDP, validated once at construction.

    Immutable on purpose: one instance is shared by the server's evaluation and by every
    client, so the arrays are stored as read-only float64 copies. The transition kernel is
    kept as sparse successor lists (:attr:`transitions`, what samplers and large-MDP solvers
    use); the dense :attr:`P` is built on first access (and refused beyond
    :data:`~flower_qlearn.transitions.DENSE_LIMIT` entries) unless it was given dense.

    Parameters
    ----------
    P : np.ndarray or Transitions
        Transition kernel, dense ``(S, A, S)`` with ``P[s, a, s'] = P(s' | s, a)``, or sparse
        :class:`~flower_qlearn.transitions.Transitions`. Each row must be a distribution
        (non-negative, finite, sums to 1 within 1e-9).
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

    __slots__ = ("R", "gamma", "initial", "name", "transitions", "_dense")

    def __init__(
        self,
        P: np.ndarray | Transitions,
        R: np.ndarray,
        gamma: float,
        initial: np.ndarray,
        name: str = "mdp",
    ) -> None:
        if isinstance(P, Transitions):
            transitions, dense = P, None
            num_states, num_actions = P.num_states, P.num_actions
        else:
            dense = _frozen_float_array(P, "P")
            if (
                dense.ndim != 3
                or dense.shape[0] != dense.shape[2]
                or dense.shape[0] == 0
                or dense.shape[1] == 0
            ):
                raise ValueError(
                    f"P must have shape (S, A, S) with S, A >= 1, got shape {dense.shape}"
                )
            num_states, num_actions = dense.shape[:2]
        R = _frozen_float_array(R, "R")
        initial = _frozen_float_array(initial, "initial")
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
        if dense is not None:
            _check_distribution(dense, "P")
            transitions = Transitions.from_dense(dense)
        else:
            _check_sparse_rows(transitions)
        _check_finite(R, "R")
        outside = np.argwhere((R < 0) | (R > 1))
        if outside.size:
            index = tuple(int(i) for i in outside[0])
            raise ValueError(f"R{list(index)} = {R[index]:.6g} is outside [0, 1]")
        _check_distribution(initial, "initial")
        try:
            gamma = float(gamma)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"gamma must be a number, got {gamma!r}") from exc
        if not 0.0 <= gamma < 1.0:  # also rejects NaN
            raise ValueError(f"gamma = {gamma!r} must satisfy 0 <= gamma < 1")
        for key, value in (
            ("transitions", transitions),
            ("_dense", dense),
            ("R", R),
            ("initial", initial),
            ("gamma", gamma),
            ("name", str(name)),
        ):
            object.__setattr__(self, key, value)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"TabularMDP is immutable: cannot set {key!r}")

    @property
    def P(self) -> np.ndarray:
        """Dense ``(S, A, S)`` kernel, read-only; built from :attr:`transitions` on first use."""
        if self._dense is None:
            dense = self.transitions.to_dense()
            dense.flags.writeable = False
            object.__setattr__(self, "_dense", dense)
        return self._dense

    @property
    def num_states(self) -> int:
        """Number of states ``S``."""
        return self.transitions.num_states

    @property
    def num_actions(self) -> int:
        """Number of actions ``A``."""
        return self.transitions.num_actions

    def with_gamma(self, gamma: float) -> TabularMDP:
        """Return the same MDP with another discount (the average-reward schedule needs many).

        The transition lists (and their cached cumulative tables) are shared, not copied.
        """
        return TabularMDP(self.transitions, self.R, gamma, self.initial, self.name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TabularMDP):
            return NotImplemented
        return (
            self.name == other.name
            and self.gamma == other.gamma
            and self.transitions.same_as(other.transitions)
            and np.array_equal(self.R, other.R)
            and np.array_equal(self.initial, other.initial)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking arrays: like ndarray, no hash

    def __reduce__(self):
        return (TabularMDP, (self.transitions, self.R, self.gamma, self.initial, self.name))

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


#: How :func:`garnet` draws each ``(s, a)``'s successors (config ``mdp.successors``):
#: ``argsort`` = the head of a random permutation from ``S`` i.i.d. keys (the original
#: construction, ``O(S^2 A)`` time, kept for its random stream); ``floyd`` = Floyd's
#: sampling of ``b`` distinct states from ``b`` integers (``O(S A b)``, for large ``S``).
GARNET_SUCCESSORS = ("argsort", "floyd")

# Keys drawn per chunk of the argsort construction (64 MB of float64).
_KEY_CHUNK = 1 << 23


def _argsort_successors(
    rng: np.random.Generator, num_states: int, num_actions: int, branching: int
) -> np.ndarray:
    """Heads ``argsort(keys)[..., :b]`` of ``keys = rng.random((S, A, S))``, drawn in chunks.

    Same stream and same result as the dense ``np.argsort`` (Generator streams concatenate;
    the ``b`` smallest of distinct keys have one order). A row whose ``b + 1`` smallest keys
    hold a tie is sorted in full by ``np.argsort``, exactly as the dense construction did.
    """
    rows_per_chunk = max(1, _KEY_CHUNK // (num_actions * num_states))
    heads = np.empty((num_states, num_actions, branching), dtype=np.int64)
    for start in range(0, num_states, rows_per_chunk):
        stop = min(num_states, start + rows_per_chunk)
        keys = rng.random((stop - start, num_actions, num_states))
        if branching == num_states:
            heads[start:stop] = np.argsort(keys, axis=-1)
            continue
        part = np.argpartition(keys, branching, axis=-1)[..., : branching + 1]
        head_keys = np.take_along_axis(keys, part, axis=-1)
        order = np.argsort(head_keys, axis=-1)
        part = np.take_along_axis(part, order, axis=-1)
        sorted_keys = np.take_along_axis(head_keys, order, axis=-1)
        heads[start:stop] = part[..., :branching]
        for i, a in np.argwhere(np.any(np.diff(sorted_keys, axis=-1) == 0, axis=-1)):
            heads[start + i, a] = np.argsort(keys[i, a])[:branching]
    return heads


def _floyd_successors(
    rng: np.random.Generator, num_states: int, num_actions: int, branching: int
) -> np.ndarray:
    """``b`` distinct uniform successors per ``(s, a)`` by Floyd's algorithm, vectorized.

    For ``j = S - b, ..., S - 1``: draw ``t`` uniform in ``[0, j]``; take ``t`` unless already
    taken, else ``j``. The resulting set is a uniform ``b``-subset (Bentley & Floyd, CACM 1987).
    """
    rows = num_states * num_actions
    chosen = np.empty((rows, branching), dtype=np.int64)
    for i, j in enumerate(range(num_states - branching, num_states)):
        t = rng.integers(0, j + 1, size=rows)
        taken = np.any(chosen[:, :i] == t[:, None], axis=1)
        chosen[:, i] = np.where(taken, j, t)
    return chosen.reshape(num_states, num_actions, branching)


def garnet(
    num_states: int,
    num_actions: int,
    branching: int,
    gamma: float = 0.9,
    seed: int = 0,
    successors: str = "argsort",
) -> TabularMDP:
    """Random Garnet MDP (Archibald, McKinnon, Thomas 1995; Bhatnagar et al. 2009).

    Every ``(s, a)`` has ``branching`` distinct successors drawn uniformly without replacement;
    their probabilities are the gaps between ``branching - 1`` sorted ``U[0, 1]`` cut points
    (a uniform draw from the simplex). Rewards ``R(s, a) ~ U[0, 1]``; the initial distribution
    is uniform. Deterministic for a given ``seed``. Stored sparse (``16 S A b`` bytes).

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
    successors : {"argsort", "floyd"}
        How successor sets are drawn, see :data:`GARNET_SUCCESSORS`. Both give the same
        distribution over MDPs; ``argsort`` keeps the original random stream (every
        published number) but costs ``O(S^2 A)`` time, ``floyd`` scales to ``S = 10^5``.
    """
    if num_states < 1 or num_actions < 1:
        raise ValueError(
            f"num_states and num_actions must be >= 1, got {num_states} and {num_actions}"
        )
    if not 1 <= branching <= num_states:
        raise ValueError(f"branching must be in [1, num_states={num_states}], got {branching}")
    if successors not in GARNET_SUCCESSORS:
        raise ValueError(f"successors must be one of {GARNET_SUCCESSORS}, got {successors!r}")
    rng = np.random.default_rng(seed)
    draw = _argsort_successors if successors == "argsort" else _floyd_successors
    heads = draw(rng, num_states, num_actions, branching)
    cuts = rng.random((num_states, num_actions, branching - 1))
    cuts.sort(axis=-1)
    gaps = np.diff(cuts, axis=-1, prepend=0.0, append=1.0)
    del cuts
    transitions = Transitions.from_successors(heads, gaps, num_states)
    del heads, gaps
    R = rng.random((num_states, num_actions))
    name = f"garnet(S={num_states},A={num_actions},b={branching},seed={seed})"
    if successors != "argsort":
        name = f"{name[:-1]},{successors})"
    return TabularMDP(transitions, R, gamma, np.full(num_states, 1.0 / num_states), name=name)


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
    states = np.arange(num_states)
    nxt = np.empty((num_states, 2, 3), dtype=np.int64)
    prob = np.zeros((num_states, 2, 3))
    nxt[:, left] = np.maximum(states - 1, 0)[:, None]  # one successor, padded with itself
    prob[:, left, 0] = 1.0
    nxt[:, right] = np.clip(states[:, None] + np.array([-1, 0, 1]), 0, last)
    prob[:, right] = (0.05, 0.6, 0.35)
    nxt[0, right], prob[0, right] = (0, 1, 1), (0.4, 0.6, 0.0)
    nxt[last, right], prob[last, right] = (last - 1, last, last), (0.4, 0.6, 0.0)
    P = Transitions(nxt, prob, num_states)
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
    # Handed over as successor lists: the agent keeps no dense copy unless mdp.P is read.
    _check_distribution(P, "P")
    transitions = Transitions.from_dense(P)
    del P
    return TabularMDP(transitions, R, mdp.gamma, mdp.initial, name=f"{mdp.name}~{level:g}#{seed}")


#: Names importable from here as before, living in the module that holds them now.
_MOVED = {"from_gymnasium": "gym_mdp", "make_mdp": "mdp_catalog", "MDP_NAMES": "mdp_catalog",
          "fixed_sizes": "mdp_catalog"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
