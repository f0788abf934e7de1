"""Equal averaging of Q-tables: FedSynQ and FedAsynQ-EqAvg.

Woo, Joshi, Chi, "The Blessing of Heterogeneity in Federated Q-Learning: Linear Speedup
and Beyond", ICML 2023 / JMLR 2025. Each round the server broadcasts the global Q-table,
every agent runs ``tau`` local Q-learning steps from it, and the server sets the new global
table to the plain mean of the local tables (``docs/ALGORITHMS.md`` section 3).

This module also holds the ``q_learning`` client task that equal and importance averaging
share: ``client.local_steps`` synchronous (generative) or asynchronous (Markovian) steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord

from .base import AveragingStrategy, common_args
from .protocol import COUNTS, NUM_SAMPLES, Q, task_keys
from .registry import ClientTask, Plan, StrategySpec, TaskJob, TaskResult, register
from .robust import ROBUST_RULES, Robust
from .sync import CONSTANT_ONLY as SYNC_CONSTANT
from .validation import ClientUpdate


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


class EqualAveraging(AveragingStrategy):
    """Flower strategy for FedSynQ / FedAsynQ-EqAvg: the new global Q is the mean of replies.

    Parameters are those of `QTableStrategy`, plus ``robust`` (:class:`~.robust.Robust`,
    default ``none``: the plain mean): a per-entry trimmed mean or median instead.
    """

    def __init__(self, num_states: int, num_actions: int, *, robust: Robust | None = None,
                 **kwargs) -> None:
        """``kwargs``: `QTableStrategy`'s keyword arguments (min_replies, value_bound, ...)."""
        super().__init__(num_states, num_actions, **kwargs)
        self.robust = robust or Robust()

    def parameters(self) -> dict[str, object]:
        """Constructor parameters, for `summary`."""
        return {**super().parameters(), **self.robust.parameters()}

    def aggregate(self, updates: list[ClientUpdate]) -> np.ndarray:
        """Equal average (or its robust variant) of the validated local Q-tables."""
        tables = np.stack([update.arrays[Q] for update in updates])
        if self.robust.active:
            return self.robust.combine(tables)
        return equal_average(tables)


# --- the client task ------------------------------------------------------------------------


def q_learning(job: TaskJob) -> TaskResult:
    """Local Q-learning from the global table (FedSynQ / FedAsynQ): ``local_steps`` steps.

    Replies with the local table ``q`` and the round's visit ``counts`` (every entry
    ``local_steps`` times under generative sampling).
    """
    from flower_qlearn.agent import initial_state
    from flower_qlearn.kernel_drivers import run_async_q, run_sync_q
    from flower_qlearn.step_sizes import round_learning_rate

    c, env, q = job.settings["client"], job.env, job.q
    steps, gamma = int(c["local_steps"]), env.mdp.gamma
    lr = round_learning_rate(c, job.server_round)  # client.learning_rate unless two_phase
    if c["sampling"] == "generative":
        run_sync_q(q, env.mdp.R, gamma, lr, env.p_cdf, steps, job.rng)
        counts = np.full(q.shape, steps, dtype=np.int64)
    else:
        counts = np.zeros(q.shape, dtype=np.int64)
        state = job.state.get("state")
        if state is None:
            state = initial_state(env, job.settings["seed"], job.agent)
        job.state["state"] = run_async_q(
            q, counts, env.mdp.R, gamma, lr, env.p_cdf, env.pi_cdf, int(state), steps, job.rng
        )
    return {Q: q, COUNTS: counts}, {NUM_SAMPLES: steps}


Q_LEARNING = ClientTask(EqualAveraging.task, q_learning)


def q_learning_config(settings: Mapping[str, Any]) -> ConfigRecord:
    """The instruction's config of the ``q_learning`` task: the client's whole task."""
    return ConfigRecord(task_keys(settings, Q_LEARNING.name))


def build(settings: Mapping[str, Any], mdp) -> Plan:
    """``strategy=equal`` from the composed settings."""
    strategy = EqualAveraging(
        mdp.num_states,
        mdp.num_actions,
        robust=Robust.from_settings(settings["strategy"]),
        **common_args(settings, mdp),
    )
    return Plan(strategy, q_learning_config(settings), int(settings["num_rounds"]))


SPEC = register(StrategySpec("equal", build, Q_LEARNING, rules=(*ROBUST_RULES, *SYNC_CONSTANT)))
