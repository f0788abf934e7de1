"""The batched engine (``engine=batched``): many jobs' rounds in one compiled call, same numbers.

``engine=inprocess`` runs every round through real Flower Messages; for a sweep of small MDPs
that message layer is ~60 % of the time and the kernel ~2 %. This engine computes exactly the
same thing without messages: per round, ONE compiled call (:func:`~flower_qlearn.
batched_kernels.q_learning_round`, or ``average_reward_round``) runs the client task of all
``K`` agents of all the jobs of a group, seeding each agent as ``SeedSequence([seed, k, r])``
in compiled code (:mod:`flower_qlearn.pcg64`) and calling the same kernels; then the
strategy's own ``aggregate`` (its pure aggregation function) combines the ``K`` local tables
of all jobs at once, the jobs' tables stacked along the state axis (every aggregation rule
supported here is per entry ``(s, a)``); then each job's global table is evaluated by the same
:class:`~flower_qlearn.evaluation.Evaluator` and its metrics row recorded. Outputs are written
by :func:`flower_qlearn.experiment.write_outputs`, as for every engine. The numbers of
``metrics.csv``, ``summary.json`` and ``q_table.npy`` equal ``engine=inprocess``'s bit for bit
(``wall_s`` aside; tests/test_batched.py).

Jobs form a group when they differ only in ``seed``, ``client.behavior`` and
``client.heterogeneity`` (:func:`group_key`); the launcher
(:mod:`flower_qlearn.launcher`) runs a multirun's groups this way. What the engine does not
reproduce is refused by :data:`RULES` before anything runs (one line): strategies other than
:data:`STRATEGIES`, checkpoints and resume, slow clients, attacks. A reply the strategy would reject
(non-finite, beyond the value bound) stops the run with one line: a rejected reply cannot be
left out of one job of a batch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import schema
from .schema import Rule

log = logging.getLogger("flower_qlearn")

__all__ = ["RULES", "STRATEGIES", "BatchJob", "group_key", "run_batched", "run_jobs"]

#: Strategies the batched engine runs (their client task is ``q_learning``; their aggregation
#: is per entry). DASA needs ``engine=inprocess``.
STRATEGIES = ("equal", "importance", "average_reward")
#: The client task of average-reward Q-learning (``AverageRewardQ.task``); every other
#: strategy of :data:`STRATEGIES` runs ``q_learning``.
AVERAGE_REWARD_TASK = "average_reward"

#: Settings that may differ between the jobs of one group (one compiled call per round).
PER_JOB = ("seed", "output_dir", "client.behavior", "client.heterogeneity")


def _batched(settings: Mapping) -> bool:
    return schema.get(settings, "engine.name") == "batched"


def _uses(field_name: str, idle: Any):
    """``when``: the engine is batched and ``field_name`` is set to something other than idle."""
    return lambda s: _batched(s) and schema.get(s, field_name, idle) not in (idle, None)


#: What ``engine=batched`` refuses, checked with the run rules (flower_qlearn.config).
RULES: tuple[Rule, ...] = (
    Rule("strategy.name", lambda v: v in STRATEGIES,
         f"{', '.join(STRATEGIES)} with engine=batched (others: engine=inprocess)",
         when=_batched),
    Rule("checkpoint_every", schema.never, "0 with engine=batched (checkpoints: engine=inprocess)",
         when=_uses("checkpoint_every", 0)),
    Rule("resume", schema.never, "null with engine=batched (resume: engine=inprocess)",
         when=_uses("resume", None)),
    Rule("client.sleep_s", schema.never, "0 with engine=batched (slow clients: engine=inprocess)",
         when=_uses("client.sleep_s", 0.0)),
    # Attacks are applied by the ClientApp (flower_qlearn.attacks), which this engine never runs.
    Rule("client.attack", schema.never,
         "none with engine=batched (attacks run in the ClientApp: engine=inprocess)",
         when=_uses("client.attack", "none")),
)


@dataclass
class BatchJob:
    """One run of a batch: its validated settings (``output_dir`` included) and its results."""

    settings: dict
    output_dir: Path
    history: Sequence[dict] = field(default_factory=list)  # rows (a MetricsTable once run)
    q_final: np.ndarray | None = None
    wall_s: float = 0.0
    setup: tuple | None = None  # its group's (mdp, plan, evaluator, q0): the same for all


def group_key(settings: Mapping) -> str:
    """Jobs with the same key run in one group: all settings but :data:`PER_JOB`."""
    flat = dict(_flatten(settings))
    for name in PER_JOB:
        flat.pop(name, None)
    return json.dumps(flat, sort_keys=True, default=repr)


def _flatten(settings: Mapping, prefix: str = ""):
    for key, value in settings.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def run_jobs(jobs: Sequence[BatchJob]) -> None:
    """Compute every job's history and final table (no files written), group by group."""
    groups: dict[str, list[BatchJob]] = {}
    for job in jobs:
        groups.setdefault(group_key(job.settings), []).append(job)
    for members in groups.values():
        _run_group(members)


