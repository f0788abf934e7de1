"""The registry of strategies and client tasks: what a strategy module declares about itself.

A strategy module (``equal``, ``importance``, ``average_reward``, ``dasa``, or a new one) calls
:func:`register` with a :class:`StrategySpec`: its config name, its config rules (option lists
and ranges, checked at the edge and nowhere else), its builder (composed settings + MDP ->
:class:`Plan`) and the :class:`ClientTask` its clients run (plus ``extra_tasks`` when its
builder chooses between several, e.g. DASA's Q-learning and TD operators). The ServerApp looks
strategies up in :data:`STRATEGIES`, the ClientApp looks tasks up in :data:`TASKS`;
:func:`load_all` imports every module of the package, so adding a strategy is one module plus
one ``conf/strategy/*.yaml``.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from . import transport

if TYPE_CHECKING:
    from flower_qlearn.agent import AgentEnv
    from flower_qlearn.mdp import TabularMDP
    from flower_qlearn.schema import Rule

    from .base import QTableStrategy


# --- the client side -----------------------------------------------------------------------


@dataclass
class TaskJob:
    """What a client task gets: the global table, its validated settings and its agent.

    Attributes
    ----------
    q : np.ndarray
        The received global table, a private writable float64 copy (tasks update it in place).
    settings : dict
        The task's settings as a nested dict (``seed``, ``num_clients``, ``mdp``, ``client``)
        plus the task's own round keys (flat, e.g. ``"period.gamma"``), validated.
    agent : int
        The agent's partition id.
    server_round : int
        Flower's ``server-round`` of the instruction.
    env : AgentEnv
        The agent's MDP and behavior policy.
    rng : np.random.Generator
        The round's random numbers, ``SeedSequence([seed, agent, server_round])``.
    state : MutableMapping
        The agent's persistent state across rounds (kept in ``Context.state``): e.g. ``"state"``,
        its current Markov state. Tasks read and write plain ints/floats here.
    """

    q: np.ndarray
    settings: dict
    agent: int
    server_round: int
    env: AgentEnv
    rng: np.random.Generator
    state: MutableMapping[str, Any]


TaskResult = tuple[dict[str, np.ndarray], dict[str, float | int]]


@dataclass(frozen=True)
class ClientTask:
    """A local task a ClientApp can run: its name, its function, the round keys it accepts.

    ``round_rules`` validate the task's own per-round keys (e.g. average reward's step sizes);
    every key an instruction may carry beyond ``task``, ``server-round``, ``seed``,
    ``num_clients``, ``mdp.*`` and ``client.*`` must have a rule here. ``iterate_shape(settings,
    env)`` is the shape the instruction's array ``"q"`` must have (None: the Q-table ``(S, A)``).
    """

    name: str
    run: Callable[[TaskJob], TaskResult]
    round_rules: tuple[Rule, ...] = ()
    iterate_shape: Callable[[dict, AgentEnv], tuple[int, ...]] | None = None

    @property
    def round_keys(self) -> frozenset[str]:
        return frozenset(rule.field for rule in self.round_rules)

    def expected_shape(self, settings: dict, env: AgentEnv) -> tuple[int, ...]:
        """The shape of the received iterate this task works on."""
        if self.iterate_shape is None:
            return (env.mdp.num_states, env.mdp.num_actions)
        return tuple(self.iterate_shape(settings, env))


# --- the server side -----------------------------------------------------------------------

#: Called once per finished server round/iteration with the new global arrays (None: keep the
#: previous ones) and the round's metrics; returns the global arrays from then on.
OnRound = Callable[[int, ArrayRecord | None, MetricRecord], ArrayRecord]


class RoundLoop(Protocol):
    """A server loop: drive ``strategy`` over ``grid`` for rounds ``start + 1 .. num_rounds``."""

    def __call__(
        self,
        strategy: QTableStrategy,
        grid: Grid,
        arrays: ArrayRecord,
        train_config: ConfigRecord,
        num_rounds: int,
        *,
        start: int = 0,
        round_timeout: float | None = None,
        on_round: OnRound | None = None,
    ) -> ArrayRecord: ...


def synchronous_rounds(
    strategy: QTableStrategy,
    grid: Grid,
    arrays: ArrayRecord,
    train_config: ConfigRecord,
    num_rounds: int,
    *,
    start: int = 0,
    round_timeout: float | None = None,
    on_round: OnRound | None = None,
) -> ArrayRecord:
    """The default loop: broadcast, wait for the replies, aggregate; round after round.

    Returns the final global arrays. ``on_round`` sees every round (e.g. to evaluate, log and
    checkpoint); without it the loop is Flower's ``Strategy.start`` minus evaluation.
    """
    for server_round in range(start + 1, num_rounds + 1):
        messages = strategy.configure_train(server_round, arrays, train_config, grid)
        replies = transport.send_and_receive(grid, messages, timeout=round_timeout)
        new_arrays, metrics = strategy.aggregate_train(server_round, replies)
        metrics = metrics if metrics is not None else MetricRecord()
        if on_round is not None:
            arrays = on_round(server_round, new_arrays, metrics)
        elif new_arrays is not None:
            arrays = new_arrays
    return arrays


@dataclass
class Plan:
    """What the server runs: the strategy, the instruction's config, how many rounds, how.

    ``objective`` decides the evaluation metrics (``discounted``: Q-error against Q*;
    ``average_reward``: gain error against rho*; ``td``: ``theta_error`` against the TD fixed
    point, given as ``ground_truth``). ``iterate_shape`` is the global iterate's shape (None:
    the Q-table ``(S, A)``).
    """

    strategy: QTableStrategy
    train_config: ConfigRecord
    num_rounds: int
    objective: str = "discounted"
    loop: RoundLoop = synchronous_rounds
    iterate_shape: tuple[int, ...] | None = None
    ground_truth: Any = None


@dataclass(frozen=True)
class StrategySpec:
    """A strategy as the config layer sees it.

    ``rules`` apply only when ``strategy.name == name`` (the registry adds that condition).
    ``build(settings, mdp)`` gets the validated composed config as a plain nested dict.
    ``extra_tasks`` are further client tasks the builder may ask for (registered with ``task``).
    """

    name: str
    build: Callable[[Mapping[str, Any], TabularMDP], Plan]
    task: ClientTask
    rules: tuple[Rule, ...] = field(default=())
    extra_tasks: tuple[ClientTask, ...] = field(default=())


STRATEGIES: dict[str, StrategySpec] = {}
TASKS: dict[str, ClientTask] = {}


def register(spec: StrategySpec) -> StrategySpec:
    """Add a strategy (and its client tasks) to the registry; returns ``spec``."""
    tasks = (spec.task, *spec.extra_tasks)
    for task in tasks:
        existing = TASKS.get(task.name)
        if existing is not None and existing is not task:
            raise ValueError(f"task {task.name!r} is already registered by another strategy")
    STRATEGIES[spec.name] = spec
    for task in tasks:
        TASKS[task.name] = task
    return spec


def load_all() -> None:
    """Import every module of this package, so that each strategy has registered itself."""
    for name in _package_modules():
        importlib.import_module(name)


@functools.cache
def _package_modules() -> tuple[str, ...]:
    """This package's modules (listed once per process: validating a sweep's jobs called
    :func:`load_all` for each)."""
    package = __name__.rpartition(".")[0]
    return tuple(f"{package}.{module.name}"
                 for module in pkgutil.iter_modules(importlib.import_module(package).__path__))


def strategy_rules() -> list[Rule]:
    """Every registered strategy's rules, each applying only under its own strategy."""
    from dataclasses import replace

    load_all()
    rules = []
    for spec in STRATEGIES.values():
        for rule in spec.rules:
            rules.append(replace(rule, when=_under(spec.name, rule.when)))
    return rules


def _under(name: str, when: Callable[[Mapping], bool]) -> Callable[[Mapping], bool]:
    def applies(settings: Mapping) -> bool:
        return (settings.get("strategy") or {}).get("name") == name and when(settings)

    return applies
