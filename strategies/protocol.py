"""The wire protocol between the strategies and the ClientApp: every record, array, key and
metric name, declared once and imported by both sides.

Instruction (server -> node), message type ``train``::

    RecordDict({"arrays": ArrayRecord({"q": (S, A) float64}),
                "config": ConfigRecord({"task": ..., "server-round": r,
                                        "seed": ..., "num_clients": ...,
                                        "mdp.name": ..., "mdp.gamma": ..., ...,
                                        "client.local_steps": ..., ...,
                                        <the task's own round keys>})})

The ConfigRecord carries the client's whole task as flat keys named as in the composed config;
a key left out takes its default from ``conf/``; an unknown key or a bad value is answered with
a Flower error reply whose reason names the key. Reply (node -> server)::

    RecordDict({"arrays": ArrayRecord({"q": ..., "counts": ...} or {"g": ...}),
                "metrics": MetricRecord({"num_samples": ..., "partition_id": ..., ...})})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# --- records --------------------------------------------------------------------------------
ARRAYS = "arrays"  #: ArrayRecord of an instruction and of a reply
CONFIG = "config"  #: ConfigRecord of an instruction
METRICS = "metrics"  #: MetricRecord of a reply

# --- arrays ---------------------------------------------------------------------------------
Q = "q"  #: the global table down, the local table up
COUNTS = "counts"  #: visit counts N_k(s, a) of the round (importance averaging)
OPERATOR = "g"  #: DASA: the agent's operator at the received iterate

# --- instruction keys -----------------------------------------------------------------------
TASK = "task"  #: which local task the client runs (a registered task name)
SERVER_ROUND = "server-round"  #: Flower's own name for the round number
#: Top-level keys of the composed config that are part of every client's task.
TASK_TOP_KEYS = ("seed", "num_clients")
#: Config groups whose every key is part of every client's task.
TASK_GROUPS = ("mdp", "client")
#: Task keys the server reads back to know what a round asked for (samples, visit counts).
#: An adaptive ``client.sync`` schedule (:mod:`.sync`) sets LOCAL_STEPS per round.
LOCAL_STEPS = "client.local_steps"
#: The round's step size, when an adaptive ``client.sync`` schedule halves it (:mod:`.sync`).
LEARNING_RATE = "client.learning_rate"
SAMPLING = "client.sampling"

# --- reply metrics --------------------------------------------------------------------------
NUM_SAMPLES = "num_samples"  #: local steps (or transitions) the agent used this round
PARTITION_ID = "partition_id"  #: the agent's index (its node's partition-id)
COMPUTE_S = "compute_s"  #: seconds the ClientApp spent on the message
ITERATION = "iteration"  #: DASA: the iteration t the operator was computed at (echoed)

# --- node config ----------------------------------------------------------------------------
#: Optional node-config keys (``flower-supernode --node-config``) that give one SuperNode its own
#: environment: the perturbation level and seed of its MDP.
NODE_HETEROGENEITY = "heterogeneity"
NODE_PERTURB_SEED = "perturb-seed"


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> flat dict with dotted keys (``{"mdp": {"gamma": 0.9}}`` -> ``mdp.gamma``)."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat dict with dotted keys -> nested dict (the inverse of :func:`flatten`)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def task_keys(settings: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The flat task keys of an instruction from a composed config (plain nested dict).

    Null values are left out (the client then takes the conf default, which is null); lists
    stay lists (a ConfigRecord holds lists of scalars).
    """
    keys: dict[str, Any] = {TASK: task}
    for name in TASK_TOP_KEYS:
        keys[name] = settings[name]
    for group in TASK_GROUPS:
        keys.update(flatten(settings[group], group + "."))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in keys.items() if v is not None}