def run_batched(settings: dict, output_dir: Path) -> None:
    """Run one experiment on the batched engine and write its outputs (``engine=batched``).

    (``hydra/launcher=batched`` computes a sweep's jobs together and writes each itself.)
    """
    job = BatchJob(settings=settings, output_dir=Path(output_dir))
    run_jobs([job])
    write_job(job)


def write_job(job: BatchJob) -> None:
    """Write a computed job's outputs with the writers every engine uses."""
    from .experiment import setup_run, write_outputs

    mdp, plan, evaluator, q0 = job.setup or setup_run(job.settings)
    job.output_dir.mkdir(parents=True, exist_ok=True)
    write_outputs(job.output_dir, job.settings, mdp, plan, evaluator, q0, job.history,
                  job.q_final, job.wall_s)


# --------------------------------------------------------------------------- one group


@dataclass
class _Tables:
    """Distinct arrays of one kind (e.g. every agent's reward), stacked; equal arrays shared."""

    rows: list[np.ndarray] = field(default_factory=list)
    _by_key: dict[tuple, list[int]] = field(default_factory=dict)
    # id(array given) -> (that array, its row): agents share their tables' objects (cached
    # environments and policies), so most lookups need no hashing or comparison
    _by_id: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict)

    def index(self, array: np.ndarray) -> int:
        seen = self._by_id.get(id(array))
        if seen is not None and seen[0] is array:
            return seen[1]
        given, array = array, np.ascontiguousarray(array)
        row = self._row(array)
        self._by_id[id(given)] = (given, row)
        return row

    def _row(self, array: np.ndarray) -> int:
        key = (array.shape, array.dtype.str, hash(array.tobytes()))
        for i in self._by_key.get(key, []):
            if np.array_equal(self.rows[i], array):
                return i
        self.rows.append(array)
        self._by_key.setdefault(key, []).append(len(self.rows) - 1)
        return len(self.rows) - 1

    def stacked(self, name: str) -> np.ndarray:
        shapes = {row.shape for row in self.rows}
        if len(shapes) > 1:
            raise ValueError(
                f"engine=batched: the agents' {name} tables differ in shape "
                f"({', '.join(map(str, sorted(shapes)))}); use engine=inprocess"
            )
        return np.ascontiguousarray(np.stack(self.rows))


def _environments(jobs: Sequence[BatchJob], num_agents: int):
    """Every agent's tables (deduplicated, stacked), their sampler and first Markov states."""
    from .agent import agent_env, initial_state
    from .batched_kernels import ENV_TABLES, env_tables

    kinds = [_Tables() for _ in ENV_TABLES]
    index = np.empty((len(ENV_TABLES), len(jobs), num_agents), dtype=np.int64)
    states = np.empty((len(jobs), num_agents), dtype=np.int64)
    samplers = set()
    for j, job in enumerate(jobs):
        for k in range(num_agents):
            env = agent_env(job.settings, k)
            sampler, arrays = env_tables(env)
            samplers.add(sampler)
            for t, array in enumerate(arrays):
                index[t, j, k] = kinds[t].index(array)
            states[j, k] = initial_state(env, job.settings["seed"], k)
    if len(samplers) != 1:
        raise ValueError("engine=batched: the jobs of a group use different samplers")
    stacked = [kind.stacked(name) for kind, name in zip(kinds, ENV_TABLES, strict=True)]
    return samplers.pop(), stacked, index, states


