"""Categorical draws on short rows: the sampling tables of ``client.sampler`` and their njit draws.

Two samplers, one uniform ``u`` in ``[0, 1)`` per categorical draw for both (so the random
streams a client consumes do not depend on the sampler):

- ``cdf`` (default): inverse CDF, the first entry of a cumulative row that is ``> u``. On the
  sparse successor rows of :class:`~flower_qlearn.transitions.Transitions` this returns the
  same states as on the dense ``(S, A, S)`` rows, bit for bit (see that module).
- ``alias``: Walker's alias method (Vose's construction): column ``j = floor(u W)``, kept if
  the fractional part ``u W - j`` is below ``threshold[j]``, else ``alias[j]``. Constant time
  per draw, a different mapping from ``u`` to outcomes (same distribution).

Tables are plain arrays in NamedTuples (:class:`NextStateTable` for ``P``, shared by all agents
on one MDP; :class:`ActionTable` for one agent's behavior policy), so compiled callers pass
their fields straight to the njit functions (``kind`` selects the sampler).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from flower_qlearn.jit import interpreted, njit

from .transitions import Transitions

__all__ = [
    "SAMPLERS",
    "SAMPLER_ALIAS",
    "SAMPLER_CDF",
    "ActionTable",
    "NextStateTable",
    "action_table",
    "alias_draw",
    "alias_rows",
    "as_action_table",
    "as_next_state_table",
    "cdf_index",
    "draw_markov_step",
    "draw_next_state",
    "inverse_cdf",
    "markov_step",
    "next_state",
    "next_state_table",
    "rows_are_short",
]

#: ``client.sampler`` options, in the order of their ``kind`` codes.
SAMPLERS = ("cdf", "alias")
SAMPLER_CDF = 0
SAMPLER_ALIAS = 1

# Up to this row length inverse_cdf counts (a branch-free loop the compiler vectorizes), above it
# it bisects: measured on this project's sizes, counting 100 entries is ~1.5x faster than a
# binary search whose data-dependent branches mispredict; at a few thousand entries the
# O(log n) search wins.
_LINEAR_SEARCH_MAX = 256


class NextStateTable(NamedTuple):
    """Next-state sampling table of a transition kernel (``(S, A, W)`` arrays, read-only).

    ``next[s, a, k]`` is the ``k``-th successor; ``value`` holds cumulative probabilities
    (``cdf``) or alias thresholds (``alias``); ``alias`` the alias columns (empty for ``cdf``).
    """

    kind: int
    next: np.ndarray
    value: np.ndarray
    alias: np.ndarray


class ActionTable(NamedTuple):
    """Action sampling table of a behavior policy (``(S, A)`` arrays, read-only)."""

    kind: int
    value: np.ndarray
    alias: np.ndarray


# --------------------------------------------------------------------------- njit draws


@njit(cache=True, inline="always")
def inverse_cdf(cdf_row: np.ndarray, u: float) -> int:
    """Index of the first entry of ``cdf_row`` that is ``> u``.

    Same result as ``np.searchsorted(cdf_row, u, side="right")`` on a non-decreasing row;
    assumes ``cdf_row[-1] == 1.0 > u`` so the answer is always a valid index. Short rows count
    the entries ``<= u`` (on a sorted row that count is the answer); long rows bisect.
    """
    return cdf_index(cdf_row, u, False)


@njit(cache=True, inline="always")
def cdf_index(cdf_row: np.ndarray, u: float, short_rows: bool) -> int:
    """:func:`inverse_cdf`; ``short_rows`` True (a constant of a caller that checked
    :func:`rows_are_short` once, outside its loop) counts without testing the row's length:
    the same index, and a loop whose body the compiler does not have to keep both searches
    in (the test inside a step loop cost ~10 % of the Markov kernels)."""
    n = cdf_row.shape[0]
    if short_rows or n <= _LINEAR_SEARCH_MAX:
        count = 0
        for i in range(n):
            count += cdf_row[i] <= u
        return count
    lo = 0
    hi = n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cdf_row[mid] > u:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True, inline="always")
def rows_are_short(pi_value: np.ndarray, p_value: np.ndarray) -> bool:
    """Whether every row of an action table's and a next-state table's values is one
    :func:`inverse_cdf` counts (at most ``_LINEAR_SEARCH_MAX`` entries)."""
    return pi_value.shape[-1] <= _LINEAR_SEARCH_MAX and p_value.shape[-1] <= _LINEAR_SEARCH_MAX


@njit(cache=True, inline="always")
def alias_draw(threshold_row: np.ndarray, alias_row: np.ndarray, u: float) -> int:
    """Alias-method draw of one column from one uniform ``u`` in ``[0, 1)``."""
    n = threshold_row.shape[0]
    x = u * n
    j = int(x)
    if j >= n:  # u * n can round up to n for u just below 1
        j = n - 1
    if x - j < threshold_row[j]:
        return j
    return alias_row[j]


@njit(cache=True, inline="always")
def next_state(
    kind: int, p_next: np.ndarray, p_value: np.ndarray, p_alias: np.ndarray, s: int, a: int,
    u: float,
) -> int:
    """One draw of ``s' ~ P(. | s, a)`` from a :class:`NextStateTable`'s fields."""
    return draw_next_state(kind, False, p_next, p_value, p_alias, s, a, u)


@njit(cache=True, inline="always")
def draw_next_state(
    kind: int, short_rows: bool, p_next: np.ndarray, p_value: np.ndarray, p_alias: np.ndarray,
    s: int, a: int, u: float,
) -> int:
    """:func:`next_state`, with :func:`cdf_index`'s ``short_rows``."""
    if kind == SAMPLER_CDF:
        k = cdf_index(p_value[s, a], u, short_rows)
    else:
        k = alias_draw(p_value[s, a], p_alias[s, a], u)
    return p_next[s, a, k]


