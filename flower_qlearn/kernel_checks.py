"""Argument checks of the kernel drivers: one-line ``ValueError``s before any compiled loop runs.

The compiled loops in :mod:`flower_qlearn.kernels` trust their input (no checks in the hot
path); the drivers call these first.
"""

from __future__ import annotations

import numpy as np


def in_place(array: np.ndarray, name: str, shape: tuple[int, ...], dtype: type) -> None:
    """Check an array the loops update in place: it cannot be silently converted."""
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.dtype != dtype or not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError(
            f"{name} must be a writeable C-contiguous {np.dtype(dtype).name} array "
            f"(it is updated in place), got dtype {array.dtype}"
        )
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")


def read_only(array: np.ndarray, name: str, shape: tuple[int, ...], check_finite: bool = True):
    """Convert an input the loops only read to a writeable float64 C-contiguous array.

    No copy when it already is one. A read-only array (e.g. a frozen MDP's reward) is copied:
    numba compiles a separate specialization per read-only flag, and one is enough.
    """
    array = np.ascontiguousarray(array, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    if check_finite and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    if not array.flags.writeable:
        array = array.copy()
    return array


def q_shape(q: np.ndarray, name: str) -> tuple[int, int]:
    if not isinstance(q, np.ndarray) or q.ndim != 2 or q.shape[0] < 1 or q.shape[1] < 1:
        raise ValueError(f"{name} must be a (S, A) array with S, A >= 1")
    return q.shape


def gamma(gamma: float) -> float:
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    return float(gamma)


def learning_rate(learning_rate: float) -> float:
    if not 0.0 < learning_rate <= 1.0:
        raise ValueError(f"learning_rate must be in (0, 1], got {learning_rate}")
    return float(learning_rate)


def count(value: int, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def state(state: int, num_states: int) -> int:
    if isinstance(state, bool) or int(state) != state or not 0 <= state < num_states:
        raise ValueError(f"state must be an integer in [0, {num_states}), got {state!r}")
    return int(state)


def cdf(cdf: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Check a cumulative table: catches passing probabilities instead of ``cumulative(P)``.

    Only the last entries are checked (O(S A)): a full scan of an ``(S, A, S)`` table every
    round would cost more than the round's local steps on large state spaces.
    """
    cdf = read_only(cdf, name, shape, check_finite=False)
    if np.any(cdf[..., -1] != 1.0):
        raise ValueError(
            f"{name} must be a cumulative table from sampling.cumulative (last entries exactly 1)"
        )
    return cdf




def next_state_table(p_table, shape: tuple[int, int]):
    """A :class:`~flower_qlearn.samplers.NextStateTable` for ``(S, A) = shape``.

    Accepts the table itself or a dense ``(S, A, S)`` cumulative table (checked as
    :func:`cdf`, then converted exactly).
    """
    from flower_qlearn.samplers import NextStateTable, as_next_state_table

    if isinstance(p_table, NextStateTable):
        if p_table.next.shape[:2] != shape or p_table.value.shape != p_table.next.shape:
            raise ValueError(
                f"p_cdf is a table of shape {p_table.next.shape[:2]}, expected {shape}"
            )
        return p_table
    return as_next_state_table(cdf(p_table, "p_cdf", (*shape, shape[0])))


def action_table(pi_table, shape: tuple[int, int], kind: int):
    """An :class:`~flower_qlearn.samplers.ActionTable` of ``kind`` for ``(S, A) = shape``."""
    from flower_qlearn.samplers import ActionTable, as_action_table

    if isinstance(pi_table, ActionTable):
        if pi_table.value.shape != shape:
            raise ValueError(f"pi_cdf has shape {pi_table.value.shape}, expected {shape}")
        table = pi_table
    else:
        table = as_action_table(cdf(pi_table, "pi_cdf", shape))
    if table.kind != kind:
        raise ValueError("p_cdf and pi_cdf must come from the same client.sampler")
    return table
