"""DASA: delay-adaptive multi-agent stochastic approximation (Dal Fabbro et al., CDC 2024).

:mod:`.rule` (the pure rule), :mod:`.buffer` (the server's bounded memory), :mod:`.strategy`
(the Flower strategy), :mod:`.spec` (its client task, config rules and builder) and
:mod:`.asynchronous` (the real-asynchrony server loop).
"""

from .asynchronous import asynchronous_iterations
from .buffer import DelayBuffer
from .rule import (
    NORMS,
    RULES,
    Operator,
    Step,
    aggregate_step,
    dasa_step,
    delay_errors,
    delayed_step,
    nondelayed_step,
    select_agents,
)
from .spec import (
    OPERATORS,
    Q_OPERATOR,
    TD_OPERATOR,
    build,
    operator_bound,
    q_operator,
    step_size_of,
    td_ground_truth,
    td_operator,
)
from .strategy import DASA, EXECUTIONS

__all__ = [
    "DASA",
    "EXECUTIONS",
    "NORMS",
    "OPERATORS",
    "Q_OPERATOR",
    "TD_OPERATOR",
    "RULES",
    "DelayBuffer",
    "Operator",
    "Step",
    "aggregate_step",
    "build",
    "q_operator",
    "asynchronous_iterations",
    "dasa_step",
    "delay_errors",
    "delayed_step",
    "nondelayed_step",
    "operator_bound",
    "select_agents",
    "step_size_of",
    "td_ground_truth",
    "td_operator",
]
