"""The local step size of a round: constant, or two-phase (Wang, Yang, Su, arXiv 2409.03897).

With heterogeneous environments and ``E > 1`` local steps per round, federated Q-learning at a
constant step size first falls fast, then bounces up to a plateau whose height grows with
``E``; the paper's remedy is a different step size once that phase transition is passed.
``client.lr_schedule=two_phase`` is that remedy as we reconstruct it: ``learning_rate`` until
the agent has made ``lr_switch_step`` local steps, ``lr_after`` from then on. The switch falls
on a round boundary (the first round that starts at or after ``lr_switch_step`` local steps),
so one round has one step size and the compiled kernels stay as they are. Pure arithmetic (the
core).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: ``client.lr_schedule`` options.
LR_SCHEDULES = ("constant", "two_phase")


def two_phase_step_size(
    learning_rate: float, lr_after: float, switch_step: int, steps_done: int
) -> float:
    """``learning_rate`` while ``steps_done < switch_step``, else ``lr_after``.

    Parameters
    ----------
    learning_rate, lr_after : float
        The step sizes of phase 1 and phase 2, in ``(0, 1]``.
    switch_step : int
        Local steps per agent after which phase 2 starts (``>= 0``).
    steps_done : int
        Local steps the agent made before this round.
    """
    return float(learning_rate) if steps_done < switch_step else float(lr_after)


def round_learning_rate(client: Mapping[str, Any], server_round: int) -> float:
    """The step size of round ``server_round`` (1-based) from the ``client`` settings.

    ``constant`` (the default) returns ``client.learning_rate`` itself. ``two_phase`` counts
    the local steps before the round as ``(server_round - 1) * client.local_steps`` (a
    constant period: the config refuses ``two_phase`` with an adaptive ``client.sync``).
    """
    schedule = client.get("lr_schedule", "constant")
    if schedule == "constant":
        return float(client["learning_rate"])
    if schedule != "two_phase":
        raise ValueError(f"client.lr_schedule={schedule!r}; expected one of {LR_SCHEDULES}")
    steps_done = (int(server_round) - 1) * int(client["local_steps"])
    return two_phase_step_size(
        client["learning_rate"], client["lr_after"], int(client["lr_switch_step"]), steps_done
    )
