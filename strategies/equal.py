"""Equal averaging of Q-tables: FedSynQ and FedAsynQ-EqAvg.

Woo, Joshi, Chi, "The Blessing of Heterogeneity in Federated Q-Learning: Linear Speedup
and Beyond", ICML 2023 / JMLR 2025. Each round the server broadcasts the global Q-table,
every agent runs ``tau`` local Q-learning steps from it, and the server sets the new global
table to the plain mean of the local tables (``ALGORITHMS.md`` section 3).
"""

from __future__ import annotations

import numpy as np

from strategies.base import QTableStrategy
from strategies.validation import ClientUpdate


def equal_average(tables: np.ndarray) -> np.ndarray:
    """Average K local Q-tables with equal weights ``1/K``.

    The weights are deliberately NOT proportional to sample counts: in the paper every
    agent runs the same number of local steps, and equal weights are the algorithm.

    Parameters
    ----------
    tables : np.ndarray
        Local Q-tables, shape ``(K, S, A)``, ``K >= 1``.

    Returns
    -------
    np.ndarray
        Global Q-table ``(1/K) sum_k Q_k``, shape ``(S, A)``, float64.
    """
    tables = np.asarray(tables, dtype=np.float64)
    if tables.ndim != 3 or tables.shape[0] == 0:
        raise ValueError(f"tables must have shape (K>=1, S, A), got {tables.shape}")
    return tables.mean(axis=0)


class EqualAveraging(QTableStrategy):
    """Flower strategy for FedSynQ / FedAsynQ-EqAvg: the new global Q is the mean of replies.

    Parameters are those of `QTableStrategy`.
    """

    def aggregate(self, updates: list[ClientUpdate]) -> np.ndarray:
        """Equal average of the validated local Q-tables."""
        return equal_average(np.stack([update.arrays["q"] for update in updates]))
