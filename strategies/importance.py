"""Importance averaging of Q-tables: FedAsynQ-ImAvg.

Woo, Joshi, Chi, "The Blessing of Heterogeneity in Federated Q-Learning: Linear Speedup
and Beyond", ICML 2023 / JMLR 2025 (``docs/ALGORITHMS.md`` section 4). With asynchronous
(Markovian) sampling, agent ``k`` updated entry ``(s, a)`` only ``N_k(s, a)`` times in the
round, so its local value still holds the old global value with weight ``(1 - eta)^N``.
Weighting each agent per entry by ``(1 - eta)^(-N_k(s, a))`` lets agents that actually
visited an entry dominate it, as if all trajectories had been processed centrally.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from flower_qlearn.schema import Rule, one_of

from .base import AveragingStrategy, common_args
from .equal import Q_LEARNING, q_learning_config
from .identity import check_visit_counts
from .protocol import COUNTS, Q
from .registry import Plan, StrategySpec, register
from .robust import ROBUST_RULES, Robust, robust_importance_average
from .sync import RULES as SYNC_RULES
from .sync import AdaptiveSync, SyncSchedule
from .validation import ArraySpec, ClientUpdate


def importance_weights(counts: np.ndarray, learning_rate: float) -> np.ndarray:
    """Per-entry importance weights ``w_k(s, a) ∝ (1 - lr)^(-N_k(s, a))``.

    Computed as ``softmax_k(N_k * (-log(1 - lr)))`` in log space: subtracting the largest
    count over ``k`` first keeps the exponent <= 0, so counts like ``1e5`` (where the raw
    power overflows float64) give finite, exact weights. If no agent visited an entry (or
    all counts are equal) every agent gets ``1/K``.

    Parameters
    ----------
    counts : np.ndarray
        Visit counts ``N_k(s, a)`` of the round, shape ``(K, S, A)``, non-negative.
    learning_rate : float
        The agents' constant step size ``eta`` in ``(0, 1]``. For ``eta == 1`` the weight
        ``(1 - eta)^(-N)`` is infinite for every visited entry; we use its limit as
        ``eta -> 1``: all weight split equally among the agents with the largest count
        (a fully overwritten entry carries no trace of the old global value).

    Returns
    -------
    np.ndarray
        Weights, shape ``(K, S, A)``, float64, summing to 1 over axis 0.
    """
    counts = np.asarray(counts)
    # int64 so that unsigned counts cannot wrap around in the subtraction below (no copy of
    # int64 counts: they are only read).
    counts = counts.astype(np.int64 if np.issubdtype(counts.dtype, np.integer) else np.float64,
                           copy=False)
    if counts.ndim != 3 or counts.shape[0] == 0:
        raise ValueError(f"counts must have shape (K>=1, S, A), got {counts.shape}")
    if np.any(counts < 0):
        raise ValueError("counts must be non-negative")
    if not 0.0 < learning_rate <= 1.0:
        raise ValueError(f"learning_rate must be in (0, 1], got {learning_rate}")

    # Exact integer (or float) difference first, then one multiplication: no cancellation.
    excess = counts - counts.max(axis=0, keepdims=True)  # <= 0, 0 for the argmax agents
    if learning_rate == 1.0:
        unnormalized = (excess == 0).astype(np.float64)
    else:
        log_ratio = -math.log1p(-learning_rate)  # -log(1 - lr) > 0, accurate for small lr
        unnormalized = excess.astype(np.float64)  # then in place: the same operations
        unnormalized *= log_ratio
        np.exp(unnormalized, out=unnormalized)
    unnormalized /= unnormalized.sum(axis=0, keepdims=True)
    return unnormalized


def importance_average(tables: np.ndarray, counts: np.ndarray, learning_rate: float) -> np.ndarray:
    """Importance-weighted average ``Qbar(s, a) = sum_k w_k(s, a) Q_k(s, a)``.

    Parameters
    ----------
    tables : np.ndarray
        Local Q-tables, shape ``(K, S, A)``.
    counts : np.ndarray
        Visit counts of the round, same shape as `tables`.
    learning_rate : float
        The agents' constant step size, see `importance_weights`.

    Returns
    -------
    np.ndarray
        Global Q-table, shape ``(S, A)``, float64.
    """
    tables = np.asarray(tables, dtype=np.float64)
    if tables.shape != np.shape(counts):
        raise ValueError(
            f"tables and counts must have the same shape, got {tables.shape} and {np.shape(counts)}"
        )
    weights = importance_weights(counts, learning_rate)
    weights *= tables  # in place (the weights are this call's own array)
    return np.sum(weights, axis=0)


class ImportanceAveraging(AdaptiveSync, AveragingStrategy):
    """Flower strategy for FedAsynQ-ImAvg: per-entry importance-weighted average of replies.

    Replies must carry the round's visit counts as an integer ``"counts"`` array next to
    ``"q"``.

    Parameters
    ----------
    num_states, num_actions : int
        Q-table shape.
    learning_rate : float
        The clients' constant step size ``eta`` in ``(0, 1]``; it must match the clients'.
    min_replies : int, default 1
        See `QTableStrategy`.
    value_bound : float, optional
        See `QTableStrategy`.
    robust : Robust, optional
        Default ``none`` (the importance average); ``trimmed_mean`` / ``median`` trim among
        the agents that visited each entry (:func:`~.robust.robust_importance_average`).
    sync : SyncSchedule, optional
        Default ``constant`` (every round the config's ``client.local_steps``); ``doubling``
        sets each round's period from the collective visit counts (:mod:`.sync`).
    """

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        learning_rate: float,
        robust: Robust | None = None,
        sync: SyncSchedule | None = None,
        **kwargs,
    ) -> None:
        """``kwargs``: `QTableStrategy`'s keyword arguments (min_replies, value_bound, ...)."""
        super().__init__(num_states, num_actions, **kwargs)
        if not 0.0 < learning_rate <= 1.0:
            raise ValueError(f"learning_rate must be in (0, 1], got {learning_rate}")
        self.learning_rate = float(learning_rate)
        self.robust = robust or Robust()
        self.sync = sync or SyncSchedule("constant", 1)

    @property
    def reply_specs(self) -> list[ArraySpec]:
        """``"q"`` plus the round's visit counts ``"counts"`` (integer, >= 0)."""
        return [*super().reply_specs, ArraySpec(COUNTS, self.shape, "count")]

    def check_update(self, update: ClientUpdate) -> None:
        """Visit counts must be those of the round asked for (:func:`check_visit_counts`)."""
        super().check_update(update)
        if self._round_steps is not None:
            check_visit_counts(update.arrays[COUNTS], *self._round_steps)

    def parameters(self) -> dict[str, object]:
        """Constructor parameters, for `summary`."""
        return {
            **super().parameters(),
            "learning_rate": self.learning_rate,
            **self.robust.parameters(),
            **(self.sync.parameters() if self.sync.adaptive else {}),
        }

    def aggregate(self, updates: list[ClientUpdate]) -> np.ndarray:
        """Importance average of the validated local Q-tables."""
        tables = np.stack([update.arrays[Q] for update in updates])
        counts = np.stack([update.arrays[COUNTS] for update in updates])
        # The round's step size (a halving schedule's eta_j), then its collective visits.
        learning_rate = self.sync.learning_rate if self.sync.halve_lr else self.learning_rate
        self.sync.observe(counts.sum(axis=0))
        if self.robust.active:
            return robust_importance_average(
                tables, counts, learning_rate, self.robust.method, self.robust.trim_fraction
            )
        return importance_average(tables, counts, learning_rate)


def build(settings: Mapping[str, Any], mdp) -> Plan:
    """``strategy=importance`` from the composed settings (the clients' ``q_learning`` task)."""
    strategy = ImportanceAveraging(
        mdp.num_states,
        mdp.num_actions,
        learning_rate=float(settings["client"]["learning_rate"]),
        robust=Robust.from_settings(settings["strategy"]),
        sync=SyncSchedule.from_settings(settings["client"]),
        **common_args(settings, mdp),
    )
    return Plan(strategy, q_learning_config(settings), int(settings["num_rounds"]))


#: The weights assume one constant step size for the whole run.
CONSTANT_STEP_SIZE = Rule(
    "client.lr_schedule", one_of(("constant",)),
    "constant (importance weights assume one constant step size)", optional=True,
)
SPEC = register(StrategySpec(
    "importance", build, Q_LEARNING, rules=(*ROBUST_RULES, *SYNC_RULES, CONSTANT_STEP_SIZE)
))