def _reply_bytes(shape: tuple[int, int], kinds: list[str]) -> tuple[int, int]:
    """Payload bytes of one reply (its arrays: float ``q``, integer ``counts``) and of one
    instruction (the global ``q``), as Flower's ``Array`` serializes them."""
    from flwr.app import Array

    dtypes = {"float": np.float64, "count": np.int64}
    reply = sum(len(Array(np.zeros(shape, dtype=dtypes[kind])).data) for kind in kinds)
    return reply, len(Array(np.zeros(shape)).data)


def _average_reward_round(strategy, server_round, q_global, tables, seeds, index, sampler,
                          env_arrays) -> tuple[dict, int]:
    """One round of the ``average_reward`` task; returns the strategy's round metrics
    (``AverageRewardQ.aggregate_train``'s) and the steps per agent."""
    from .batched_kernels import average_reward_round

    period = strategy.schedule.period(server_round)
    step_sizes = np.asarray([float(eta) for eta in period.step_sizes], dtype=np.float64)
    average_reward_round(q_global, tables, seeds, index, sampler, *env_arrays[:4],
                         float(period.gamma), step_sizes, server_round)
    extra = {"gamma": period.gamma, "epoch": period.epoch, "epoch_end": int(period.epoch_end)}
    return extra, period.num_steps


def _run_group(jobs: Sequence[BatchJob]) -> None:
    from .batched_kernels import q_learning_round
    from .experiment import setup_run
    from .strategies.protocol import COUNTS, Q
    from .strategies.validation import ArraySpec, ClientUpdate

    start = time.perf_counter()
    s = jobs[0].settings
    mdp, plan, evaluator, q0 = setup_run(s)
    strategy = plan.strategy
    num_agents, num_jobs = int(s["num_clients"]), len(jobs)
    num_states, num_actions = q0.shape
    c = s["client"]
    steps, lr = int(c["local_steps"]), float(c["learning_rate"])
    sampler, env_arrays, index, states = _environments(jobs, num_agents)
    seeds = np.array([job.settings["seed"] for job in jobs], dtype=np.int64)
    q_global = np.ascontiguousarray(np.broadcast_to(q0, (num_jobs, *q0.shape)), dtype=np.float64)
    tables = np.empty((num_agents, *q_global.shape))
    counts = np.empty((num_agents, *q_global.shape), dtype=np.int64)
    stacked = (num_jobs * num_states, num_actions)
    # The replies' checks (validation._check_array) on all replies of the round at once.
    specs = [ArraySpec(spec.name, (num_agents, *stacked), spec.kind)
             for spec in strategy.reply_specs]
    # What a reply carries: the q_learning task sends q and counts, average_reward q alone.
    reply_kinds = ["float"] if strategy.task == AVERAGE_REWARD_TASK else ["float", "count"]
    up, down = _reply_bytes((num_states, num_actions), reply_kinds)
    samples = 0.0  # per agent, the same in every job
    rounds = _Rounds()
    log.info("flower-qlearn: engine=batched, %d jobs of %s on %s (%dx%d), %d clients, %d rounds",
             num_jobs, s["strategy"]["name"], mdp.name, num_states, num_actions, num_agents,
             plan.num_rounds)
    for server_round in range(1, plan.num_rounds + 1):
        if strategy.task == AVERAGE_REWARD_TASK:
            extra, done_steps = _average_reward_round(strategy, server_round, q_global, tables,
                                                      seeds, index, sampler, env_arrays)
        else:
            q_learning_round(q_global, tables, counts, states, seeds, index, sampler, env_arrays,
                             mdp.gamma, lr, steps, server_round, c["sampling"] == "markovian")
            extra, done_steps = {}, steps
        local = {Q: tables.reshape(num_agents, *stacked),
                 COUNTS: counts.reshape(num_agents, *stacked)}
        checked = {sp.name: _checked(local[sp.name], sp, strategy.value_bound, server_round)
                   for sp in specs}
        updates = [
            ClientUpdate(node_id=k, arrays={name: a[k] for name, a in checked.items()},
                         metrics={}, num_bytes=up)
            for k in range(num_agents)
        ]
        q_global = np.ascontiguousarray(strategy.aggregate(updates), dtype=np.float64)
        q_global = q_global.reshape(num_jobs, num_states, num_actions)
        errors = evaluator.many(q_global)
        samples += float(done_steps)
        shared = {
            "round": server_round,
            "samples_per_agent": int(samples) if samples.is_integer() else samples,
            "accepted": num_agents,
            "rejected": 0,
            "missing": 0,
            "bytes_up": num_agents * up,
            "bytes_down": num_agents * down,
            "kept_previous": 0,
            **extra,
        }
        rounds.add(shared, errors, time.perf_counter() - start)
        _progress(server_round, plan.num_rounds, s, start, num_jobs)
    wall = time.perf_counter() - start
    for j, job in enumerate(jobs):
        job.history = rounds.history(j)
        job.q_final = q_global[j].copy()
        job.wall_s = wall
        job.setup = (mdp, plan, evaluator, q0)


