"""Flower strategies for federated tabular Q-learning.

Each strategy is a thin Flower class (`QTableStrategy`: messaging, reply validation,
metrics) around a pure NumPy aggregation function that is unit-testable without Flower.
"""

from strategies.average_reward import AverageRewardQ, CommRound, EpochSchedule
from strategies.base import QTableStrategy
from strategies.dasa import (
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
from strategies.delays import DELAY_MODELS, DelayModel
from strategies.equal import EqualAveraging, equal_average
from strategies.importance import ImportanceAveraging, importance_average, importance_weights
from strategies.validation import (
    ArraySpec,
    ClientUpdate,
    InvalidReply,
    parse_reply,
    split_replies,
)

__all__ = [
    "DASA",
    "DELAY_MODELS",
    "DelayBuffer",
    "DelayModel",
    "Operator",
    "aggregate_step",
    "asynchronous_iterations",
    "dasa_step",
    "delay_errors",
    "delayed_step",
    "nondelayed_step",
    "select_agents",
    "ArraySpec",
    "AverageRewardQ",
    "CommRound",
    "EpochSchedule",
    "ClientUpdate",
    "EqualAveraging",
    "ImportanceAveraging",
    "InvalidReply",
    "QTableStrategy",
    "equal_average",
    "importance_average",
    "importance_weights",
    "parse_reply",
    "split_replies",
]
