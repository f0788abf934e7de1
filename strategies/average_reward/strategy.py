"""Federated Q-learning for average-reward MDPs: the server's epoch schedule and its strategy.

Jiao, Woo, Li, Joshi, Chi, "Federated Q-learning for average-reward MDPs" (arXiv 2601.13642),
as reconstructed in ``docs/ALGORITHMS.md`` section 5. Values are normalized by ``(1 - gamma)``
so that ``(1 - gamma_e) V*_{gamma_e} -> rho*`` as the epoch discount ``gamma_e -> 1``. Epoch
``e`` runs ``T_e`` synchronous local steps per agent with the target
``(1 - gamma_e) r + gamma_e Vbar(s')``, where ``Vbar = max_a Qbar`` is the global value of the
last communication; at every step of the communication set ``C_e`` the server averages the local
tables with equal weights.

Two pieces, kept apart on purpose:

- :class:`EpochSchedule` is pure arithmetic (no Flower): per epoch ``gamma_e``, ``T_e``, ``C_e``
  and the step sizes ``eta_{e,t}``, flattened into communication rounds. Server and tests share
  it; clients never re-derive it, they receive their round's step sizes explicitly.
- :class:`AverageRewardQ` is the Flower strategy: one Flower round = one communication period.
  It sends the global table with ``gamma_e`` and the period's step sizes, and aggregates with
  :func:`flower_qlearn.strategies.equal.equal_average`.

The module also holds the strategy's config rules, its builder and its client task
(``average_reward``: synchronous steps with the normalized target and a frozen ``Vbar``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from flower_qlearn.schema import Rule, in_interval, int_at_least, one_of, options, positive

from ..base import AveragingStrategy, common_args
from ..equal import equal_average
from ..protocol import NUM_SAMPLES, TASK, Q, task_keys
from ..registry import ClientTask, Plan, StrategySpec, TaskJob, TaskResult, register
from ..robust import ROBUST_RULES, Robust
from ..validation import ClientUpdate
from .schedule import MAX_ROUNDS, SCHEDULES, CommRound, EpochSchedule  # noqa: F401

#: Largest |Qbar| a reply may carry: normalized values lie in [0, 1] (plus rounding slack).
NORMALIZED_VALUE_BOUND = 1.0 + 1e-6
#: Geometric epochs grow as 8^e local steps: beyond this the run cannot finish.
MAX_GEOMETRIC_EPOCHS = 12

#: The instruction's round keys of the ``average_reward`` task (one communication period).
PERIOD_GAMMA = "period.gamma"  # the epoch's discount gamma_e
PERIOD_EPOCH = "period.epoch"
PERIOD_STEP_OFFSET = "period.step_offset"  # local steps of the epoch before this period
PERIOD_STEP_SIZES = "period.step_sizes"  # eta_{e,t} of the period's steps, one per local step


class AverageRewardQ(AveragingStrategy):
    """Flower strategy for federated average-reward Q-learning (docs/ALGORITHMS.md section 5).

    Each Flower round is one communication period of the :class:`EpochSchedule`. The
    instruction carries the global normalized table ``Qbar`` (ArrayRecord ``"q"``) and a
    ConfigRecord with ``task="average_reward"``, ``period.gamma`` (``gamma_e``),
    ``period.epoch``, ``period.step_offset`` and ``period.step_sizes`` (the period's
    ``eta_{e,t}`` as a list, one per local step, so clients never re-derive the schedule).
    Each client warm-starts from ``Qbar``, freezes
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
    robust : Robust, optional
        Default ``none`` (the equal average); else a per-entry trimmed mean or median.
    """

    task = "average_reward"

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        schedule: EpochSchedule,
        *,
        value_bound: float | None = NORMALIZED_VALUE_BOUND,
        robust: Robust | None = None,
        **kwargs,
    ) -> None:
        """``kwargs``: `QTableStrategy`'s other keyword arguments (min_replies, ...)."""
        super().__init__(num_states, num_actions, value_bound=value_bound, **kwargs)
        if not isinstance(schedule, EpochSchedule):
            raise TypeError(f"schedule must be an EpochSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.robust = robust or Robust()

    def parameters(self) -> dict[str, object]:
        """Constructor parameters and the schedule's, for `summary`."""
        return {
            **super().parameters(),
            **self.schedule.parameters(),
            "num_rounds": self.schedule.num_rounds,
            **self.robust.parameters(),
        }

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Send ``Qbar`` and this period's ``gamma_e`` and step sizes to every node."""
        period = self.schedule.period(server_round)
        train_config = ConfigRecord(dict(config))
        train_config[TASK] = self.task
        train_config[PERIOD_GAMMA] = period.gamma
        train_config[PERIOD_EPOCH] = period.epoch
        train_config[PERIOD_STEP_OFFSET] = period.step_offset
        train_config[PERIOD_STEP_SIZES] = [float(eta) for eta in period.step_sizes]
        # Only the table goes down: anything else a caller put in `arrays` is not for clients.
        return super().configure_train(
            server_round, ArrayRecord({Q: arrays[Q]}), train_config, grid
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
        metrics[NUM_SAMPLES] = period.num_steps if int(metrics["accepted"]) > 0 else 0
        return arrays, metrics

    def aggregate(self, updates: list[ClientUpdate]) -> np.ndarray:
        """``Qbar = (1/K) sum_k Q_k`` over the valid replies (:func:`equal_average`), or its
        robust variant (``strategy.robust``)."""
        tables = np.stack([update.arrays[Q] for update in updates])
        if self.robust.active:
            return self.robust.combine(tables)
        return equal_average(tables)

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


# --- the client task ------------------------------------------------------------------------


def average_reward(job: TaskJob) -> TaskResult:
    """One communication period of federated average-reward Q-learning (docs/ALGORITHMS.md 5).

    Warm start from the received ``Qbar``; the targets ``(1 - gamma_e) r + gamma_e Vbar(s')``
    use ``Vbar = max_a Qbar`` frozen for the whole period; synchronous (generative) sampling
    over every ``(s, a)``; the step sizes are the server's, never re-derived.
    """
    from flower_qlearn.kernel_drivers import run_average_reward

    step_sizes = np.asarray(job.settings[PERIOD_STEP_SIZES], dtype=np.float64)
    v_frozen = job.q.max(axis=1)  # a new array: q is updated in place below
    gamma = float(job.settings[PERIOD_GAMMA])
    run_average_reward(job.q, job.env.mdp.R, gamma, v_frozen, step_sizes, job.env.p_cdf, job.rng)
    return {Q: job.q}, {NUM_SAMPLES: int(step_sizes.shape[0])}


def _step_sizes(v: Any) -> bool:
    return (
        isinstance(v, list | tuple)
        and len(v) >= 1
        and all(in_interval(0, 1, lo_open=True)(x) for x in v)
    )


AVERAGE_REWARD = ClientTask(
    AverageRewardQ.task,
    average_reward,
    round_rules=(
        Rule(PERIOD_GAMMA, in_interval(0, 1, hi_open=True), "a number in [0, 1)"),
        Rule(PERIOD_EPOCH, int_at_least(1), "an integer >= 1", optional=True),
        Rule(PERIOD_STEP_OFFSET, int_at_least(0), "an integer >= 0", optional=True),
        Rule(PERIOD_STEP_SIZES, _step_sizes, "a non-empty list of numbers in (0, 1]"),
    ),
)


# --- config rules and builder ---------------------------------------------------------------


def require_constant_gain(mdp) -> None:
    """Raise ``NonConstantGainError`` (one line) unless ``mdp``'s optimal gain is the same in
    every state: the algorithm estimates one scalar gain, so it refuses multichain MDPs."""
    from flower_qlearn.solvers import NonConstantGainError, optimal_gain

    try:
        optimal_gain(mdp)
    except NonConstantGainError as exc:
        raise NonConstantGainError(
            f"invalid config: strategy=average_reward needs an MDP whose optimal gain is the "
            f"same in every state, but on {mdp.name}: {exc}"
        ) from None


@functools.lru_cache(maxsize=64)
def _constant_gain_cached(mdp_items: tuple) -> bool:
    from flower_qlearn.mdp_catalog import make_mdp
    from flower_qlearn.solvers import NonConstantGainError

    try:
        require_constant_gain(make_mdp(**dict(mdp_items)))
    except NonConstantGainError:
        return False
    except Exception:  # noqa: BLE001 - an unbuildable MDP is reported by its own rule or run
        return True
    return True


def _constant_optimal_gain(mdp_settings: Any) -> bool:
    """True unless the configured MDP provably has a non-constant optimal gain (multichain)."""
    if not isinstance(mdp_settings, Mapping):
        return False
    return _constant_gain_cached(tuple(sorted(mdp_settings.items())))


def _geometric(settings: Mapping) -> bool:
    return (settings.get("strategy") or {}).get("schedule") == "geometric"


RULES = (
    *ROBUST_RULES,
    Rule("strategy.schedule", one_of(SCHEDULES), options(SCHEDULES)),
    Rule("strategy.num_epochs", int_at_least(1), "an integer >= 1"),
    Rule(
        "strategy.num_epochs",
        lambda v: 1 <= v <= MAX_GEOMETRIC_EPOCHS,
        f"an integer in [1, {MAX_GEOMETRIC_EPOCHS}] for schedule=geometric "
        "(epoch e runs c_T 8^e / K local steps)",
        when=_geometric,
    ),
    Rule("strategy.c_T", positive, "a number > 0"),
    Rule("strategy.c_eta", positive, "a number > 0"),
    Rule(
        "mdp",
        _constant_optimal_gain,
        "an MDP whose optimal gain is the same in every state (strategy=average_reward "
        "refuses multichain MDPs)",
    ),
)


def build(settings: Mapping[str, Any], mdp) -> Plan:
    """``strategy=average_reward``: the epoch schedule decides the number of rounds.

    ``num_rounds`` is ignored (the schedule has ``sum_e |C_e|`` rounds). Normalized values live
    in ``[0, 1]``: the strategy keeps its own, tighter value bound. A multichain MDP is refused.
    """
    require_constant_gain(mdp)
    s = settings["strategy"]
    schedule = EpochSchedule(
        str(s["schedule"]),
        int(s["num_epochs"]),
        int(settings["num_clients"]),
        c_T=float(s["c_T"]),
        c_eta=float(s["c_eta"]),
    )
    args = common_args(settings, mdp)
    del args["value_bound"]
    strategy = AverageRewardQ(
        mdp.num_states, mdp.num_actions, schedule, robust=Robust.from_settings(s), **args
    )
    train_config = ConfigRecord(task_keys(settings, AVERAGE_REWARD.name))
    return Plan(strategy, train_config, schedule.num_rounds, objective="average_reward")


SPEC = register(StrategySpec("average_reward", build, AVERAGE_REWARD, rules=RULES))
