"""Federated Q-learning for average-reward MDPs (Jiao, Woo, Li, Joshi, Chi, arXiv 2601.13642).

:mod:`.schedule` (the epoch schedule, pure arithmetic) and :mod:`.strategy` (the Flower
strategy, its client task, config rules and builder).
"""

from .schedule import MAX_ROUNDS, SCHEDULES, CommRound, EpochSchedule
from .strategy import (
    AVERAGE_REWARD,
    MAX_GEOMETRIC_EPOCHS,
    PERIOD_EPOCH,
    PERIOD_GAMMA,
    PERIOD_STEP_OFFSET,
    PERIOD_STEP_SIZES,
    AverageRewardQ,
    average_reward,
    build,
    require_constant_gain,
)

__all__ = [
    "AVERAGE_REWARD",
    "MAX_GEOMETRIC_EPOCHS",
    "MAX_ROUNDS",
    "PERIOD_EPOCH",
    "PERIOD_GAMMA",
    "PERIOD_STEP_OFFSET",
    "PERIOD_STEP_SIZES",
    "SCHEDULES",
    "AverageRewardQ",
    "CommRound",
    "EpochSchedule",
    "average_reward",
    "build",
    "require_constant_gain",
]
