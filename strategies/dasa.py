"""DASA: delay-adaptive aggregation of agents' operators whose uploads arrive late.

Dal Fabbro, Adibi, Poor, Kulkarni, Mitra, Pappas, "DASA: Delay-Adaptive Multi-Agent Stochastic
Approximation", CDC 2024 (ALGORITHMS.md section 6). At every server iteration ``t`` each agent
computes an operator ``g_i`` (here the batch Q-learning operator of its own Markov chain) at the
current iterate ``theta_t``; the upload reaches the server some iterations later. The server keeps
each agent's freshest arrived operator, computed at ``t - tau_i``, and

    e_i  = || theta_t - theta_{t - tau_i} ||          (delay error; +inf: nothing arrived yet)
    R_t  = the ceil(N/2) agents with the smallest e_i (ties: lower partition id first)
    m_t  = the agent of R_t with the largest e_i
    theta_{t+1} = theta_t + alpha * mean_{i in R_t} g_i   if e_{m_t} <= epsilon, else theta_t.

Choosing the better half by delay error, and skipping when even the median of that half is too
far from the present, keeps the stragglers' stale operators out while still averaging about N/2
fresh ones (the N-fold variance reduction). Two baselines share the machinery:
``nondelayed`` (no delays; the mean of all N fresh operators) and ``delayed`` (the mean of every
agent's freshest arrived operator, however stale).

The module has three layers, readable top to bottom:

1. pure NumPy functions (:func:`delay_errors`, :func:`select_agents`, :func:`dasa_step`,
   :func:`delayed_step`, :func:`nondelayed_step`) that compute one server iteration;
2. :class:`DelayBuffer`, the server's bounded memory: replies in flight on the virtual clock,
   each agent's freshest operator, and only the past iterates those still refer to;
3. the Flower strategy :class:`DASA` (simulated delays: one Flower round = one iteration) and
   :func:`asynchronous_iterations`, the ServerApp loop of real asynchrony over
   ``Grid.push_messages`` / ``Grid.pull_messages`` that never waits for a straggler.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common import log
from flwr.serverapp import Grid

from strategies.base import QTableStrategy, wait_for_nodes
from strategies.delays import DelayModel
from strategies.validation import ArraySpec, ClientUpdate, payload_bytes, split_replies

RULES = ("dasa", "delayed", "nondelayed")
EXECUTIONS = ("simulated", "async")
NORMS = ("l2", "linf")

# ============================================================================================
# 1. Pure functions: one server iteration.
# ============================================================================================


@dataclass(frozen=True)
class Operator:
    """An agent's operator ``g`` (shape of the iterate) and the iteration it was computed at."""

    computed_at: int
    g: np.ndarray


@dataclass(frozen=True)
class Step:
    """The outcome of one server iteration.

    Attributes
    ----------
    theta : np.ndarray
        The next iterate ``theta_{t+1}`` (``theta_t`` itself when not updated).
    updated : bool
        False when the iteration was skipped.
    used : tuple[int, ...]
        Agents whose operators were averaged, ascending (empty when skipped).
    staleness : tuple[int, ...]
        ``t - computed_at`` of each used operator, in the order of ``used``.
    errors : np.ndarray
        ``(N,)`` delay errors ``e_i`` (``+inf`` for agents with nothing arrived).
    threshold_error : float
        DASA's ``e_{m_t}``, the largest delay error in ``R_t`` (``nan`` for the baselines).
    """

    theta: np.ndarray
    updated: bool
    used: tuple[int, ...]
    staleness: tuple[int, ...]
    errors: np.ndarray
    threshold_error: float = math.nan


def _distance(x: np.ndarray, y: np.ndarray, norm: str) -> float:
    diff = np.ravel(x - y)
    if norm == "linf":
        return float(np.max(np.abs(diff))) if diff.size else 0.0
    if norm == "l2":
        return float(np.linalg.norm(diff))
    raise ValueError(f"norm={norm!r}; expected one of {', '.join(NORMS)}")


