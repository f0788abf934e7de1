"""Adaptive synchronization: the server decides each round's local period (``client.sync``).

After "Adaptive Federated Q-Learning with Importance Averaging: Near-Optimal Sample Complexity
and K-Independent Communication" (OpenReview wLhQMbyF3y), whose exact rule was not recovered.
Our reconstruction (``docs/ALGORITHMS.md``, section "Adaptive synchronization"), ``doubling``:

- the run is split into stages ``j = 0, 1, ...``; every round of stage ``j`` runs
  ``tau_j = min(tau_0 * 2^j, tau_max)`` local steps, ``tau_0 = client.local_steps`` and
  ``tau_max = client.sync_max_steps``;
- the server adds up the visit counts of the valid replies of the stage's rounds,
  ``C_j(s, a) = sum_r sum_k N_k^r(s, a)`` (the importance-averaging replies carry them);
- stage ``j`` ends after the first round at which ``min_{s,a} C_j(s, a) >= V``
  (``V = client.sync_visits``): the next round starts stage ``j + 1`` with ``C`` reset;
- ``doubling`` keeps the step size ``eta_0 = client.learning_rate``; ``doubling_halving``
  halves it with every doubling, ``eta_j = eta_0 tau_0 / tau_j`` (``eta_j tau_j`` constant),
  and the server sends it too (the importance weights of a round use that round's ``eta_j``).

``constant`` (the default) keeps ``client.local_steps`` every round and sends nothing new. The
period reaches the clients as the instruction's ``client.local_steps``
(:data:`~.protocol.LOCAL_STEPS`), so any ClientApp that runs the ``q_learning`` task follows
the server's schedule without knowing about it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from flower_qlearn.schema import Rule, get, int_at_least, never, one_of, options

from .protocol import LEARNING_RATE, LOCAL_STEPS

#: ``client.sync`` options.
SYNC_SCHEDULES = ("constant", "doubling", "doubling_halving")
#: Round metrics of an adaptive schedule: the round's local period and its stage.
SYNC_METRICS = ("local_steps", "sync_stage", "learning_rate")


def doubling_period(initial_steps: int, stage: int, max_steps: int) -> int:
    """``tau_j = min(tau_0 * 2^j, tau_max)``: the local period of stage ``stage``."""
    if initial_steps < 1 or stage < 0 or max_steps < initial_steps:
        raise ValueError(
            f"need initial_steps >= 1, stage >= 0, max_steps >= initial_steps; got "
            f"{initial_steps}, {stage}, {max_steps}"
        )
    return min(initial_steps << min(stage, 62), max_steps)


def stage_complete(stage_counts: np.ndarray, visits: int) -> bool:
    """True once every ``(s, a)`` has at least ``visits`` collective visits in the stage."""
    return bool(np.min(stage_counts) >= visits)


class SyncSchedule:
    """The server's communication schedule: each round's local period, from the replies' counts.

    Parameters
    ----------
    kind : {"constant", "doubling", "doubling_halving"}
        See the module docstring.
    initial_steps : int
        ``tau_0``, the period of the first stage (``client.local_steps``).
    visits : int, default 1
        ``V``, collective visits every ``(s, a)`` needs before a stage ends (doubling).
    max_steps : int, optional
        ``tau_max``, the largest period (doubling; default: no cap in practice).
    initial_lr : float, optional
        ``eta_0``, the clients' step size (``client.learning_rate``).
    """

    def __init__(
        self,
        kind: str,
        initial_steps: int,
        visits: int = 1,
        max_steps: int | None = None,
        initial_lr: float | None = None,
    ) -> None:
        if kind not in SYNC_SCHEDULES:
            raise ValueError(f"sync={kind!r}; expected one of {', '.join(SYNC_SCHEDULES)}")
        if visits < 1:
            raise ValueError(f"visits must be >= 1, got {visits}")
        self.kind = kind
        self.initial_steps = int(initial_steps)
        self.visits = int(visits)
        self.max_steps = int(max_steps) if max_steps is not None else self.initial_steps << 40
        doubling_period(self.initial_steps, 0, self.max_steps)  # checks the arguments
        self.halve_lr = kind == "doubling_halving"
        if self.halve_lr and initial_lr is None:
            raise ValueError("doubling_halving needs initial_lr")
        self.initial_lr = None if initial_lr is None else float(initial_lr)
        self.stage = 0
        self.stage_counts: np.ndarray | None = None

    @classmethod
    def from_settings(cls, client: Mapping[str, Any]) -> SyncSchedule:
        """The schedule of the ``client`` settings (``sync``, ``local_steps``, ``sync_*``)."""
        kind = str(client.get("sync", "constant"))
        if kind == "constant":
            return cls(kind, int(client["local_steps"]))
        return cls(kind, int(client["local_steps"]), int(client["sync_visits"]),
                   int(client["sync_max_steps"]), float(client["learning_rate"]))

    @property
    def adaptive(self) -> bool:
        """False for ``constant``: the instruction and the metrics stay as they always were."""
        return self.kind != "constant"

    @property
    def local_steps(self) -> int:
        """The local period of the next round."""
        if not self.adaptive:
            return self.initial_steps
        return doubling_period(self.initial_steps, self.stage, self.max_steps)

    @property
    def learning_rate(self) -> float | None:
        """The step size of the next round (None: the schedule does not set it)."""
        if not self.halve_lr:
            return self.initial_lr
        return self.initial_lr * self.initial_steps / self.local_steps

    def observe(self, counts: np.ndarray) -> None:
        """Add one aggregated round's collective counts ``sum_k N_k(s, a)``; maybe end the stage."""
        if not self.adaptive:
            return
        counts = np.asarray(counts, dtype=np.int64)
        if self.stage_counts is not None:
            counts = self.stage_counts + counts
        self.stage_counts = counts
        if stage_complete(self.stage_counts, self.visits):
            self.stage += 1
            self.stage_counts = None

    def parameters(self) -> dict[str, object]:
        """For the strategy's `summary`."""
        if not self.adaptive:
            return {"sync": self.kind}
        return {"sync": self.kind, "sync_visits": self.visits, "sync_max_steps": self.max_steps}


