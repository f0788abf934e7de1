"""Flower ServerApp: compose the config, build the strategy, run rounds, evaluate, write outputs.

One round: ``strategy.configure_train`` -> grid -> ClientApps -> ``strategy.aggregate_train``
(validation, then the strategy's pure aggregation function) -> evaluation of the new global
Q-table against the exact ground truth -> one metrics row. The same code runs on the in-process
engine, under Ray and on a SuperLink; the configuration always comes from the Hydra overrides in
the Flower run config (key ``overrides``), the output directory from ``output-dir``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig

import strategies

from . import config as fq_config
from .client_app import base_mdp
from .mdp import TabularMDP
from .solvers import greedy_policy, optimal_gain, optimal_q, policy_gain

log = logging.getLogger("flower_qlearn")

#: Columns of ``metrics.csv`` in this order (DESIGN.md); extra metrics follow, sorted.
METRIC_COLUMNS = (
    "round",
    "samples_per_agent",
    "q_error",
    "normalized_q_error",
    "gain_error",
    "policy_gain_gap",
    "gamma",
    "accepted",
    "rejected",
    "skipped",
    "bytes_up",
    "bytes_down",
    "wall_s",
)


# --------------------------------------------------------------------------------------------
# Strategy construction: one builder per ``strategy.name``.
# --------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What the server runs: the strategy, the per-round config for clients, how many rounds."""

    strategy: strategies.QTableStrategy
    train_config: ConfigRecord
    num_rounds: int
    objective: str = "discounted"  # or "average_reward": decides the evaluation metrics
    #: The round loop; None = :func:`synchronous_rounds`. DASA's real-asynchrony mode has its own.
    loop: Callable[[RunContext], None] | None = None


def _q_learning_config(cfg: DictConfig) -> ConfigRecord:
    return ConfigRecord(
        {
            "task": "q_learning",
            "sampling": str(cfg.client.sampling),
            "local_steps": int(cfg.client.local_steps),
            "learning_rate": float(cfg.client.learning_rate),
            "gamma": float(cfg.mdp.gamma),
        }
    )


def _value_bound(mdp: TabularMDP) -> float:
    # Q-learning iterates from 0 with rewards in [0, 1] stay in [0, 1/(1-gamma)]; a reply far
    # outside is corrupt, not merely noisy.
    return 2.0 / (1.0 - mdp.gamma) + 1.0


def common_strategy_args(cfg: DictConfig, mdp: TabularMDP) -> dict:
    """Keyword arguments every QTableStrategy gets from the run config."""
    return {
        "min_replies": int(cfg.min_replies),
        "value_bound": _value_bound(mdp),
        "min_available_nodes": int(cfg.num_clients),
        "wait_timeout": float(cfg.round_timeout),
    }


def build_equal(cfg: DictConfig, mdp: TabularMDP) -> Plan:
    strategy = strategies.EqualAveraging(
        mdp.num_states, mdp.num_actions, **common_strategy_args(cfg, mdp)
    )
    return Plan(strategy, _q_learning_config(cfg), cfg.num_rounds)


def build_importance(cfg: DictConfig, mdp: TabularMDP) -> Plan:
    strategy = strategies.ImportanceAveraging(
        mdp.num_states,
        mdp.num_actions,
        learning_rate=float(cfg.client.learning_rate),
        **common_strategy_args(cfg, mdp),
    )
    return Plan(strategy, _q_learning_config(cfg), cfg.num_rounds)


def build_average_reward(cfg: DictConfig, mdp: TabularMDP) -> Plan:
    """Federated average-reward Q-learning: the epoch schedule decides the number of rounds.

    ``cfg.num_rounds`` is ignored (the schedule has ``sum_e |C_e|`` rounds). An MDP whose optimal
    gain differs across states is refused here, before any round, with the solver's reason.
    """
    from .solvers import NonConstantGainError

    try:
        optimal_gain(mdp)
    except NonConstantGainError as exc:
        raise NonConstantGainError(
            f"invalid config: strategy=average_reward needs an MDP whose optimal gain is the "
            f"same in every state, but on {mdp.name}: {exc}"
        ) from None
    schedule = strategies.EpochSchedule(
        str(cfg.strategy.schedule),
        int(cfg.strategy.num_epochs),
        int(cfg.num_clients),
        c_T=float(cfg.strategy.c_T),
        c_eta=float(cfg.strategy.c_eta),
    )
    args = common_strategy_args(cfg, mdp)
    del args["value_bound"]  # normalized values live in [0, 1]: the strategy's own, tighter bound
    strategy = strategies.AverageRewardQ(mdp.num_states, mdp.num_actions, schedule, **args)
    train_config = ConfigRecord({"task": "average_reward"})
    return Plan(strategy, train_config, schedule.num_rounds, objective="average_reward")


