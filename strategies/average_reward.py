"""Federated Q-learning for average-reward MDPs: the server's epoch schedule and its strategy.

Jiao, Woo, Li, Joshi, Chi, "Federated Q-learning for average-reward MDPs" (arXiv 2601.13642),
as reconstructed in ``ALGORITHMS.md`` section 5. Values are normalized by ``(1 - gamma)`` so that
``(1 - gamma_e) V*_{gamma_e} -> rho*`` as the epoch discount ``gamma_e -> 1``. Epoch ``e`` runs
``T_e`` synchronous local steps per agent with the target ``(1 - gamma_e) r + gamma_e Vbar(s')``,
where ``Vbar = max_a Qbar`` is the global value of the last communication; at every step of the
communication set ``C_e`` the server averages the local tables with equal weights.

Two pieces, kept apart on purpose:

- :class:`EpochSchedule` is pure arithmetic (no Flower): per epoch ``gamma_e``, ``T_e``, ``C_e``
  and the step sizes ``eta_{e,t}``, flattened into communication rounds. Server and tests share
  it; clients never re-derive it, they receive their round's step sizes explicitly.
- :class:`AverageRewardQ` is the Flower strategy: one Flower round = one communication period.
  It sends the global table with ``gamma_e`` and the period's step sizes, and aggregates with
  :func:`strategies.equal.equal_average`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from strategies.base import QTableStrategy
from strategies.equal import equal_average
from strategies.validation import ClientUpdate

#: Schedule groups of ALGORITHMS.md section 5 (8a/12a and 8b/12b).
SCHEDULES = ("geometric", "polynomial")

#: A schedule with more communication rounds than this is refused (it would never finish, and
#: the round table would not fit in memory).
MAX_ROUNDS = 1_000_000

#: Local task name the clients dispatch on (``flower_qlearn.client_app.TASKS``).
TASK = "average_reward"


@dataclass(frozen=True)
class CommRound:
    """One communication period = one Flower round of the average-reward schedule.

    Attributes
    ----------
    round : int
        Flower server round, 1-based.
    epoch : int
        Epoch ``e`` (1-based) the period belongs to.
    gamma : float
        The epoch's discount ``gamma_e``.
    step_offset : int
        Local steps of epoch ``e`` done before this period; the period runs the steps
        ``t = step_offset + 1 .. step_offset + num_steps``.
    num_steps : int
        Local steps per agent in this period (>= 1).
    epoch_end : bool
        Whether this period ends at ``t = T_e`` (the last communication of the epoch).
    step_sizes : np.ndarray
        ``eta_{e,t}`` for the period's steps, shape ``(num_steps,)``, read-only.
    """

    round: int
    epoch: int
    gamma: float
    step_offset: int
    num_steps: int
    epoch_end: bool
    step_sizes: np.ndarray


class EpochSchedule:
    """The server's schedule: discount, epoch length, step sizes and communication set per epoch.

    ``geometric`` (8a/12a): ``1 - gamma_e = 2^-e``; ``T_e = ceil(c_T 8^e / K)``; rescaled-linear
    step ``eta_{e,t} = 1 / (1 + (1 - gamma_e) t / (c_eta K))``; communication every
    ``tau_e = max(1, floor(T_e / 2^e))`` steps and at ``T_e``.

    ``polynomial`` (8b/12b): ``1 - gamma_e = 1 / (e + 1)``; ``T_e = ceil(c_T (e + 1)^2 / K)``;
    constant step ``eta_e = min(1, c_eta log(T_e + 1) / T_e)``; communication only at ``T_e``.

    Parameters
    ----------
    kind : {"geometric", "polynomial"}
        Schedule group.
    num_epochs : int
        Number of epochs ``E >= 1``.
    num_clients : int
        Number of agents ``K >= 1`` (``K = 1`` is the single-agent Algorithm 1).
    c_T : float, default 1.0
        Epoch-length constant (> 0).
    c_eta : float, default 2.0
        Step-size constant (> 0). The paper's value was not recovered; 2 reproduces the
        sanity figures of ALGORITHMS.md (polynomial, 60 epochs, Garnet 10x3: gain error
        about 0.02 for K = 1, 4, 16), with 1 the error grows with K (0.021, 0.025, 0.031).

    Raises
    ------
    ValueError
        On an out-of-range parameter, or a schedule with more than :data:`MAX_ROUNDS` rounds.
    """

    def __init__(
        self,
        kind: str,
        num_epochs: int,
        num_clients: int,
        c_T: float = 1.0,
        c_eta: float = 2.0,
    ) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
        for name, value in (("num_epochs", num_epochs), ("num_clients", num_clients)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name, value in (("c_T", c_T), ("c_eta", c_eta)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.kind = kind
        self.num_epochs = int(num_epochs)
        self.num_clients = int(num_clients)
        self.c_T = float(c_T)
        self.c_eta = float(c_eta)

        total = sum(self._num_periods(e) for e in range(1, self.num_epochs + 1))
        if total > MAX_ROUNDS:
            raise ValueError(
                f"the {kind} schedule with num_epochs={num_epochs} has {total} communication "
                f"rounds (> {MAX_ROUNDS}); use fewer epochs"
            )
        # Round r -> (epoch, step offset, local steps). Step sizes are computed per round on
        # demand: a long geometric schedule has far more steps than rounds.
        self._table: list[tuple[int, int, int]] = []
        for e in range(1, self.num_epochs + 1):
            previous = 0
            for t in self.communication_steps(e):
                self._table.append((e, previous, int(t) - previous))
                previous = int(t)

    # --- per-epoch quantities ------------------------------------------------------------
    def _check_epoch(self, epoch: int) -> int:
        if isinstance(epoch, bool) or int(epoch) != epoch or not 1 <= epoch <= self.num_epochs:
            raise ValueError(f"epoch must be an integer in [1, {self.num_epochs}], got {epoch!r}")
        return int(epoch)

    def one_minus_gamma(self, epoch: int) -> float:
        """``1 - gamma_e``: ``2^-e`` (geometric) or ``1 / (e + 1)`` (polynomial)."""
        e = self._check_epoch(epoch)
        return 2.0**-e if self.kind == "geometric" else 1.0 / (e + 1)

    def gamma(self, epoch: int) -> float:
        """The epoch's discount ``gamma_e``."""
        return 1.0 - self.one_minus_gamma(epoch)

    def epoch_length(self, epoch: int) -> int:
        """``T_e``, local steps per agent in epoch ``e``: ``ceil(c_T 8^e / K)`` or
        ``ceil(c_T (e + 1)^2 / K)``.

        Computed in exact rational arithmetic so that e.g. ``c_T = 1, K = 4`` never rounds a
        whole number up by one.
        """
        e = self._check_epoch(epoch)
        growth = 8**e if self.kind == "geometric" else (e + 1) ** 2
        return max(1, math.ceil(Fraction(self.c_T) * growth / self.num_clients))

    def sync_interval(self, epoch: int) -> int:
        """``tau_e``: local steps between communications (the last period may be shorter).

        Geometric: ``max(1, floor(T_e / 2^e))``. Polynomial: ``T_e`` (communicate at the end).
        """
        length = self.epoch_length(epoch)
        if self.kind == "polynomial":
            return length
        return max(1, length // 2 ** int(epoch))

    def _num_periods(self, epoch: int) -> int:
        return -(-self.epoch_length(epoch) // self.sync_interval(epoch))

    def communication_steps(self, epoch: int) -> np.ndarray:
        """``C_e``, sorted: the steps ``t`` after which the server averages (always has ``T_e``)."""
        length = self.epoch_length(epoch)
        tau = self.sync_interval(epoch)
        steps = np.arange(tau, length + 1, tau, dtype=np.int64)
        if steps.size == 0 or steps[-1] != length:
            steps = np.append(steps, np.int64(length))
        return steps

    def step_sizes(self, epoch: int, steps: Iterable[int] | np.ndarray) -> np.ndarray:
        """``eta_{e,t}`` for the given local steps ``t`` (1-based, in ``[1, T_e]``) of epoch ``e``.

        Geometric: ``1 / (1 + (1 - gamma_e) t / (c_eta K))``.
        Polynomial: ``min(1, c_eta log(T_e + 1) / T_e)`` for every ``t``.
        """
        e = self._check_epoch(epoch)
        t = np.asarray(steps, dtype=np.float64)
        length = self.epoch_length(e)
        if t.size and (t.min() < 1 or t.max() > length):
            raise ValueError(f"steps must be in [1, T_e={length}] for epoch {e}")
        if self.kind == "geometric":
            return 1.0 / (1.0 + self.one_minus_gamma(e) * t / (self.c_eta * self.num_clients))
        eta = min(1.0, self.c_eta * math.log(length + 1) / length)
        return np.full(t.shape, eta)

    # --- the flattened round table --------------------------------------------------------
    @property
    def num_rounds(self) -> int:
        """Total communication rounds ``sum_e |C_e|`` (= Flower rounds of the run)."""
        return len(self._table)

    @property
    def total_steps(self) -> int:
        """Local steps per agent over the whole schedule ``sum_e T_e`` (samples per agent)."""
        return sum(self.epoch_length(e) for e in range(1, self.num_epochs + 1))

    def period(self, server_round: int) -> CommRound:
        """The communication period of Flower round ``server_round`` (1-based)."""
        if (
            isinstance(server_round, bool)
            or int(server_round) != server_round
            or not 1 <= server_round <= self.num_rounds
        ):
            raise ValueError(
                f"server_round must be an integer in [1, {self.num_rounds}], got {server_round!r}"
            )
        epoch, offset, num_steps = self._table[int(server_round) - 1]
        etas = self.step_sizes(epoch, np.arange(offset + 1, offset + num_steps + 1))
        etas.setflags(write=False)
        return CommRound(
            round=int(server_round),
            epoch=epoch,
            gamma=self.gamma(epoch),
            step_offset=offset,
            num_steps=num_steps,
            epoch_end=offset + num_steps == self.epoch_length(epoch),
            step_sizes=etas,
        )

    def __iter__(self) -> Iterator[CommRound]:
        """Every communication period in order (step sizes computed one round at a time)."""
        return (self.period(r) for r in range(1, self.num_rounds + 1))

    def __len__(self) -> int:
        return self.num_rounds

    def parameters(self) -> dict[str, object]:
        """The constructor arguments (JSON-able): equal dicts mean identical schedules."""
        return {
            "schedule": self.kind,
            "num_epochs": self.num_epochs,
            "num_clients": self.num_clients,
            "c_T": self.c_T,
            "c_eta": self.c_eta,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.parameters().items())
        return f"EpochSchedule({args})"


class AverageRewardQ(QTableStrategy):
    """Flower strategy for federated average-reward Q-learning (ALGORITHMS.md section 5).

    Each Flower round is one communication period of the :class:`EpochSchedule`. The
    instruction carries the global normalized table ``Qbar`` (ArrayRecord ``"q"``) and a
    ConfigRecord with ``task="average_reward"``, ``gamma`` (``gamma_e``), ``epoch``,
    ``step_offset``, ``local_steps`` and ``step_sizes`` (the period's ``eta_{e,t}`` as a list,
    so clients never re-derive the schedule). Each client warm-starts from ``Qbar``, freezes
    ``Vbar = max_a Qbar`` and runs ``local_steps`` synchronous steps; the server sets the new
    ``Qbar`` to the equal average of the replies.

    Round metrics added to the base ones: ``gamma``, ``epoch``, ``epoch_end`` (1 on the
    epoch's last communication) and ``num_samples`` (local steps per agent this round).

    Parameters
    ----------
    num_states, num_actions : int
        Q-table shape.
    schedule : EpochSchedule
        The epoch schedule; its ``num_rounds`` is the number of Flower rounds to run.
    min_replies : int, default 1
        See `QTableStrategy`.
    value_bound : float, default ``1 + 1e-6``
        Normalized iterates are convex combinations of values in ``[0, 1]`` (rewards in
        ``[0, 1]``, step sizes in ``(0, 1]``), so a reply outside is corrupt.
    """

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        schedule: EpochSchedule,
        *,
        value_bound: float | None = 1.0 + 1e-6,
        **kwargs,
    ) -> None:
        """``kwargs``: `QTableStrategy`'s other keyword arguments (min_replies, ...)."""
        super().__init__(num_states, num_actions, value_bound=value_bound, **kwargs)
        if not isinstance(schedule, EpochSchedule):
            raise TypeError(f"schedule must be an EpochSchedule, got {type(schedule).__name__}")
        self.schedule = schedule

    def parameters(self) -> dict[str, object]:
        """Constructor parameters and the schedule's, for `summary`."""
        return {
            **super().parameters(),
            **self.schedule.parameters(),
            "num_rounds": self.schedule.num_rounds,
        }

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Send ``Qbar`` and this period's ``gamma_e`` and step sizes to every node."""
        period = self.schedule.period(server_round)
        train_config = ConfigRecord(dict(config))
        train_config["task"] = TASK
        train_config["gamma"] = period.gamma
        train_config["epoch"] = period.epoch
        train_config["step_offset"] = period.step_offset
        train_config["local_steps"] = period.num_steps
        train_config["step_sizes"] = [float(eta) for eta in period.step_sizes]
        # Only the table goes down: anything else a caller put in `arrays` is not for clients.
        return super().configure_train(
            server_round, ArrayRecord({"q": arrays["q"]}), train_config, grid
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord]:
        """Equal-average the valid replies; add the schedule's metrics of this round."""
        arrays, metrics = super().aggregate_train(server_round, replies)
        period = self.schedule.period(server_round)
        metrics["gamma"] = period.gamma
        metrics["epoch"] = period.epoch
        metrics["epoch_end"] = int(period.epoch_end)
        # Per-agent samples come from the schedule, not from what clients claim; a round in
        # which no reply was usable adds none.
        metrics["num_samples"] = period.num_steps if int(metrics["accepted"]) > 0 else 0
        return arrays, metrics

    def aggregate(self, updates: list[ClientUpdate]) -> np.ndarray:
        """``Qbar = (1/K) sum_k Q_k`` over the valid replies (:func:`equal_average`)."""
        return equal_average(np.stack([update.arrays["q"] for update in updates]))

    # --- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        """JSON-able state for a checkpoint: the schedule parameters and the rejection log.

        The global table is the server loop's to save; the schedule is a pure function of
        its parameters, so a resumed run continues at round ``r + 1`` with the same periods.
        """
        return {
            "schedule": self.schedule.parameters(),
            "rejections": [[int(r), int(node), str(reason)] for r, node, reason in self.rejections],
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict` output; refuse a checkpoint of a different schedule."""
        saved = dict(state["schedule"])  # type: ignore[arg-type]
        if saved != self.schedule.parameters():
            raise ValueError(
                f"checkpoint schedule {saved} differs from this run's {self.schedule.parameters()}"
            )
        self.rejections = [
            (int(r), int(node), str(reason))
            for r, node, reason in state.get("rejections", [])  # type: ignore[union-attr]
        ]