class _Rounds:
    """The metrics rows of a group's jobs, by column: what every job's round ``r`` shares (its
    round, samples, counters, the strategy's extras, its wall time) stored once, and each
    job's errors. A job's history is a :class:`~flower_qlearn.outputs.MetricsTable` whose
    rows are the dicts the row-by-row engines record (``{**shared, **errors, "wall_s"}``);
    its shared columns are the same tuples in every job's table, so ``metrics.csv``
    converts them once for the group (:func:`~flower_qlearn.outputs.metrics_text`)."""

    def __init__(self) -> None:
        self.shared: list[dict] = []
        self.errors: list[list[dict]] = []  # per round, per job
        self.walls: list[float] = []
        self._columns: tuple[list[str], list[tuple], tuple] | None = None

    def add(self, shared: dict, errors: list[dict], wall: float) -> None:
        self.shared.append(shared)
        self.errors.append(errors)
        self.walls.append(wall)

    def history(self, job: int) -> Sequence[dict]:
        """Job ``job``'s rows: a table of columns, or the list of row dicts if the rounds do
        not all have the same keys (a table's rows all have its header's)."""
        from .outputs import MetricsTable

        errors = [per_job[job] for per_job in self.errors]
        keys = list(errors[0]) if errors else []
        shared = self._shared_columns()
        if shared is None or any(list(e) != keys for e in errors) or (
                set(keys) & {*shared[0], "wall_s"}):
            return [{**row, **e, "wall_s": wall}
                    for row, e, wall in zip(self.shared, errors, self.walls, strict=True)]
        names, columns, walls = shared
        own = [[e[key] for e in errors] for key in keys]
        return MetricsTable([*names, *keys, "wall_s"], [*columns, *own, walls], len(errors))

    def _shared_columns(self) -> tuple[list[str], list[tuple], tuple] | None:
        """The shared keys, their columns and the wall times (tuples), or None if there are
        no rounds or their shared keys differ."""
        if self._columns is None and self.shared:
            names = list(self.shared[0])
            if all(list(row) == names for row in self.shared) and "wall_s" not in names:
                self._columns = (names, [tuple(row[n] for row in self.shared) for n in names],
                                 tuple(self.walls))
        return self._columns


def _checked(array: np.ndarray, spec: Any, value_bound: float | None, server_round: int):
    """The replies' array after the strategy's reply checks; a failure stops the run."""
    from .strategies.validation import InvalidReply, _check_array

    try:
        return _check_array(array, spec, value_bound)
    except InvalidReply as exc:
        raise RuntimeError(
            f"engine=batched: round {server_round}: a reply would be rejected ({exc}); "
            "rejected replies need engine=inprocess"
        ) from None


def _progress(server_round: int, num_rounds: int, s: Mapping, start: float, jobs: int) -> None:
    every = s["log_every"]
    if every and (server_round % every == 0 or server_round == num_rounds):
        elapsed = time.perf_counter() - start
        log.info("[batched] round %d/%d of %d jobs, %.1fs", server_round, num_rounds, jobs,
                 elapsed)