class AdaptiveSync:
    """Strategy mixin (put it before the strategy's base class): the schedule's period goes
    into every instruction, and its period and stage into the round's metrics.

    The strategy sets ``self.sync`` (a :class:`SyncSchedule`) and calls ``self.sync.observe``
    with the collective counts of the rounds it aggregates.
    """

    sync: SyncSchedule

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The base instruction, with ``client.local_steps`` set to this round's period."""
        if self.sync.adaptive:
            period = {LOCAL_STEPS: self.sync.local_steps}
            if self.sync.halve_lr:
                period[LEARNING_RATE] = self.sync.learning_rate
            config = ConfigRecord({**dict(config), **period})
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord]:
        """The base aggregation, plus the round's period, stage and step size when adaptive."""
        values = (self.sync.local_steps, self.sync.stage, self.sync.learning_rate)
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if self.sync.adaptive:
            for name, value in zip(SYNC_METRICS, values, strict=True):
                metrics[name] = value
        return arrays, metrics


def _doubling(s: Mapping) -> bool:
    return get(s, "client.sync") in SYNC_SCHEDULES[1:]


def _cap_below_period(s: Mapping) -> bool:
    cap, tau = get(s, "client.sync_max_steps"), get(s, "client.local_steps")
    return _doubling(s) and isinstance(cap, int) and isinstance(tau, int) and cap < tau


#: Config rules of the schedule (applied under the strategies that implement it).
RULES: tuple[Rule, ...] = (
    Rule("client.sync", one_of(SYNC_SCHEDULES), options(SYNC_SCHEDULES), optional=True),
    Rule("client.sync_visits", int_at_least(1), "an integer >= 1", when=_doubling),
    Rule("client.sync_max_steps", int_at_least(1), "an integer >= client.local_steps",
         when=_doubling),
    Rule("client.sync_max_steps", never, "an integer >= client.local_steps",
         when=_cap_below_period),
    Rule("resume", never,
         "null with an adaptive client.sync (the schedule's stage is not checkpointed)",
         when=lambda s: _doubling(s) and bool(s.get("resume"))),
    Rule("client.sync", never, "constant with engine=batched (adaptive sync: engine=inprocess)",
         when=lambda s: _doubling(s) and get(s, "engine.name") == "batched"),
)
#: For strategies that do not implement an adaptive schedule.
CONSTANT_ONLY: tuple[Rule, ...] = (
    Rule("client.sync", one_of(("constant",)),
         "constant (client.sync=doubling needs strategy=importance)", optional=True),
)