def delay_errors(
    theta: np.ndarray,
    t: int,
    operators: Mapping[int, Operator],
    iterates: Mapping[int, np.ndarray],
    num_agents: int,
    norm: str = "l2",
) -> np.ndarray:
    """Delay errors ``e_i = ||theta_t - theta_{computed_at_i}||`` of every agent.

    Parameters
    ----------
    theta : np.ndarray
        The current iterate ``theta_t``.
    t : int
        The current iteration (an operator computed at ``t`` has ``e_i = 0``).
    operators : Mapping[int, Operator]
        Each agent's freshest arrived operator, by partition id in ``[0, num_agents)``; agents
        without one are absent.
    iterates : Mapping[int, np.ndarray]
        Past iterates by iteration; must hold every ``computed_at < t`` referenced.
    num_agents : int
        ``N``.
    norm : str
        ``"l2"`` (Euclidean, the paper's) or ``"linf"`` on the flattened iterates.

    Returns
    -------
    np.ndarray
        ``(N,)`` float64; ``+inf`` for agents with nothing arrived.
    """
    errors = np.full(num_agents, np.inf)
    for agent, op in operators.items():
        if not 0 <= agent < num_agents:
            raise ValueError(f"agent {agent} is not a partition id in [0, {num_agents})")
        if op.computed_at == t:
            errors[agent] = 0.0
            continue
        if op.computed_at not in iterates:
            raise KeyError(f"iterate {op.computed_at} (agent {agent}'s operator) is not held")
        errors[agent] = _distance(theta, iterates[op.computed_at], norm)
    return errors