def build_dasa(cfg: DictConfig, mdp: TabularMDP) -> Plan:
    """DASA (or its baselines) on batch Q-learning operators; one round = one server iteration.

    ``strategy.execution=async`` swaps the round loop for the real-asynchrony loop.
    """
    s = cfg.strategy
    common = common_strategy_args(cfg, mdp)
    # |g| <= 1 + (1 + gamma) ||theta||_inf; slack for transients of a large step size.
    operator_bound = 4.0 * (1.0 + (1.0 + mdp.gamma) * _value_bound(mdp))
    strategy = strategies.DASA(
        mdp.num_states,
        mdp.num_actions,
        num_agents=int(cfg.num_clients),
        rule=str(s.rule),
        step_size=float(s.step_size),
        epsilon=float(s.epsilon),
        batch_size=int(s.batch_size),
        delays=strategies.DelayModel.from_config(
            fq_config.to_container(cfg.delay), int(cfg.num_clients), int(cfg.seed)
        ),
        max_staleness=int(s.max_staleness),
        norm=str(s.norm),
        execution=str(s.execution),
        tick_s=float(s.tick_s),
        value_bound=operator_bound,
        min_available_nodes=common["min_available_nodes"],
        wait_timeout=common["wait_timeout"],
    )
    train_config = ConfigRecord(
        {"task": "q_operator", "batch_size": int(s.batch_size), "gamma": float(mdp.gamma)}
    )
    loop = strategies.asynchronous_iterations if s.execution == "async" else None
    return Plan(strategy, train_config, cfg.num_rounds, loop=loop)


#: ``strategy.name`` -> builder. Other strategy modules register themselves here.
PLAN_BUILDERS: dict[str, Callable[[DictConfig, TabularMDP], Plan]] = {
    "equal": build_equal,
    "importance": build_importance,
    "average_reward": build_average_reward,
    "dasa": build_dasa,
}


# --------------------------------------------------------------------------------------------
# Evaluation against exact ground truth.
# --------------------------------------------------------------------------------------------


class Evaluator:
    """Errors of a global Q-table against the exact solution of the experiment's MDP."""

    def __init__(self, mdp: TabularMDP, objective: str) -> None:
        self.mdp = mdp
        self.objective = objective
        if objective == "average_reward":
            self.rho, self.h = optimal_gain(mdp)
            self.q_star = None
        else:
            self.q_star = optimal_q(mdp)

    def __call__(self, q: np.ndarray) -> dict[str, float]:
        if self.objective == "average_reward":
            v = q.max(axis=1)
            return {
                "gain_error": float(np.max(np.abs(v - self.rho))),
                "rho_hat": float(v.mean()),
                "rho_hat_max": float(v.max()),
                "rho_hat_min": float(v.min()),
                "policy_gain_gap": float(self.rho - policy_gain(self.mdp, greedy_policy(q))),
            }
        err = float(np.max(np.abs(q - self.q_star)))
        return {"q_error": err, "normalized_q_error": (1.0 - self.mdp.gamma) * err}

    def truth(self) -> dict:
        if self.objective == "average_reward":
            return {"rho_star": float(self.rho)}
        return {"q_star_max": float(self.q_star.max()), "q_star_min": float(self.q_star.min())}


# --------------------------------------------------------------------------------------------
# Outputs.
# --------------------------------------------------------------------------------------------


def write_metrics(path: Path, history: list[dict]) -> None:
    """Write ``metrics.csv``: DESIGN.md columns first, extras after; empty cell = not applicable."""
    extras = sorted({k for row in history for k in row} - set(METRIC_COLUMNS))
    columns = list(METRIC_COLUMNS) + extras
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in history:
            writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    tmp.replace(path)


def read_metrics(path: Path) -> list[dict]:
    """Read ``metrics.csv`` back: numbers as int/float, empty cells as ``None``."""

    def parse(text: str):
        if text == "":
            return None
        try:
            return int(text)
        except ValueError:
            return float(text)

    with Path(path).open(newline="") as fh:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------
# The run: a RunContext carries the state of the server; a loop drives the rounds.
# --------------------------------------------------------------------------------------------

CHECKPOINT_NAME = "checkpoint.pkl"


