"""Flower strategies for federated tabular Q-learning, usable in any Flower app.

One module per strategy, each with its pure aggregation math, its thin Flower class, its config
rules, its builder and its client task, registered in :mod:`.registry`:

- :mod:`.equal`: FedSynQ / FedAsynQ-EqAvg (`equal_average`, `EqualAveraging`);
- :mod:`.importance`: FedAsynQ-ImAvg (`importance_weights`, `importance_average`,
  `ImportanceAveraging`);
- :mod:`.average_reward`: federated average-reward Q-learning (`EpochSchedule`,
  `AverageRewardQ`);
- :mod:`.dasa`: delay-adaptive aggregation (`dasa_step`, `DASA`, `asynchronous_iterations`).

Shared: :mod:`.base` (the Flower layer), :mod:`.validation` (reply checks), :mod:`.protocol`
(every wire name), :mod:`.delays` (DASA's simulated delays).
"""

from .average_reward import AverageRewardQ, CommRound, EpochSchedule
from .base import AveragingStrategy, QTableStrategy
from .dasa import (
    DASA,
    DelayBuffer,
    Operator,
    aggregate_step,
    asynchronous_iterations,
    dasa_step,
    delay_errors,
    delayed_step,
    nondelayed_step,
    select_agents,
)
from .delays import DELAY_MODELS, DelayModel
from .equal import EqualAveraging, equal_average
from .importance import ImportanceAveraging, importance_average, importance_weights
from .registry import STRATEGIES, TASKS, ClientTask, Plan, StrategySpec, register
from .validation import (
    ArraySpec,
    ClientUpdate,
    InvalidReply,
    parse_reply,
    split_replies,
)

__all__ = [
    "DASA",
    "DELAY_MODELS",
    "STRATEGIES",
    "TASKS",
    "ArraySpec",
    "AverageRewardQ",
    "AveragingStrategy",
    "ClientTask",
    "ClientUpdate",
    "CommRound",
    "DelayBuffer",
    "DelayModel",
    "EpochSchedule",
    "EqualAveraging",
    "ImportanceAveraging",
    "InvalidReply",
    "Operator",
    "Plan",
    "QTableStrategy",
    "StrategySpec",
    "aggregate_step",
    "asynchronous_iterations",
    "dasa_step",
    "delay_errors",
    "delayed_step",
    "equal_average",
    "importance_average",
    "importance_weights",
    "nondelayed_step",
    "parse_reply",
    "register",
    "select_agents",
    "split_replies",
]
