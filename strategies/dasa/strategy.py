"""DASA: delay-adaptive aggregation of agents' operators whose uploads arrive late.

Dal Fabbro, Adibi, Poor, Kulkarni, Mitra, Pappas, "DASA: Delay-Adaptive Multi-Agent Stochastic
Approximation", CDC 2024 (ALGORITHMS.md section 6). At every server iteration ``t`` each agent
computes an operator ``g_i`` (the batch Q-learning operator of its own Markov chain, or the TD(0)
operator with linear features: ``strategy.operator``) at the current iterate ``theta_t``; the
upload reaches the server some iterations later. The server keeps each agent's freshest arrived
operator, computed at ``t - tau_i``, and

    e_i  = || theta_t - theta_{t - tau_i} ||          (delay error; +inf: nothing arrived yet)
    R_t  = the ceil(N/2) agents with the smallest e_i (ties: lower partition id first)
    m_t  = the agent of R_t with the largest e_i
    theta_{t+1} = theta_t + alpha * mean_{i in R_t} g_i   if e_{m_t} <= epsilon, else theta_t.

Choosing the better half by delay error, and skipping when even the median of that half is too
far from the present, keeps the stragglers' stale operators out while still averaging about N/2
fresh ones (the N-fold variance reduction). Two baselines share the machinery:
``nondelayed`` (no delays; the mean of all N fresh operators) and ``delayed`` (the mean of every
agent's freshest arrived operator, however stale).

The subpackage has four layers, readable top to bottom:

1. :mod:`.rule`: pure NumPy functions (:func:`delay_errors`, :func:`select_agents`,
   :func:`dasa_step`, :func:`delayed_step`, :func:`nondelayed_step`) computing one iteration;
2. :mod:`.buffer`: :class:`DelayBuffer`, the server's bounded memory: replies in flight on the
   virtual clock, each agent's freshest operator, and only the past iterates still referred to;
3. this module: the Flower strategy :class:`DASA` (simulated delays: one Flower round = one
   iteration); :mod:`.spec`: its client tasks (``q_operator``, ``td_operator``), config rules
   and builder;
4. :mod:`.asynchronous`: :func:`asynchronous_iterations`, the server loop of real asynchrony
   over ``Grid.push_messages`` / ``Grid.pull_messages`` that never waits for a straggler.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

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
from flwr.serverapp import Grid

from flower_qlearn.schema import (
    Rule,
    int_at_least,
    non_negative,
    one_of,
    options,
    positive,
    validate,
)

from ..base import QTableStrategy, wait_for_nodes
from ..delays import DelayModel
from ..identity import check_iteration
from ..protocol import (
    ARRAYS,
    CONFIG,
    ITERATION,
    NUM_SAMPLES,
    OPERATOR,
    SERVER_ROUND,
    TASK,
    Q,
)
from ..validation import ArraySpec, ClientUpdate, payload_bytes
from .buffer import DelayBuffer
from .rule import NO_DEFENCE, NORMS, RULES, Defence, Operator, Step, aggregate_step

#: How a DASA run executes: on a virtual clock with simulated delays, or really asynchronously.
EXECUTIONS = ("simulated", "async")
#: The instruction's round keys of the ``q_operator`` task.
BATCH_SIZE = "strategy.batch_size"


class DASA(QTableStrategy):
    """Flower strategy running DASA (or a baseline) on agents' operators, any iterate shape.

    Wire format. Instruction: ``RecordDict({"arrays": ArrayRecord({"q": theta_t}),
    "config": ConfigRecord({..., "server-round", "iteration": t})})`` with ``theta_t`` of
    shape ``shape`` (the Q-table ``(S, A)``, or ``(d,)`` for TD). Reply: ``"arrays"``
    with ``"g"`` (same shape) float64 and ``"metrics"`` with ``"partition_id"`` (the agent it
    claims to be) and ``"iteration"`` (the ``t`` it was computed at, echoed back). Replies are
    screened by the shared :func:`flower_qlearn.strategies.identity.screen_replies`: only a
    reply to an instruction the server sent counts; the agent slot is the server's partition
    of the node (fixed at its first valid reply) and the operator's iteration is the one the
    server sent that node (the echo must agree).

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
        ``S`` and ``A`` of the MDP; the iterate's shape unless ``shape`` is given.
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
    shape : tuple of int, optional
        Shape of the iterate and of every operator (default ``(S, A)``; TD: ``(d,)``).
    task : str, optional
        The client task of the instructions (default ``q_operator``; TD: ``td_operator``).
    """

    task = "q_operator"

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
        shape: tuple[int, ...] | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__(
            num_states,
            num_actions,
            min_replies=1,
            value_bound=value_bound,
            min_available_nodes=min_available_nodes,
            wait_timeout=wait_timeout,
        )
        if not (isinstance(num_agents, int) and num_agents >= 1):
            raise ValueError(f"num_agents={num_agents!r} is out of range; expected an integer >= 1")
        self.partitions.num_partitions = int(num_agents)  # agents 0 .. N-1
        parameters = {
            "rule": rule,
            "step_size": step_size,
            "epsilon": epsilon,
            "batch_size": batch_size,
            "max_staleness": max_staleness,
            "norm": norm,
            "execution": execution,
            "tick_s": tick_s,
        }
        if step_size is None:  # null in the config means "the operator's default": the builder
            raise ValueError("step_size=None; expected a number > 0")
        validate({"strategy": parameters}, PARAMETER_RULES)  # the config rules, one place
        self._shape = (num_states, num_actions) if shape is None else tuple(int(n) for n in shape)
        if not self._shape or min(self._shape) < 1:
            raise ValueError(f"shape={shape!r}; expected positive dimensions")
        if task is not None:
            self.task = str(task)
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
        #: Robust combination, operator clip and iterate projection (set by the builder).
        self.defence: Defence = NO_DEFENCE
        self._theta: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the iterate ``theta`` and of every operator ``g``."""
        return self._shape

    @property
    def reply_specs(self) -> list[ArraySpec]:
        """Replies carry the operator ``g`` (the iterate's shape) float64."""
        return [ArraySpec(OPERATOR, self.shape, "float")]

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
            "shape": self.shape,
            "task": self.task,
        }

    # --- messaging --------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Send ``theta_t`` (``t = server_round - 1``) to every node."""
        node_ids = wait_for_nodes(grid, self.min_available_nodes, self.wait_timeout)
        self.outbox.clear()  # simulated: only this round's instructions may be answered
        return self.instructions(server_round - 1, arrays, config, node_ids)

    def instructions(
        self, t: int, arrays: ArrayRecord, config: ConfigRecord, node_ids: Sequence[int]
    ) -> list[Message]:
        """Messages asking ``node_ids`` for their operator at iterate ``t`` (held in ``arrays``)."""
        self._theta = np.array(arrays[Q].numpy(), dtype=np.float64, copy=True)
        self.buffer.remember(t, self._theta)
        train_config = ConfigRecord({TASK: self.task, **dict(config)})
        train_config.update({SERVER_ROUND: t + 1, ITERATION: t})
        messages = []
        for node_id in node_ids:
            messages.append(
                Message(
                    RecordDict({ARRAYS: arrays, CONFIG: train_config}),
                    dst_node_id=node_id,
                    message_type=MessageType.TRAIN,
                    group_id=str(t + 1),
                )
            )
            self.buffer.computing[int(node_id)] = t
        self.outbox.add(messages, iteration=t)  # what each node was sent: its reply must match
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
        screened = self.screen(t + 1, replies)
        missing = self.missing(screened)
        self.outbox.forget_answered()
        # Answered, well or not (or the link says the node is gone): no longer computing.
        for node_id in screened.answered | {node for node, _ in screened.unavailable}:
            self.buffer.computing.pop(int(node_id), None)
        accepted = too_old = 0
        for update in screened.updates:
            # The server's own records: the node's partition and the iteration it was sent.
            agent, computed_at = int(update.partition), int(update.sent.iteration)
            accepted += 1
            if self.buffer.too_old(computed_at, t) or computed_at not in self.buffer.iterates:
                too_old += 1
                continue
            delay = 0
            if self.execution == "simulated" and self.rule != "nondelayed":
                delay = self.delays.sample(agent, computed_at)
            op = Operator(computed_at, update.arrays[OPERATOR])
            if not self.buffer.hold(agent, op, max(t, computed_at + delay)):
                too_old += 1

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
                self.defence,
            )
        else:
            step = Step(theta.copy(), False, (), (), np.full(self.num_agents, np.nan))
        self.buffer.prune(t)

        metrics: dict[str, float | int] = {
            "accepted": accepted,
            "rejected": len(screened.rejected),
            "bytes_up": sum(payload_bytes(m) for m in replies),
            "bytes_down": self._bytes_down,
            # Mean over all N agents of the transitions they sampled in this iteration.
            NUM_SAMPLES: self.batch_size * accepted / self.num_agents,
            "skipped": int(not step.updated),
            "arrived": arrived,
            "used": len(step.used),
            "expired": expired,
        }
        if self.execution == "simulated":
            metrics["missing"] = missing
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
        return ArrayRecord({Q: Array(np.ascontiguousarray(step.theta))}), MetricRecord(metrics)

    def check_update(self, update: ClientUpdate) -> None:
        """The operator's echoed iteration must be the one sent (:func:`check_iteration`)."""
        check_iteration(update)

    # --- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """DASA's server state (history of iterates, held and freshest operators)."""
        return {"buffer": self.buffer.state_dict(), "rejections": list(self.rejections)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; instructions pending at checkpoint time are forgotten."""
        self.buffer.load_state_dict(state["buffer"])
        self.buffer.computing.clear()
        self.outbox.clear()
        self.rejections = list(state.get("rejections", []))


#: The strategy's own parameters (also checked by the constructor).
PARAMETER_RULES = (
    Rule("strategy.rule", one_of(RULES), options(RULES)),
    # null: the operator's default, resolved by the builder (spec.step_size_of).
    Rule("strategy.step_size", positive, "null or a number > 0", optional=True),
    Rule("strategy.epsilon", non_negative, "a number >= 0"),
    Rule("strategy.batch_size", int_at_least(1), "an integer >= 1"),
    Rule("strategy.max_staleness", int_at_least(0), "an integer >= 0"),
    Rule("strategy.norm", one_of(NORMS), options(NORMS)),
    Rule("strategy.execution", one_of(EXECUTIONS), options(EXECUTIONS)),
    Rule("strategy.tick_s", positive, "a number > 0 (seconds)"),
)

