"""One experiment on a Flower grid: build the strategy, run its rounds, evaluate, write outputs.

One round: ``strategy.configure_train`` -> grid -> ClientApps -> ``strategy.aggregate_train``
(validation, then the strategy's pure aggregation function) -> evaluation of the new global
Q-table against the exact ground truth -> one metrics row (:meth:`RunContext.record`). The same
code runs on every engine; the settings are a validated composed config as a plain dict.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord
from flwr.serverapp import Grid

from . import checkpoint, outputs, progress
from .agent import experiment_mdp, objective_mdp
from .evaluation import Evaluator
from .mc_eval import PolicyEvaluator
from .strategies import registry
from .strategies.protocol import COMPUTE_S, NUM_SAMPLES, PARTITION_ID, Q

log = logging.getLogger("flower_qlearn")


@dataclass
class RunContext:
    """The server's state during a run, and the one place that records a finished round.

    A round loop (``Plan.loop``) calls :meth:`record` once per server round/iteration;
    recording evaluates the global table, logs progress, and writes metrics and checkpoints.
    """

    grid: Grid
    settings: dict
    plan: registry.Plan
    evaluator: Evaluator
    output_dir: Path
    arrays: ArrayRecord
    history: list[dict]
    samples: float = 0.0
    wall_start: float = 0.0
    wall_offset: float = 0.0  # wall time already spent before a resume
    #: Extra per-round metrics of the global table, ``(round, q) -> dict`` (e.g. Monte-Carlo
    #: episodes of its greedy policy, :mod:`flower_qlearn.mc_eval`); None: none.
    policy_eval: Callable[[int, np.ndarray], dict] | None = None
    _first_round: int | None = None  # the first round this process recorded (for the rate)

    @property
    def completed_rounds(self) -> int:
        return len(self.history)

    def record(self, server_round: int, arrays: ArrayRecord | None, metrics: Any) -> ArrayRecord:
        """Adopt ``arrays`` (None: keep the previous global Q), evaluate it and log one row.

        Returns the global arrays from now on (the loops' ``on_round`` contract).
        """
        if arrays is not None:
            self.arrays = arrays
        metrics = dict(metrics or MetricRecord())
        self.samples += float(metrics.pop(NUM_SAMPLES, 0.0) or 0.0)
        for client_only in (PARTITION_ID, COMPUTE_S):
            metrics.pop(client_only, None)
        samples = int(self.samples) if float(self.samples).is_integer() else self.samples
        row = {"round": server_round, "samples_per_agent": samples}
        row.update(metrics)
        row.update(self.evaluator(self.arrays[Q].numpy()))
        if self.policy_eval is not None:
            row.update(self.policy_eval(server_round, self.arrays[Q].numpy()))
        row["wall_s"] = self.wall_offset + time.perf_counter() - self.wall_start
        self.history.append(row)
        self._progress(row)
        s = self.settings
        every = int(s["checkpoint_every"])
        if every and server_round % every == 0:
            self.checkpoint()
        elif s["log_every"] and server_round % s["log_every"] == 0:
            outputs.write_metrics(self.output_dir / outputs.METRICS_FILE, self.history)
        return self.arrays

    # --- checkpoint and resume ------------------------------------------------------------
    def interrupted(self) -> KeyboardInterrupt:
        """Ctrl-C: keep the rounds done so far in ``metrics.csv``; the one line to show."""
        outputs.write_metrics(self.output_dir / outputs.METRICS_FILE, self.history)
        return KeyboardInterrupt(
            f"{_job_tag()}interrupted after round {self.completed_rounds}/{self.plan.num_rounds}"
            f"; partial results in {self.output_dir / outputs.METRICS_FILE}"
        )

    def checkpoint(self) -> Path:
        """Write the run's state atomically next to its metrics."""
        strategy, grid = self.plan.strategy, self.grid
        state = {
            "identity": checkpoint.identity(self.settings),
            "round": self.completed_rounds,
            "q": self.arrays[Q].numpy(),
            "history": self.history,
            "samples": self.samples,
            "wall_s": self.wall_offset + time.perf_counter() - self.wall_start,
            "strategy": strategy.state_dict() if hasattr(strategy, "state_dict") else None,
            "grid": grid.checkpoint_state() if hasattr(grid, "checkpoint_state") else None,
        }
        path = checkpoint.write(self.output_dir / checkpoint.CHECKPOINT_NAME, state)
        outputs.write_metrics(self.output_dir / outputs.METRICS_FILE, self.history)
        return path

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint written by :meth:`checkpoint` for the same experiment."""
        state = checkpoint.load(path, self.settings, plan=self.plan)  # every value checked
        if state["strategy"] is not None and hasattr(self.plan.strategy, "load_state_dict"):
            checkpoint.load_strategy_state(state["path"], self.plan.strategy, state["strategy"])
        self.arrays = ArrayRecord({Q: Array(np.ascontiguousarray(state["q"], np.float64))})
        self.history = list(state["history"])
        self.samples = float(state["samples"])
        self.wall_offset = float(state["wall_s"])
        if state["grid"] is not None and hasattr(self.grid, "restore_state"):
            self.grid.restore_state(state["grid"])
        else:
            log.warning(
                "resume: client state (the agents' Markov states) is not restored on this "
                "engine; trajectories restart from the initial distribution"
            )
        log.info("resume: continuing after round %d from %s", self.completed_rounds, state["path"])

    def _progress(self, row: dict) -> None:
        r, every = row["round"], self.settings["log_every"]
        if self._first_round is None:
            self._first_round = r
        if not every or (r % every and r != self.plan.num_rounds):
            return
        done_here = r - self._first_round + 1
        elapsed = time.perf_counter() - self.wall_start
        line = progress.round_line(row, self.plan.num_rounds, elapsed, done_here)
        log.info("%s%s", _job_tag(), line)


def run_server(grid: Grid, settings: dict, output_dir: Path) -> list[dict]:
    """Run every round of the experiment ``settings`` over ``grid``; write outputs.

    ``settings`` is a validated composed config as a plain nested dict
    (:func:`flower_qlearn.config.settings`). Returns the per-round metrics.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    mdp, plan, evaluator, q0 = setup_run(settings)
    run = RunContext(
        grid=grid,
        settings=settings,
        plan=plan,
        evaluator=evaluator,
        policy_eval=PolicyEvaluator.from_settings(settings, mdp),
        output_dir=output_dir,
        arrays=ArrayRecord({Q: Array(q0)}),
        history=[],
        wall_start=time.perf_counter(),
    )
    if settings.get("resume"):
        run.restore(Path(str(settings["resume"])))
    log.info(
        "flower-qlearn: %s on %s (%dx%d), %d clients, %d rounds, engine=%s -> %s",
        settings["strategy"]["name"],
        mdp.name,
        mdp.num_states,
        mdp.num_actions,
        settings["num_clients"],
        plan.num_rounds,
        engine_that_ran(grid),
        output_dir,
    )
    try:
        plan.loop(
            plan.strategy,
            grid,
            run.arrays,
            plan.train_config,
            plan.num_rounds,
            start=run.completed_rounds,
            round_timeout=float(settings["round_timeout"]),
            on_round=run.record,
        )
    except KeyboardInterrupt:
        raise run.interrupted() from None
    history = run.history
    wall = run.wall_offset + time.perf_counter() - run.wall_start
    write_outputs(output_dir, settings, mdp, plan, evaluator, q0, history, run.arrays[Q].numpy(),
                  wall, engine=engine_that_ran(grid))
    return history


def setup_run(settings: dict) -> tuple[Any, registry.Plan, Evaluator, np.ndarray]:
    """The experiment's MDP, its plan (strategy, rounds), its evaluator and the initial table.

    Shared by :func:`run_server` and the batched engine (:mod:`flower_qlearn.batched`).
    """
    mdp = experiment_mdp(settings["mdp"])
    registry.load_all()
    plan = registry.STRATEGIES[settings["strategy"]["name"]].build(settings, mdp)
    # client.environment=own: the global objective (averaged environment), not mdp itself.
    evaluator = Evaluator(objective_mdp(settings), plan.objective, plan.ground_truth)
    q0 = np.zeros(plan.iterate_shape or (mdp.num_states, mdp.num_actions))
    return mdp, plan, evaluator, q0


def write_outputs(
    output_dir: Path,
    settings: dict,
    mdp: Any,
    plan: registry.Plan,
    evaluator: Evaluator,
    q0: np.ndarray,
    history: Sequence[dict],
    q_final: np.ndarray,
    wall: float,
    engine: str | None = None,
) -> None:
    """Write a finished run's ``metrics.csv``, ``q_table.npy``, ``summary.json`` and figures.

    Shared by :func:`run_server` and the batched engine (:mod:`flower_qlearn.batched`).
    ``engine`` is the engine that really ran (default: the configured ``engine.name``).
    """
    outputs.write_metrics(output_dir / outputs.METRICS_FILE, history)
    np.save(output_dir / outputs.Q_TABLE_FILE, q_final)
    summary = {
        "strategy": settings["strategy"]["name"],
        "mdp": mdp.name,
        "engine": engine or settings["engine"]["name"],
        "num_clients": settings["num_clients"],
        "num_rounds": plan.num_rounds,
        "seed": settings["seed"],
        "objective": plan.objective,
        "initial": evaluator(q0),
        "final": {k: outputs.jsonable(v) for k, v in history[-1].items()} if history else {},
        "ground_truth": evaluator.truth(),
        "rejected_total": int(sum(v or 0 for v in outputs.history_column(history, "rejected"))),
        "resumed_from": str(settings["resume"]) if settings.get("resume") else None,
        "wall_s": wall,
        "config": settings,
    }
    outputs.write_summary(output_dir, summary)
    if settings["figures"]:
        from .plots import plot_run

        plot_run(history, output_dir / "figures", objective=plan.objective, title=_title(settings))
    log.info("flower-qlearn: done in %.2fs, outputs in %s", wall, output_dir)


def engine_that_ran(grid: Grid) -> str:
    """The engine a run's grid belongs to, whatever the config said: ``inprocess`` (our
    in-process grid), ``ray`` (Flower's simulation runtime: ``engine=ray`` or a plain
    ``flwr run`` on a simulation federation) or ``deployment`` (a SuperLink's grid); another
    grid is named by its class."""
    # A grid of a class cannot exist before its module is imported: look the classes up in
    # sys.modules instead of importing flwr.superlink (~1 s of SQLAlchemy on every run).
    from .inprocess import InProcessGrid

    kinds = [(InProcessGrid, "inprocess")]
    for module, cls, name in (("flwr.superlink.grid.inmemory_grid", "InMemoryGrid", "ray"),
                              ("flwr.superlink.grid.http_grid", "HttpGrid", "deployment")):
        kind = getattr(sys.modules.get(module), cls, None)
        if kind is not None:
            kinds.append((kind, name))
    for kind, name in kinds:
        if isinstance(grid, kind):
            return name
    return type(grid).__name__


def _title(s: dict) -> str:
    c = s["client"]
    return (
        f"{s['strategy']['name']} on {s['mdp']['name']}, K={s['num_clients']}, "
        f"{c['sampling']}/{c['behavior']}"
    )


def _job_tag() -> str:
    """``"[job N] "`` inside a Hydra multirun job (N = Hydra's job number), else ``""``.

    Why: with a parallel launcher the progress lines of several jobs interleave; the number
    matches Hydra's ``#N : overrides`` line and the job's output directory.
    """
    import sys

    if "hydra" not in sys.modules:  # a ClientApp-side or plain Python run: no Hydra job
        return ""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return f"[job {HydraConfig.get().job.num}] "
    except Exception:  # noqa: BLE001 - progress must never break a run
        pass
    return ""