@njit(cache=True, inline="always")
def markov_step(
    kind: int,
    p_next: np.ndarray,
    p_value: np.ndarray,
    p_alias: np.ndarray,
    pi_value: np.ndarray,
    pi_alias: np.ndarray,
    state: int,
    u_action: float,
    u_next: float,
):
    """One Markov-chain transition ``(a, s')`` from ``state``: ``a`` with ``u_action``, then
    ``s'`` with ``u_next``. The single definition shared by :class:`~flower_qlearn.sampling.
    MarkovChain` and the asynchronous kernels; both tables must have the same ``kind``."""
    return draw_markov_step(kind, False, p_next, p_value, p_alias, pi_value, pi_alias, state,
                            u_action, u_next)


@njit(cache=True, inline="always")
def draw_markov_step(
    kind: int,
    short_rows: bool,
    p_next: np.ndarray,
    p_value: np.ndarray,
    p_alias: np.ndarray,
    pi_value: np.ndarray,
    pi_alias: np.ndarray,
    state: int,
    u_action: float,
    u_next: float,
):
    """:func:`markov_step`, with :func:`cdf_index`'s ``short_rows`` (the asynchronous kernels
    pass a constant, having checked :func:`rows_are_short` once)."""
    if kind == SAMPLER_CDF:
        action = cdf_index(pi_value[state], u_action, short_rows)
    else:
        action = alias_draw(pi_value[state], pi_alias[state], u_action)
    return action, draw_next_state(kind, short_rows, p_next, p_value, p_alias, state, action,
                                   u_next)


@njit(cache=True)
def _vose(probs: np.ndarray, threshold: np.ndarray, alias: np.ndarray) -> None:
    """Vose's alias construction for every row of ``probs`` (``(N, W)``, rows sum to 1)."""
    rows, width = probs.shape
    small = np.empty(width, dtype=np.int64)
    large = np.empty(width, dtype=np.int64)
    scaled = np.empty(width)
    for r in range(rows):
        n_small = 0
        n_large = 0
        best = 0
        for j in range(width):
            scaled[j] = probs[r, j] * width
            alias[r, j] = j
            if probs[r, j] > probs[r, best]:
                best = j
            if scaled[j] < 1.0:
                small[n_small] = j
                n_small += 1
            else:
                large[n_large] = j
                n_large += 1
        while n_small > 0 and n_large > 0:
            n_small -= 1
            lo = small[n_small]
            g = large[n_large - 1]
            threshold[r, lo] = scaled[lo]
            alias[r, lo] = g
            scaled[g] = (scaled[g] + scaled[lo]) - 1.0
            if scaled[g] < 1.0:
                n_large -= 1
                small[n_small] = g
                n_small += 1
        for i in range(n_large):
            threshold[r, large[i]] = 1.0
        for i in range(n_small):  # left over by rounding only: keep positive mass, never zeros
            j = small[i]
            if probs[r, j] > 0.0:
                threshold[r, j] = 1.0
            else:
                threshold[r, j] = 0.0
                alias[r, j] = best