def select_agents(errors: np.ndarray) -> np.ndarray:
    """``R_t``: the ``ceil(N/2)`` agents with the smallest delay errors, smallest first.

    Ties are broken by the lower partition id (a stable sort of the errors), so the selection
    is deterministic whatever order replies arrived in.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 1 or errors.size == 0:
        raise ValueError(f"errors must have shape (N>=1,), got {errors.shape}")
    return np.argsort(errors, kind="stable")[: math.ceil(errors.size / 2)]


def _mean_step(
    theta: np.ndarray,
    t: int,
    operators: Mapping[int, Operator],
    agents: Iterable[int],
    step_size: float,
) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    # Sum in ascending agent order: bit-identical results whatever order replies arrived in.
    used = tuple(sorted(int(i) for i in agents))
    mean = np.mean(np.stack([operators[i].g for i in used]), axis=0)
    staleness = tuple(t - operators[i].computed_at for i in used)
    return theta + step_size * mean, used, staleness


def dasa_step(
    theta: np.ndarray,
    t: int,
    operators: Mapping[int, Operator],
    iterates: Mapping[int, np.ndarray],
    num_agents: int,
    step_size: float,
    epsilon: float,
    norm: str = "l2",
) -> Step:
    """One DASA iteration (ALGORITHMS.md section 6).

    Selects ``R_t`` (:func:`select_agents` on :func:`delay_errors`) and updates
    ``theta_{t+1} = theta_t + step_size * mean_{i in R_t} g_i`` iff ``e_{m_t} <= epsilon``
    (inclusive). While fewer than ``ceil(N/2)`` agents have an operator, ``R_t`` contains an
    agent with ``e = +inf`` and the iteration is skipped, whatever ``epsilon``.

    Parameters are those of :func:`delay_errors`, plus ``step_size`` (alpha > 0) and
    ``epsilon`` (>= 0).
    """
    errors = delay_errors(theta, t, operators, iterates, num_agents, norm)
    selected = select_agents(errors)
    threshold = float(errors[selected[-1]])
    if not (math.isfinite(threshold) and threshold <= epsilon):
        return Step(np.array(theta, copy=True), False, (), (), errors, threshold)
    new, used, staleness = _mean_step(theta, t, operators, selected, step_size)
    return Step(new, True, used, staleness, errors, threshold)


def delayed_step(
    theta: np.ndarray,
    t: int,
    operators: Mapping[int, Operator],
    num_agents: int,
    step_size: float,
) -> Step:
    """The Delayed baseline: the mean of every agent's freshest operator, however stale.

    Skipped only while no agent has anything arrived.
    """
    errors = np.full(num_agents, np.nan)  # not computed: the rule ignores them
    if not operators:
        return Step(np.array(theta, copy=True), False, (), (), errors)
    new, used, staleness = _mean_step(theta, t, operators, operators.keys(), step_size)
    return Step(new, True, used, staleness, errors)


def nondelayed_step(
    theta: np.ndarray,
    t: int,
    operators: Mapping[int, Operator],
    num_agents: int,
    step_size: float,
) -> Step:
    """The Non-delayed baseline: the mean of the operators computed at ``theta_t`` itself.

    With no delays (the simulated mode forces ``d = 0`` for this rule) that is all ``N``
    agents' fresh operators; an agent that did not answer is left out.
    """
    fresh = {i: op for i, op in operators.items() if op.computed_at == t}
    errors = np.full(num_agents, np.nan)
    if not fresh:
        return Step(np.array(theta, copy=True), False, (), (), errors)
    new, used, staleness = _mean_step(theta, t, fresh, fresh.keys(), step_size)
    return Step(new, True, used, staleness, errors)


def aggregate_step(
    rule: str,
    theta: np.ndarray,
    t: int,
    operators: Mapping[int, Operator],
    iterates: Mapping[int, np.ndarray],
    num_agents: int,
    step_size: float,
    epsilon: float,
    norm: str = "l2",
) -> Step:
    """One server iteration under ``rule``: ``dasa``, ``delayed`` or ``nondelayed``."""
    if rule == "dasa":
        return dasa_step(theta, t, operators, iterates, num_agents, step_size, epsilon, norm)
    if rule == "delayed":
        return delayed_step(theta, t, operators, num_agents, step_size)
    if rule == "nondelayed":
        return nondelayed_step(theta, t, operators, num_agents, step_size)
    raise ValueError(f"strategy.rule={rule!r}; expected one of {', '.join(RULES)}")


# ============================================================================================
# 2. The server's bounded memory.
# ============================================================================================


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


# ============================================================================================
# 3. The Flower strategy and the asynchronous loop.
# ============================================================================================


class DASA(QTableStrategy):
    """Flower strategy running DASA (or a baseline) on agents' Q-learning operators.

    Wire format. Instruction: ``RecordDict({"arrays": ArrayRecord({"q": theta_t (S, A)}),
    "config": ConfigRecord({..., "server_round", "iteration": t})})``. Reply: ``"arrays"``
    with ``"g"`` (S, A) float64 and ``"metrics"`` with ``"partition_id"`` (the agent) and
    ``"iteration"`` (the ``t`` it was computed at, echoed back). Replies are validated by the
    shared :func:`strategies.validation.split_replies`.

    Two execution modes:

    ``simulated``
        One Flower round ``r`` is server iteration ``t = r - 1``: every agent computes at
        ``theta_t`` (real Flower messages) and the strategy holds each reply until its arrival
        iteration ``t + d_{i,t}`` drawn from ``delays`` (``d = 0`` under ``nondelayed``).
        Deterministic for a seed.
    ``async``
        Real delays: :func:`asynchronous_iterations` is the round loop; staleness is measured
        in server iterations; ``delays`` is not used.

    Parameters
    ----------
    num_states, num_actions : int
        Shape ``(S, A)`` of the iterate (the Q-table).
    num_agents : int
        ``N``, the number of agents (partition ids ``0 .. N-1``).
    rule : str
        ``dasa``, ``delayed`` or ``nondelayed``.
    step_size : float
        ``alpha > 0``.
    epsilon : float
        DASA's threshold on ``e_{m_t}``, ``>= 0``.
    batch_size : int
        ``B``, transitions per operator (used for ``num_samples``).
    delays : DelayModel, optional
        Simulated uplink delays (default: none).
    max_staleness : int
        Operators older than this many iterations are dropped (bounds the memory).
    norm : str
        Norm of the delay error: ``l2`` (default) or ``linf``.
    execution : str
        ``simulated`` or ``async``.
    tick_s : float
        ``async``: wall-time bound of one server iteration, in seconds.
    value_bound : float, optional
        Reject operators with any ``|g| > value_bound``.
    min_available_nodes, wait_timeout
        As in `QTableStrategy`: wait up to ``wait_timeout`` s for that many nodes before the
        first instruction. ``wait_timeout`` also bounds an async tick in which nothing arrives.
    """

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        *,
        num_agents: int,
        rule: str = "dasa",
        step_size: float = 1.0,
        epsilon: float = 0.5,
        batch_size: int = 10,
        delays: DelayModel | None = None,
        max_staleness: int = 1000,
        norm: str = "l2",
        execution: str = "simulated",
        tick_s: float = 0.05,
        value_bound: float | None = None,
        min_available_nodes: int = 1,
        wait_timeout: float = 600.0,
    ) -> None:
        super().__init__(
            num_states,
            num_actions,
            min_replies=1,
            value_bound=value_bound,
            min_available_nodes=min_available_nodes,
            wait_timeout=wait_timeout,
        )
        checks = [
            ("rule", rule, rule in RULES, f"one of {', '.join(RULES)}"),
            ("execution", execution, execution in EXECUTIONS, f"one of {', '.join(EXECUTIONS)}"),
            ("norm", norm, norm in NORMS, f"one of {', '.join(NORMS)}"),
            ("num_agents", num_agents, num_agents >= 1, "an integer >= 1"),
            ("step_size", step_size, step_size > 0, "a number > 0"),
            ("epsilon", epsilon, epsilon >= 0, "a number >= 0"),
            ("batch_size", batch_size, batch_size >= 1, "an integer >= 1"),
            ("max_staleness", max_staleness, max_staleness >= 0, "an integer >= 0"),
            ("tick_s", tick_s, tick_s > 0, "a number > 0"),
        ]
        for name, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"strategy.{name}={value!r} is out of range; expected {allowed}")
        self.num_agents = int(num_agents)
        self.rule = rule
        self.step_size = float(step_size)
        self.epsilon = float(epsilon)
        self.batch_size = int(batch_size)
        self.delays = delays or DelayModel("none", num_agents=self.num_agents)
        self.norm = norm
        self.execution = execution
        self.tick_s = float(tick_s)
        self.buffer = DelayBuffer(max_staleness)
        self._theta: np.ndarray | None = None

    @property
    def reply_specs(self) -> list[ArraySpec]:
        """Replies carry the operator ``g`` (S, A) float64."""
        return [ArraySpec("g", self.shape, "float")]

    def parameters(self) -> dict[str, object]:
        """Constructor parameters, for `summary`."""
        return {
            **super().parameters(),
            "num_agents": self.num_agents,
            "rule": self.rule,
            "step_size": self.step_size,
            "epsilon": self.epsilon,
            "batch_size": self.batch_size,
            "delays": self.delays.describe(),
            "max_staleness": self.buffer.max_staleness,
            "norm": self.norm,
            "execution": self.execution,
        }

    # --- messaging --------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Send ``theta_t`` (``t = server_round - 1``) to every node."""
        node_ids = wait_for_nodes(grid, self.min_available_nodes, self.wait_timeout)
        return self.instructions(server_round - 1, arrays, config, node_ids)

    def instructions(
        self, t: int, arrays: ArrayRecord, config: ConfigRecord, node_ids: Sequence[int]
    ) -> list[Message]:
        """Messages asking ``node_ids`` for their operator at iterate ``t`` (held in ``arrays``)."""
        self._theta = np.array(arrays["q"].numpy(), dtype=np.float64, copy=True)
        self.buffer.remember(t, self._theta)
        train_config = ConfigRecord({**dict(config), "server_round": t + 1, "iteration": t})
        messages = []
        for node_id in node_ids:
            messages.append(
                Message(
                    RecordDict({"arrays": arrays, "config": train_config}),
                    dst_node_id=node_id,
                    message_type=MessageType.TRAIN,
                    group_id=str(t + 1),
                )
            )
            self.buffer.computing[int(node_id)] = t
        self._num_sent += len(messages)
        self._bytes_down += len(messages) * sum(len(a.data) for a in arrays.values())
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord]:
        """Simulated mode: receive round ``server_round``'s replies and run iteration ``t``."""
        if self._theta is None:
            raise RuntimeError("DASA.aggregate_train called before configure_train")
        return self.advance(server_round - 1, self._theta, replies)

    def aggregate(self, updates: list[ClientUpdate]) -> np.ndarray:  # pragma: no cover
        """Unused: DASA's iteration needs more than the round's replies (see `advance`)."""
        raise NotImplementedError("DASA aggregates in advance(), not aggregate()")

    # --- one server iteration -----------------------------------------------------------------
    def advance(
        self,
        t: int,
        theta: np.ndarray,
        replies: Iterable[Message],
        computing: int | None = None,
        step_if_nothing_new: bool = True,
    ) -> tuple[ArrayRecord | None, MetricRecord]:
        """Take in ``replies`` at iteration ``t``, then compute ``theta_{t+1}`` by the rule.

        Returns ``(None, metrics)`` when the iteration is skipped (the global Q stays).
        ``computing`` (async mode): instructions still being computed, reported as a metric.
        ``step_if_nothing_new=False`` (async mode) skips an iteration in which no operator
        arrived instead of re-applying the ones already used.
        """
        theta = np.asarray(theta, dtype=np.float64)
        self.buffer.remember(t, theta)
        replies = list(replies)
        updates, rejected = split_replies(replies, self.reply_specs, self.value_bound)
        for message in replies:  # answered, well or not: no longer computing
            self.buffer.computing.pop(int(message.metadata.src_node_id), None)
        accepted = too_old = 0
        for update in updates:
            try:
                agent, computed_at = self._identify(update, t)
            except ValueError as exc:
                rejected.append((update.node_id, str(exc)))
                continue
            accepted += 1
            if self.buffer.too_old(computed_at, t) or computed_at not in self.buffer.iterates:
                too_old += 1
                continue
            delay = 0
            if self.execution == "simulated" and self.rule != "nondelayed":
                delay = self.delays.sample(agent, computed_at)
            op = Operator(computed_at, update.arrays["g"])
            if not self.buffer.hold(agent, op, max(t, computed_at + delay)):
                too_old += 1
        for node_id, reason in rejected:
            log(WARNING, "Iteration %s: rejected reply from node %s: %s", t, node_id, reason)
            self.rejections.append((t + 1, node_id, reason))

        arrived = self.buffer.release(t)
        expired = self.buffer.expire(t) + too_old
        if arrived or step_if_nothing_new:
            step = aggregate_step(
                self.rule,
                theta,
                t,
                self.buffer.freshest,
                self.buffer.iterates,
                self.num_agents,
                self.step_size,
                self.epsilon,
                self.norm,
            )
        else:
            step = Step(theta.copy(), False, (), (), np.full(self.num_agents, np.nan))
        self.buffer.prune(t)

        metrics: dict[str, float | int] = {
            "accepted": accepted,
            "rejected": len(rejected),
            "bytes_up": sum(payload_bytes(m) for m in replies),
            "bytes_down": self._bytes_down,
            # Mean over all N agents of the transitions they sampled in this iteration.
            "num_samples": self.batch_size * accepted / self.num_agents,
            "skipped": int(not step.updated),
            "arrived": arrived,
            "used": len(step.used),
            "expired": expired,
        }
        if self.execution == "simulated":
            metrics["missing"] = max(
                self._num_sent - len({m.metadata.src_node_id for m in replies}), 0
            )
            metrics["in_flight"] = self.buffer.num_in_flight
        if computing is not None:
            metrics["computing"] = computing
        if step.updated:
            metrics["staleness_mean"] = float(np.mean(step.staleness))
            metrics["staleness_max"] = int(max(step.staleness))
        if math.isfinite(step.threshold_error):
            metrics["delay_error"] = step.threshold_error
        self._num_sent = 0
        self._bytes_down = 0
        if not step.updated:
            return None, MetricRecord(metrics)
        return ArrayRecord({"q": Array(np.ascontiguousarray(step.theta))}), MetricRecord(metrics)

    def _identify(self, update: ClientUpdate, t: int) -> tuple[int, int]:
        """The agent (partition id) and the iteration a reply's operator was computed at."""
        if "partition_id" not in update.metrics or "iteration" not in update.metrics:
            raise ValueError("reply metrics lack 'partition_id' or 'iteration'")
        agent, computed_at = update.metrics["partition_id"], update.metrics["iteration"]
        if not (float(agent).is_integer() and 0 <= agent < self.num_agents):
            raise ValueError(f"partition_id {agent} is not in [0, {self.num_agents})")
        if not (float(computed_at).is_integer() and 0 <= computed_at <= t):
            raise ValueError(f"operator computed at iteration {computed_at}, not in [0, {t}]")
        return int(agent), int(computed_at)

    # --- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """DASA's server state (history of iterates, held and freshest operators)."""
        return {"buffer": self.buffer.state_dict(), "rejections": list(self.rejections)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; instructions pending at checkpoint time are forgotten."""
        self.buffer.load_state_dict(state["buffer"])
        self.buffer.computing.clear()
        self.rejections = list(state.get("rejections", []))


def asynchronous_iterations(run) -> None:
    """ServerApp loop of real asynchrony (``strategy.execution=async``); a ``Plan.loop``.

    Each server iteration is one tick: push ``theta_t`` to every connected node that is not
    computing, pull the replies that come in until no instruction is outstanding or ``tick_s``
    seconds have passed, then run the DASA iteration on whatever has arrived and record it. A
    node that has not answered keeps computing on the iterate it got; its operator counts when
    it lands, with its staleness in server iterations. A tick never waits longer than
    ``tick_s`` for a straggler once anything has arrived, so a slow client, or one that never
    answers, cannot stall the run. A tick in which nothing at all has arrived after ``tick_s``
    (start-up: Ray workers and SuperNodes take seconds) waits for the first reply up to the
    strategy's ``wait_timeout`` (the run's ``round_timeout``), and if none comes it is recorded
    as skipped (no new information, no step).

    ``run`` is the server's ``RunContext`` (fields ``grid``, ``plan``, ``arrays``,
    ``completed_rounds`` and the method ``record``).
    """
    strategy: DASA = run.plan.strategy
    grid = run.grid
    pending: dict[str, int] = {}  # instruction message id -> node id
    poll_s = min(0.002, strategy.tick_s / 10)
    empty_tick_s = strategy.wait_timeout
    wait_for_nodes(grid, strategy.min_available_nodes, strategy.wait_timeout)
    log(INFO, "DASA async: tick %.3fs, rule %s", strategy.tick_s, strategy.rule)
    for t in range(run.completed_rounds, run.plan.num_rounds):
        start = time.monotonic()
        tick_end, give_up = start + strategy.tick_s, start + max(strategy.tick_s, empty_tick_s)
        busy = set(pending.values())
        idle = [n for n in sorted(int(n) for n in grid.get_node_ids()) if n not in busy]
        if idle:
            messages = strategy.instructions(t, run.arrays, run.plan.train_config, idle)
            grid.push_messages(messages)
            pending.update({m.metadata.message_id: m.metadata.dst_node_id for m in messages})
        replies: list[Message] = []
        while True:
            for reply in grid.pull_messages(list(pending)):
                if pending.pop(reply.metadata.reply_to_message_id, None) is not None:
                    replies.append(reply)
            now = time.monotonic()
            if not pending or (replies and now >= tick_end) or now >= give_up:
                break
            time.sleep(poll_s)
        new_arrays, metrics = strategy.advance(
            t, run.arrays["q"].numpy(), replies, computing=len(pending), step_if_nothing_new=False
        )
        run.record(t + 1, new_arrays, dict(metrics))
