"""Flower ClientApp: one Q-learning agent per node, built from the instruction's ConfigRecord.

Every ``train`` message says what to run (wire format in
:mod:`flower_qlearn.strategies.protocol`): the global table (ArrayRecord ``"q"``) and a
ConfigRecord with the client's whole task as flat keys named as in the composed config
(``task``, ``server-round``, ``seed``, ``num_clients``, ``mdp.*``, ``client.*``, and the task's
own round keys). A key left out takes its default from ``conf/``; an unknown key or a bad value
is answered with a Flower error reply whose reason names the key and its allowed range. So any
ServerApp (ours or a user's) can drive this ClientApp with Flower's own records alone.

The agent's index is the node's ``partition-id`` (node config); its Markov state persists
across rounds in ``Context.state`` because ClientApp objects themselves are ephemeral. A node
config may also set ``heterogeneity`` and ``perturb-seed`` (its own perturbed MDP).

This module never imports Hydra or OmegaConf, and loads only the compiled kernel its task needs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import PARTITION_ID_KEY, ErrorCode

from . import defaults
from .agent import agent_env, round_rng
from .attacks import apply_attack
from .schema import TASK_RULES, ConfigError, validate
from .strategies import registry
from .strategies.protocol import (
    ARRAYS,
    COMPUTE_S,
    CONFIG,
    METRICS,
    NODE_HETEROGENEITY,
    NODE_PERTURB_SEED,
    PARTITION_ID,
    SERVER_ROUND,
    TASK,
    TASK_GROUPS,
    TASK_TOP_KEYS,
    Q,
    flatten,
    unflatten,
)

#: ``Context.state`` record holding the agent's persistent state (its Markov state).
AGENT_STATE = "agent"


def task_settings(config: Mapping[str, Any]) -> tuple[registry.ClientTask, dict, int]:
    """The task, its validated settings and the round of an instruction's ConfigRecord.

    Returns ``(task, settings, server_round)``: ``settings`` is the nested dict ``seed``,
    ``num_clients``, ``mdp``, ``client`` (conf defaults filled in) plus the task's round keys
    (flat). Raises :class:`~flower_qlearn.schema.ConfigError` naming an unknown key or a bad
    value.
    """
    registry.load_all()
    flat = dict(config)
    name = flat.pop(TASK, None)
    if name not in registry.TASKS:
        raise ConfigError(
            f"invalid task config: {TASK}={name!r} is not a task; expected one of "
            f"{', '.join(sorted(registry.TASKS))}"
        )
    task = registry.TASKS[name]
    server_round = flat.pop(SERVER_ROUND, None)
    if not (isinstance(server_round, int) and not isinstance(server_round, bool)):
        raise ConfigError(f"invalid task config: {SERVER_ROUND} is missing; expected an integer")
    round_values = {k: flat.pop(k) for k in list(flat) if k in task.round_keys}
    given = unflatten(flat)
    try:
        base = {k: v for k, v in defaults.top_level_defaults().items() if k in TASK_TOP_KEYS}
        base["mdp"] = defaults.group_defaults("mdp", (given.get("mdp") or {}).get("name"))
        base["client"] = defaults.group_defaults("client")
    except KeyError as exc:
        raise ConfigError(f"invalid task config: {exc.args[0]}") from None
    allowed = set(flatten(base))
    unknown = sorted(k for k in flat if k not in allowed)
    if unknown:
        raise ConfigError(
            f"invalid task config: unknown key {unknown[0]!r}; task {name} takes {TASK}, "
            f"{SERVER_ROUND}, {', '.join(TASK_TOP_KEYS)}, "
            + ", ".join(f"{g}.*" for g in TASK_GROUPS)
            + "".join(f", {k}" for k in sorted(task.round_keys))
        )
    settings = defaults.merge(base, given)
    validate(settings, TASK_RULES)
    validate(unflatten(round_values), task.round_rules)
    settings.update(round_values)
    return task, settings, int(server_round)


def partition_id(context: Context) -> int:
    """This node's agent index: ``partition-id`` from the node config (simulation or SuperNode)."""
    if PARTITION_ID_KEY not in context.node_config:
        raise ConfigError(
            f"node config has no '{PARTITION_ID_KEY}': start the SuperNode with "
            f'--node-config "{PARTITION_ID_KEY}=<k>"'
        )
    return int(context.node_config[PARTITION_ID_KEY])


def handle_train(message: Message, context: Context) -> Message:
    """Run the local task the server asked for and reply with NumPy arrays and metrics.

    A bad instruction (unknown key, value out of range, no table) is answered with a Flower
    error reply whose reason is one line naming what is wrong.
    """
    start = time.perf_counter()
    try:
        task, settings, server_round = task_settings(message.content[CONFIG])
        agent = partition_id(context)
        record = message.content[ARRAYS]
        if Q not in record:
            raise ConfigError(f"invalid instruction: no array {Q!r} in the ArrayRecord")
        node = context.node_config
        perturb_seed = node.get(NODE_PERTURB_SEED)
        env = agent_env(
            settings,
            agent,
            heterogeneity=node.get(NODE_HETEROGENEITY),
            perturb_seed=None if perturb_seed is None else int(perturb_seed),
        )
    except (ConfigError, ValueError, KeyError) as exc:
        reason = str(exc) if isinstance(exc, ConfigError) else f"invalid instruction: {exc}"
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)
    q = np.array(record[Q].numpy(), dtype=np.float64, copy=True, order="C")
    expected = task.expected_shape(settings, env)  # the Q-table (S, A) unless the task says
    if q.shape != expected:
        reason = f"invalid instruction: table {Q!r} has shape {q.shape}, expected {expected}"
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)
    sleep_s = float(settings["client"]["sleep_s"])
    if sleep_s > 0:
        time.sleep(sleep_s)  # an artificially slow client
    stored = context.state.config_records.get(AGENT_STATE)
    job = registry.TaskJob(
        q=q,
        settings=settings,
        agent=agent,
        server_round=server_round,
        env=env,
        rng=round_rng(settings["seed"], agent, server_round),
        state=dict(stored) if stored is not None else {},
    )
    arrays, metrics = task.run(job)
    arrays = apply_attack(arrays, settings, task.name, agent, server_round)  # experiments only
    if job.state:
        context.state.config_records[AGENT_STATE] = ConfigRecord(dict(job.state))
    metrics = {**metrics, PARTITION_ID: agent, COMPUTE_S: time.perf_counter() - start}
    content = RecordDict(
        {
            ARRAYS: ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
            METRICS: MetricRecord(metrics),
        }
    )
    return Message(content, reply_to=message)


def make_client_app() -> ClientApp:
    """A new ClientApp running :func:`handle_train` on every ``train`` message."""
    client = ClientApp()

    @client.train()
    def train(message: Message, context: Context) -> Message:
        return handle_train(message, context)

    return client


app = make_client_app()
