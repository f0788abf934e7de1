"""DASA's server memory: replies in flight, each agent's freshest operator, past iterates."""

from __future__ import annotations

import numpy as np

from .rule import Operator


class DelayBuffer:
    """Replies in flight, each agent's freshest operator, and the past iterates still needed.

    Memory stays bounded by ``max_staleness``: an operator computed more than ``max_staleness``
    iterations ago is dropped (in flight or arrived), and an iterate is kept only while an
    operator in flight, an agent's freshest operator, or an instruction still being computed
    (real asynchrony) refers to it and it is at most ``max_staleness`` old. So at most
    ``max_staleness + 1`` iterates and ``N (max_staleness + 1)`` operators are ever held.

    Parameters
    ----------
    max_staleness : int
        Largest ``t - computed_at`` an operator may have and still be used.
    """

    def __init__(self, max_staleness: int) -> None:
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.max_staleness = int(max_staleness)
        self.in_flight: dict[int, list[tuple[int, Operator]]] = {}  # arrival -> [(agent, op)]
        self.freshest: dict[int, Operator] = {}  # agent -> operator
        self.iterates: dict[int, np.ndarray] = {}  # iteration -> theta
        self.computing: dict[int, int] = {}  # node id -> iteration it was sent (async mode)

    def remember(self, t: int, theta: np.ndarray) -> None:
        """Keep ``theta_t`` (a copy) for the delay errors of operators computed at ``t``."""
        if t not in self.iterates:
            self.iterates[t] = np.array(theta, dtype=np.float64, copy=True)

    def too_old(self, computed_at: int, t: int) -> bool:
        """True if an operator computed at ``computed_at`` can no longer be used at ``t``."""
        return t - computed_at > self.max_staleness

    def hold(self, agent: int, op: Operator, arrival: int) -> bool:
        """Put an operator in flight until iteration ``arrival``.

        Returns False (and keeps nothing) if it would arrive too old to be used.
        """
        if self.too_old(op.computed_at, arrival):
            return False
        self.in_flight.setdefault(int(arrival), []).append((int(agent), op))
        return True

    def release(self, t: int) -> int:
        """Deliver everything due by ``t``; an agent keeps its freshest. Returns how many arrived.

        An operator that arrives after a fresher one of the same agent (out-of-order delays)
        counts as arrived but replaces nothing.
        """
        arrived = 0
        for arrival in sorted(a for a in self.in_flight if a <= t):
            for agent, op in self.in_flight.pop(arrival):
                arrived += 1
                current = self.freshest.get(agent)
                if current is None or op.computed_at > current.computed_at:
                    self.freshest[agent] = op
        return arrived

    def expire(self, t: int) -> int:
        """Drop operators (arrived or in flight) too old for ``t``; return how many."""
        dropped = 0
        for agent in [a for a, op in self.freshest.items() if self.too_old(op.computed_at, t)]:
            del self.freshest[agent]
            dropped += 1
        for arrival in list(self.in_flight):
            kept = [
                (a, op) for a, op in self.in_flight[arrival] if not self.too_old(op.computed_at, t)
            ]
            dropped += len(self.in_flight[arrival]) - len(kept)
            if kept:
                self.in_flight[arrival] = kept
            else:
                del self.in_flight[arrival]
        return dropped

    def prune(self, t: int) -> None:
        """Forget the iterates nothing can refer to any more (see the class docstring)."""
        needed = {op.computed_at for op in self.freshest.values()}
        needed.update(op.computed_at for ops in self.in_flight.values() for _, op in ops)
        needed.update(self.computing.values())
        needed = {k for k in needed if not self.too_old(k, t)}
        for k in [k for k in self.iterates if k not in needed and k != t]:
            del self.iterates[k]

    @property
    def num_in_flight(self) -> int:
        """Operators computed but not yet arrived."""
        return sum(len(ops) for ops in self.in_flight.values())

    def state_dict(self) -> dict:
        """Plain Python + NumPy copy of the buffer (for checkpoints)."""

        def op(o: Operator) -> dict:
            return {"computed_at": o.computed_at, "g": o.g.copy()}

        return {
            "max_staleness": self.max_staleness,
            "in_flight": {
                k: [(agent, op(o)) for agent, o in ops] for k, ops in self.in_flight.items()
            },
            "freshest": {agent: op(o) for agent, o in self.freshest.items()},
            "iterates": {k: v.copy() for k, v in self.iterates.items()},
            "computing": dict(self.computing),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

        def op(d: dict) -> Operator:
            return Operator(int(d["computed_at"]), np.asarray(d["g"], dtype=np.float64))

        self.max_staleness = int(state["max_staleness"])
        self.in_flight = {
            int(k): [(int(agent), op(o)) for agent, o in ops]
            for k, ops in state["in_flight"].items()
        }
        self.freshest = {int(agent): op(o) for agent, o in state["freshest"].items()}
        self.iterates = {
            int(k): np.asarray(v, dtype=np.float64) for k, v in state["iterates"].items()
        }
        self.computing = {int(k): int(v) for k, v in state.get("computing", {}).items()}

