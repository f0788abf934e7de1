"""Robust aggregation against poisoning: per-entry trimmed means and medians.

``strategy.robust`` chooses how a strategy combines its agents' values entry by entry
(:data:`ROBUST_METHODS`, the option list, declared here only):

``none``
    Today's rule, bit for bit: the plain (or importance-weighted) mean.
``trimmed_mean``
    Per entry, sort the ``n`` values, drop the ``k = floor(trim_fraction * n)`` smallest and the
    ``k`` largest, and average the ``n - 2k`` kept (``trim_fraction < 1/2`` so ``n - 2k >= 1``).
    When ``k = 0`` (small ``n`` or ``trim_fraction = 0``) nothing is dropped and the result is
    the plain mean, computed exactly as ``none`` computes it. DASA's sparse operators are
    trimmed whole instead (:func:`farthest_trimmed_mean`).
``median``
    Per entry, the median (the mean of the two middle values for even ``n``); for importance
    averaging the weighted median of :func:`weighted_median`.

Every function is pure NumPy (no Flower) and is called by the strategies' ``aggregate``
(:mod:`.equal`, :mod:`.importance`, :mod:`.average_reward`) and by DASA's rule
(:mod:`.dasa.rule`). The math, the tie rules and the choice of the default ``trim_fraction``
are in ``docs/ALGORITHMS.md`` section 10 and ``docs/robustness.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from flower_qlearn.schema import Rule, in_interval, one_of, options

#: ``strategy.robust``: how values are combined per entry.
ROBUST_METHODS = ("none", "trimmed_mean", "median")
#: ``strategy.trim_fraction`` must lie in ``[0, MAX_TRIM)`` (trimming half from each side
#: would leave nothing).
MAX_TRIM = 0.5


def num_trimmed(n: int, trim_fraction: float) -> int:
    """``k = floor(trim_fraction * n)``: how many values are dropped from EACH side.

    Computed as ``floor(trim_fraction * n + 1e-9)`` so that a product that should be an
    integer but rounds just below it in float64 (e.g. ``0.7 * 10 = 6.999999999999999``) is that
    integer. Since ``trim_fraction < 1/2``, ``n - 2k >= 1``: at least one value is kept.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= trim_fraction < MAX_TRIM:
        raise ValueError(f"trim_fraction must be in [0, {MAX_TRIM}), got {trim_fraction}")
    k = math.floor(trim_fraction * n + 1e-9)
    return min(k, (n - 1) // 2)  # guards the 1e-9 for trim_fraction just below 1/2


def trimmed_mean(values: np.ndarray, trim_fraction: float) -> np.ndarray:
    """Per-entry trimmed mean over axis 0.

    Parameters
    ----------
    values : np.ndarray
        Shape ``(n, ...)``, ``n >= 1``: one array per agent.
    trim_fraction : float
        In ``[0, 1/2)``; ``k = num_trimmed(n, trim_fraction)`` values are dropped from each side.

    Returns
    -------
    np.ndarray
        Shape ``values.shape[1:]``, float64. With ``k = 0`` it is ``values.mean(axis=0)`` (the
        same summation order, so the same bits as the plain mean).
    """
    values = _stacked(values)
    n = values.shape[0]
    k = num_trimmed(n, trim_fraction)
    if k == 0:
        return values.mean(axis=0)
    return np.sort(values, axis=0)[k : n - k].mean(axis=0)


def farthest_trimmed_mean(values: np.ndarray, trim_fraction: float) -> np.ndarray:
    """Mean of the ``n - 2k`` whole arrays closest (l1) to the per-entry median.

    The ``2k`` arrays (``k = num_trimmed(n, trim_fraction)``) with the largest
    ``sum |x_i - median|`` are dropped (ties: the higher index first), the rest averaged in
    index order. For sparse arrays (DASA's batch operators: ``B`` transitions over ``S A``
    entries) a per-entry trim is biased: each entry's few nonzero honest values are what it
    drops. With ``k = 0`` it is the plain mean, bit for bit.
    """
    values = _stacked(values)
    n = values.shape[0]
    k = num_trimmed(n, trim_fraction)
    if k == 0:
        return values.mean(axis=0)
    distance = np.abs(values - np.median(values, axis=0)).reshape(n, -1).sum(axis=1)
    kept = np.sort(np.argsort(distance, kind="stable")[: n - 2 * k])
    return values[kept].mean(axis=0)


def median(values: np.ndarray) -> np.ndarray:
    """Per-entry median over axis 0 (the mean of the two middle values for even ``n``)."""
    return np.median(_stacked(values), axis=0)


def combine(values: np.ndarray, method: str, trim_fraction: float) -> np.ndarray:
    """Combine ``(n, ...)`` values entry by entry with equal weights under ``method``.

    ``none`` is ``values.mean(axis=0)``, i.e. exactly
    :func:`flower_qlearn.strategies.equal.equal_average`'s arithmetic.
    """
    if method == "none":
        return _stacked(values).mean(axis=0)
    if method == "trimmed_mean":
        return trimmed_mean(values, trim_fraction)
    if method == "median":
        return median(values)
    raise ValueError(f"strategy.robust={method!r}; expected {options(ROBUST_METHODS)}")


# --- importance averaging: trimming among the agents that visited the entry -----------------


def robust_importance_average(
    tables: np.ndarray,
    counts: np.ndarray,
    learning_rate: float,
    method: str,
    trim_fraction: float,
) -> np.ndarray:
    """Importance averaging made robust per entry (``method`` trimmed_mean or median).

    For each entry ``(s, a)`` the *candidates* are the agents that visited it this round
    (``N_k(s, a) > 0``), or every agent if none did. An agent that did not visit an entry holds
    only the previous global value there, so it adds nothing the server does not know, and
    admitting it untrimmed would let an attacker poison every entry it never visits.
    Among the ``n`` candidates, ordered by value (ties: lower index first), ``trimmed_mean``
    keeps all but the ``k = num_trimmed(n, trim_fraction)`` first and ``k`` last and averages
    the kept with their importance weights ``(1 - lr)^(-N_k)`` renormalized over the kept;
    ``median`` is the :func:`weighted_median` of the candidates under those weights.

    Parameters
    ----------
    tables, counts : np.ndarray
        Shape ``(K, S, A)``: local tables and visit counts, in the strategy's agent order.
    learning_rate : float
        ``eta`` in ``(0, 1]`` (see :func:`~flower_qlearn.strategies.importance.importance_weights`).
    method : str
        ``trimmed_mean`` or ``median``.
    trim_fraction : float
        In ``[0, 1/2)``.

    Returns
    -------
    np.ndarray
        Shape ``(S, A)``, float64.
    """
    tables = _stacked(tables)
    counts = np.asarray(counts)
    if tables.shape != counts.shape:
        raise ValueError(f"tables {tables.shape} and counts {counts.shape} differ in shape")
    counts = counts.astype(np.int64 if np.issubdtype(counts.dtype, np.integer) else np.float64)
    visited = counts > 0
    candidates = visited | ~visited.any(axis=0, keepdims=True)
    if method == "trimmed_mean":
        kept = _kept_after_trim(tables, candidates, trim_fraction)
        weights = _masked_importance_weights(counts, kept, learning_rate)
        return np.sum(weights * tables, axis=0)
    if method == "median":
        # Unnormalized (the largest weight is exactly 1): equal counts give weights of exactly
        # 1, so the cumulative sums are exact integers and the even-n median is exact.
        weights = _masked_importance_weights(counts, candidates, learning_rate, normalize=False)
        return weighted_median(tables, weights)
    raise ValueError(
        f"strategy.robust={method!r}; robust importance averaging takes trimmed_mean or median"
    )


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-entry weighted median over axis 0; agents with weight 0 take no part.

    Order an entry's values ascending (ties: lower index first) with weights ``w_(1..n)`` and
    cumulative sums ``W_j``, total ``W``. The *lower* weighted median is the first ``x_(j)``
    with ``2 W_j >= W``, the *upper* the first ``x_(j)`` with ``2 W_j > W``; the weighted
    median is their mean. Equal weights give the ordinary median (odd ``n``: the middle value;
    even ``n``: the mean of the two middle ones).

    Parameters
    ----------
    values, weights : np.ndarray
        Same shape ``(n, ...)``; weights ``>= 0`` with a positive sum in every entry.
    """
    values = _stacked(values)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != values.shape:
        raise ValueError(f"weights {weights.shape} and values {values.shape} differ in shape")
    order = np.argsort(values, axis=0, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=0)
    cumulative = np.cumsum(np.take_along_axis(weights, order, axis=0), axis=0)
    total = cumulative[-1]
    if np.any(total <= 0):
        raise ValueError("weights must have a positive sum in every entry")
    lower = np.argmax(2.0 * cumulative >= total, axis=0)
    upper = np.argmax(2.0 * cumulative > total, axis=0)
    pick = np.take_along_axis
    low = pick(sorted_values, lower[np.newaxis], axis=0)[0]
    high = pick(sorted_values, upper[np.newaxis], axis=0)[0]
    return (low + high) / 2.0


def _kept_after_trim(
    values: np.ndarray, candidates: np.ndarray, trim_fraction: float
) -> np.ndarray:
    """Mask of the candidates that survive trimming ``k`` from each side, per entry."""
    n = candidates.sum(axis=0)  # candidates per entry, >= 1
    k = np.vectorize(lambda m: num_trimmed(int(m), trim_fraction), otypes=[np.int64])(n)
    # Non-candidates sort last; a stable sort ranks tied values by agent index.
    order = np.argsort(np.where(candidates, values, np.inf), axis=0, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(values.shape[0]).reshape(-1, *[1] * n.ndim), axis=0)
    return candidates & (rank >= k) & (rank < n - k)


def _masked_importance_weights(
    counts: np.ndarray, mask: np.ndarray, learning_rate: float, normalize: bool = True
) -> np.ndarray:
    """``(1 - lr)^(-N_k)`` over the masked agents, in log space as
    :func:`~flower_qlearn.strategies.importance.importance_weights` (the largest is 1), 0
    elsewhere; normalized per entry unless ``normalize`` is False."""
    if not 0.0 < learning_rate <= 1.0:
        raise ValueError(f"learning_rate must be in (0, 1], got {learning_rate}")
    lowest = np.iinfo(np.int64).min if counts.dtype == np.int64 else -np.inf
    top = np.where(mask, counts, lowest).max(axis=0, keepdims=True)
    excess = np.where(mask, counts - top, 0)
    if learning_rate == 1.0:
        unnormalized = (mask & (excess == 0)).astype(np.float64)
    else:
        log_ratio = -math.log1p(-learning_rate)
        unnormalized = np.where(mask, np.exp(excess.astype(np.float64) * log_ratio), 0.0)
    if not normalize:
        return unnormalized
    return unnormalized / unnormalized.sum(axis=0, keepdims=True)


def _stacked(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim < 1 or values.shape[0] == 0:
        raise ValueError(f"values must have shape (n>=1, ...), got {values.shape}")
    return values


def as_range(bound: float | tuple[float, float]) -> tuple[float, float]:
    """``(lo, hi)`` of a value bound: a number ``b`` is the symmetric ``(-b, b)``, a pair is
    ``(lo, hi)`` itself (a one-sided bound)."""
    if isinstance(bound, tuple | list):
        lo, hi = bound
        return float(lo), float(hi)
    return -float(bound), float(bound)


# --- the strategies' settings ------------------------------------------------------------------


@dataclass(frozen=True)
class Robust:
    """A strategy's robust-aggregation setting: ``strategy.robust`` and ``strategy.trim_fraction``.

    The default is ``none``: today's arithmetic, bit for bit.
    """

    method: str = "none"
    trim_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.method not in ROBUST_METHODS:
            raise ValueError(f"robust={self.method!r}; expected {options(ROBUST_METHODS)}")
        if not 0.0 <= self.trim_fraction < MAX_TRIM:
            raise ValueError(f"trim_fraction={self.trim_fraction!r}; expected a number in [0, 0.5)")

    @property
    def active(self) -> bool:
        """False for ``none``."""
        return self.method != "none"

    def combine(self, values: np.ndarray) -> np.ndarray:
        """Equal-weight per-entry combination over axis 0 (:func:`combine`)."""
        return combine(values, self.method, self.trim_fraction)

    def combine_operators(self, operators: np.ndarray) -> np.ndarray:
        """DASA's combination of its used operators: ``trimmed_mean`` trims whole operators
        (:func:`farthest_trimmed_mean`: sparse batch operators bias a per-entry trim);
        ``median`` is per entry; ``none`` the mean."""
        if self.method == "trimmed_mean":
            return farthest_trimmed_mean(operators, self.trim_fraction)
        return self.combine(operators)

    def parameters(self) -> dict[str, object]:
        """For a strategy's `summary`."""
        return {"robust": self.method, "trim_fraction": self.trim_fraction}

    @classmethod
    def from_settings(cls, strategy_settings: Mapping) -> Robust:
        """From the composed ``strategy`` group (missing or null keys: the defaults)."""
        method = strategy_settings.get("robust")
        trim = strategy_settings.get("trim_fraction")
        default = cls()
        return cls(
            default.method if method is None else str(method),
            default.trim_fraction if trim is None else float(trim),
        )


#: The config rules of the two keys; every strategy's module lists them in its ``rules``.
ROBUST_RULES = (
    Rule("strategy.robust", one_of(ROBUST_METHODS), options(ROBUST_METHODS), optional=True),
    Rule(
        "strategy.trim_fraction",
        in_interval(0, MAX_TRIM, hi_open=True),
        "a number in [0, 0.5) (the fraction trimmed from EACH side)",
        optional=True,
    ),
)