# --------------------------------------------------------------------------- builders


def alias_rows(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Alias tables ``(threshold, alias)`` of the distributions on the last axis of ``probs``.

    Parameters
    ----------
    probs : np.ndarray
        ``(..., W)`` non-negative rows summing to 1 (up to rounding; each row is divided by
        its sum first).

    Returns
    -------
    tuple of np.ndarray
        ``threshold`` float64 and ``alias`` int64, both of the shape of ``probs``, read-only.
    """
    probs = np.asarray(probs, dtype=np.float64)
    flat = np.ascontiguousarray(probs.reshape(-1, probs.shape[-1]))
    flat = flat / flat.sum(axis=1, keepdims=True)
    threshold = np.zeros(flat.shape)
    alias = np.zeros(flat.shape, dtype=np.int64)
    with interpreted(flat.size):  # a small table: no compilation for it alone
        _vose(flat, threshold, alias)
    threshold, alias = threshold.reshape(probs.shape), alias.reshape(probs.shape)
    threshold.flags.writeable = False
    alias.flags.writeable = False
    return threshold, alias


def _check_sampler(sampler: str) -> int:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    return SAMPLERS.index(sampler)


_EMPTY3 = np.zeros((0, 0, 0), dtype=np.int64)
_EMPTY2 = np.zeros((0, 0), dtype=np.int64)


def next_state_table(transitions: Transitions, sampler: str = "cdf") -> NextStateTable:
    """The :class:`NextStateTable` of a kernel; cached on ``transitions`` (one per process).

    Parameters
    ----------
    transitions : Transitions
        Sparse kernel (``mdp.transitions``).
    sampler : {"cdf", "alias"}
        ``client.sampler``.
    """
    kind = _check_sampler(sampler)
    cache = transitions.__dict__.setdefault("_tables", {})
    if kind not in cache:
        if kind == SAMPLER_CDF:
            cache[kind] = NextStateTable(kind, transitions.next, transitions.cumulative(), _EMPTY3)
        else:
            threshold, alias = alias_rows(transitions.prob)
            cache[kind] = NextStateTable(kind, transitions.next, threshold, alias)
    return cache[kind]


def action_table(policy: np.ndarray, sampler: str = "cdf") -> ActionTable:
    """The :class:`ActionTable` of an ``(S, A)`` behavior policy."""
    from .sampling import cumulative

    kind = _check_sampler(sampler)
    if kind == SAMPLER_CDF:
        value = cumulative(policy)
        value.flags.writeable = False
        return ActionTable(kind, value, _EMPTY2)
    threshold, alias = alias_rows(policy)
    return ActionTable(kind, threshold, alias)


def as_next_state_table(p_table: NextStateTable | np.ndarray) -> NextStateTable:
    """A :class:`NextStateTable` as is, or the exact ``cdf`` table of a dense ``(S, A, S)`` cdf.

    Only the positions where a dense cumulative row increases can be drawn (the first entry
    ``> u`` is always one), so keeping those positions with their values is exact.
    """
    if isinstance(p_table, NextStateTable):
        return p_table
    cdf = np.asarray(p_table, dtype=np.float64)
    if cdf.ndim != 3:
        raise ValueError(f"p_cdf must have shape (S, A, S), got shape {cdf.shape}")
    previous = np.concatenate([np.zeros(cdf.shape[:2] + (1,)), cdf[..., :-1]], axis=-1)
    keep = cdf > previous
    probs = np.where(keep, cdf - previous, 0.0)  # only its support is used below
    sparse = Transitions.from_dense(probs)
    value = np.ones(sparse.next.shape)
    slot = np.cumsum(keep, axis=-1) - 1
    s_idx, a_idx, col = np.nonzero(keep)
    value[s_idx, a_idx, slot[s_idx, a_idx, col]] = cdf[s_idx, a_idx, col]
    return NextStateTable(SAMPLER_CDF, sparse.next, value, _EMPTY3)


def as_action_table(pi_table: ActionTable | np.ndarray) -> ActionTable:
    """An :class:`ActionTable` as is, or the ``cdf`` table of a dense ``(S, A)`` policy cdf."""
    if isinstance(pi_table, ActionTable):
        return pi_table
    return ActionTable(SAMPLER_CDF, np.asarray(pi_table, dtype=np.float64), _EMPTY2)
