"""The average-reward epoch schedule: pure arithmetic, no Flower (docs/ALGORITHMS.md 5).

Per epoch ``e``: the discount ``gamma_e``, the length ``T_e``, the communication set ``C_e`` and the
step sizes ``eta_{e,t}``, flattened into communication rounds (one Flower round each). The server
and the tests share it; clients never re-derive it, they receive their round's step sizes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

#: Schedule groups of docs/ALGORITHMS.md section 5 (8a/12a and 8b/12b).
SCHEDULES = ("geometric", "polynomial")

#: A schedule with more communication rounds than this is refused (it would never finish, and
#: the round table would not fit in memory).
MAX_ROUNDS = 1_000_000


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