@dataclass
class RunContext:
    """Everything a round loop needs, and the one place that records a finished round.

    A loop (``Plan.loop``, default :func:`synchronous_rounds`) talks to the grid and the strategy
    and calls :meth:`record` once per server round/iteration; recording evaluates the global
    table, logs progress, and writes metrics and checkpoints.
    """

    grid: Grid
    cfg: DictConfig
    plan: Plan
    evaluator: Evaluator
    output_dir: Path
    arrays: ArrayRecord
    history: list[dict]
    samples: float = 0.0
    wall_start: float = 0.0
    wall_offset: float = 0.0  # wall time already spent before a resume

    @property
    def completed_rounds(self) -> int:
        return len(self.history)

    def record(self, server_round: int, arrays: ArrayRecord | None, metrics: dict) -> dict:
        """Adopt ``arrays`` (None: keep the previous global Q), evaluate it and log one row."""
        if arrays is not None:
            self.arrays = arrays
        metrics = dict(metrics)
        self.samples += float(metrics.pop("num_samples", 0.0) or 0.0)
        for client_only in ("partition_id", "compute_s"):
            metrics.pop(client_only, None)
        samples = int(self.samples) if float(self.samples).is_integer() else self.samples
        row = {"round": server_round, "samples_per_agent": samples}
        row.update(metrics)
        row.update(self.evaluator(self.arrays["q"].numpy()))
        row["wall_s"] = self.wall_offset + time.perf_counter() - self.wall_start
        self.history.append(row)
        _progress(self.cfg, self.plan, row)
        every = int(self.cfg.checkpoint_every)
        if every and server_round % every == 0:
            self.checkpoint()
        elif self.cfg.log_every and server_round % self.cfg.log_every == 0:
            write_metrics(self.output_dir / "metrics.csv", self.history)
        return row

    # --- checkpoint and resume ------------------------------------------------------------
    def checkpoint(self) -> Path:
        """Write the run's state atomically (write, then rename) next to its metrics."""
        state = {
            "version": 1,
            "identity": _identity(self.cfg),
            "round": self.completed_rounds,
            "q": self.arrays["q"].numpy(),
            "history": self.history,
            "samples": self.samples,
            "wall_s": self.wall_offset + time.perf_counter() - self.wall_start,
            "strategy": _strategy_state(self.plan.strategy),
            "grid": _grid_state(self.grid),
        }
        path = self.output_dir / CHECKPOINT_NAME
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        write_metrics(self.output_dir / "metrics.csv", self.history)
        return path

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint written by :meth:`checkpoint` for the same experiment."""
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_NAME
        if not path.exists():
            raise FileNotFoundError(f"resume: no checkpoint at {path}")
        with path.open("rb") as fh:  # our own file (trusted): written by checkpoint() above
            state = pickle.load(fh)
        mine, theirs = _identity(self.cfg), state["identity"]
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise fq_config.ConfigError(
                f"resume: checkpoint {path} is of a different experiment (differs in {diff})"
            )
        self.arrays = ArrayRecord({"q": Array(np.asarray(state["q"]))})
        self.history = list(state["history"])
        self.samples = float(state["samples"])
        self.wall_offset = float(state["wall_s"])
        if state["strategy"] is not None and hasattr(self.plan.strategy, "load_state_dict"):
            self.plan.strategy.load_state_dict(state["strategy"])
        if state["grid"] is not None and hasattr(self.grid, "restore_state"):
            self.grid.restore_state(state["grid"])
        else:
            log.warning(
                "resume: client state (the agents' Markov states) is not restored on this "
                "engine; trajectories restart from the initial distribution"
            )
        log.info("resume: continuing after round %d from %s", self.completed_rounds, path)


def _identity(cfg: DictConfig) -> dict:
    """The parts of a config a resumed run must share with its checkpoint."""
    c = fq_config.to_container(cfg)
    identity = {k: c.get(k) for k in ("strategy", "mdp", "client", "delay", "num_clients", "seed")}
    identity["client"] = {k: v for k, v in (c.get("client") or {}).items() if k != "sleep_s"}
    return identity


def _grid_state(grid: Grid) -> dict | None:
    return grid.checkpoint_state() if hasattr(grid, "checkpoint_state") else None


def _strategy_state(strategy) -> dict | None:
    return strategy.state_dict() if hasattr(strategy, "state_dict") else None


def synchronous_rounds(run: RunContext) -> None:
    """The default loop: broadcast, wait for the replies, aggregate, record; round after round."""
    strategy, plan = run.plan.strategy, run.plan
    for server_round in range(run.completed_rounds + 1, plan.num_rounds + 1):
        messages = strategy.configure_train(server_round, run.arrays, plan.train_config, run.grid)
        replies = run.grid.send_and_receive(messages, timeout=float(run.cfg.round_timeout))
        new_arrays, metrics = strategy.aggregate_train(server_round, replies)
        run.record(server_round, new_arrays, dict(metrics or MetricRecord()))


def run_server(grid: Grid, cfg: DictConfig, output_dir: Path) -> list[dict]:
    """Run every round of the experiment ``cfg`` over ``grid``; write outputs to ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    mdp = base_mdp(cfg)
    plan = PLAN_BUILDERS[cfg.strategy.name](cfg, mdp)
    evaluator = Evaluator(mdp, plan.objective)
    q0 = np.zeros((mdp.num_states, mdp.num_actions))
    run = RunContext(
        grid=grid,
        cfg=cfg,
        plan=plan,
        evaluator=evaluator,
        output_dir=output_dir,
        arrays=ArrayRecord({"q": Array(q0)}),
        history=[],
        wall_start=time.perf_counter(),
    )
    if cfg.resume:
        run.restore(Path(str(cfg.resume)))
    log.info(
        "flower-qlearn: %s on %s (%dx%d), %d clients, %d rounds, engine=%s -> %s",
        cfg.strategy.name,
        mdp.name,
        mdp.num_states,
        mdp.num_actions,
        cfg.num_clients,
        plan.num_rounds,
        cfg.engine.name,
        output_dir,
    )
    (plan.loop or synchronous_rounds)(run)
    history = run.history
    wall = run.wall_offset + time.perf_counter() - run.wall_start
    write_metrics(output_dir / "metrics.csv", history)
    np.save(output_dir / "q_table.npy", run.arrays["q"].numpy())
    summary = {
        "strategy": cfg.strategy.name,
        "mdp": mdp.name,
        "engine": cfg.engine.name,
        "num_clients": cfg.num_clients,
        "num_rounds": plan.num_rounds,
        "seed": cfg.seed,
        "objective": plan.objective,
        "initial": evaluator(q0),
        "final": {k: _jsonable(v) for k, v in history[-1].items()} if history else {},
        "ground_truth": evaluator.truth(),
        "rejected_total": int(sum(r.get("rejected", 0) or 0 for r in history)),
        "resumed_from": str(cfg.resume) if cfg.resume else None,
        "wall_s": wall,
        "config": fq_config.to_container(cfg),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.figures:
        from .plots import plot_run

        plot_run(history, output_dir / "figures", objective=plan.objective, title=_title(cfg))
    log.info("flower-qlearn: done in %.2fs, outputs in %s", wall, output_dir)
    return history


def _title(cfg: DictConfig) -> str:
    return (
        f"{cfg.strategy.name} on {cfg.mdp.name}, K={cfg.num_clients}, "
        f"{cfg.client.sampling}/{cfg.client.behavior}"
    )


def _job_tag() -> str:
    """``"[job N] "`` inside a Hydra multirun job (N = Hydra's job number), else ``""``.

    Why: with a parallel launcher the progress lines of several jobs interleave; the number
    matches Hydra's ``#N : overrides`` line and the job's output directory.
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return f"[job {HydraConfig.get().job.num}] "
    except Exception:  # noqa: BLE001 - progress must never break a run
        pass
    return ""


def _progress(cfg: DictConfig, plan: Plan, row: dict) -> None:
    r = row["round"]
    if not cfg.log_every or (r % cfg.log_every and r != plan.num_rounds):
        return
    err = (
        f"gain_error={row['gain_error']:.4g}"
        if plan.objective == "average_reward"
        else f"q_error={row['q_error']:.4g}"
    )
    log.info(
        "%s[round %d/%d] samples/agent=%d %s accepted=%s rejected=%s (%.1fs)",
        _job_tag(),
        r,
        plan.num_rounds,
        row["samples_per_agent"],
        err,
        row.get("accepted"),
        row.get("rejected"),
        row["wall_s"],
    )


def make_server_app(run_config: dict | None = None) -> ServerApp:
    """A ServerApp; ``run_config`` fills in the run config where the runtime leaves it empty."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        merged = dict(run_config or {})
        merged.update({k: v for k, v in context.run_config.items() if v not in ("", None)})
        cfg = fq_config.compose(str(merged.get(fq_config.OVERRIDES_KEY, "")))
        output_dir = merged.get(fq_config.OUTPUT_DIR_KEY) or cfg.output_dir
        if not output_dir:
            from .engine import default_output_dir

            output_dir = default_output_dir().resolve()
        run_server(grid, cfg, Path(str(output_dir)))

    return server


app = make_server_app()
