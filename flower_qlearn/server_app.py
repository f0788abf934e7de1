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


def build_equal(cfg: DictConfig, mdp: TabularMDP) -> Plan:
    strategy = strategies.EqualAveraging(
        mdp.num_states, mdp.num_actions, min_replies=cfg.min_replies, value_bound=_value_bound(mdp)
    )
    return Plan(strategy, _q_learning_config(cfg), cfg.num_rounds)


def build_importance(cfg: DictConfig, mdp: TabularMDP) -> Plan:
    strategy = strategies.ImportanceAveraging(
        mdp.num_states,
        mdp.num_actions,
        learning_rate=float(cfg.client.learning_rate),
        min_replies=cfg.min_replies,
        value_bound=_value_bound(mdp),
    )
    return Plan(strategy, _q_learning_config(cfg), cfg.num_rounds)


#: ``strategy.name`` -> builder. Other strategy modules register themselves here.
PLAN_BUILDERS: dict[str, Callable[[DictConfig, TabularMDP], Plan]] = {
    "equal": build_equal,
    "importance": build_importance,
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
# The run.
# --------------------------------------------------------------------------------------------


def run_server(grid: Grid, cfg: DictConfig, output_dir: Path) -> list[dict]:
    """Run every round of the experiment ``cfg`` over ``grid``; write outputs to ``output_dir``."""
    wall_start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    mdp = base_mdp(cfg)
    plan = PLAN_BUILDERS[cfg.strategy.name](cfg, mdp)
    evaluator = Evaluator(mdp, plan.objective)
    strategy = plan.strategy
    q = np.zeros((mdp.num_states, mdp.num_actions))
    arrays = ArrayRecord({"q": Array(q)})
    initial = evaluator(q)
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
    history: list[dict] = []
    samples = 0.0
    for server_round in range(1, plan.num_rounds + 1):
        messages = strategy.configure_train(server_round, arrays, plan.train_config, grid)
        replies = grid.send_and_receive(messages, timeout=float(cfg.round_timeout))
        new_arrays, metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        metrics = dict(metrics or MetricRecord())
        samples += float(metrics.pop("num_samples", 0.0))
        metrics.pop("partition_id", None)
        metrics.pop("compute_s", None)
        row = {"round": server_round, "samples_per_agent": samples}
        row.update(metrics)
        row.update(evaluator(arrays["q"].numpy()))
        row["wall_s"] = time.perf_counter() - wall_start
        history.append(row)
        _progress(cfg, plan, row)
        if cfg.log_every and server_round % cfg.log_every == 0:
            write_metrics(output_dir / "metrics.csv", history)
    q_final = arrays["q"].numpy()
    wall = time.perf_counter() - wall_start
    write_metrics(output_dir / "metrics.csv", history)
    np.save(output_dir / "q_table.npy", q_final)
    summary = {
        "strategy": cfg.strategy.name,
        "mdp": mdp.name,
        "engine": cfg.engine.name,
        "num_clients": cfg.num_clients,
        "num_rounds": plan.num_rounds,
        "seed": cfg.seed,
        "objective": plan.objective,
        "initial": initial,
        "final": {k: _jsonable(v) for k, v in history[-1].items()} if history else {},
        "ground_truth": evaluator.truth(),
        "rejected_total": int(sum(r.get("rejected", 0) or 0 for r in history)),
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
        "[round %d/%d] samples/agent=%d %s accepted=%s rejected=%s (%.1fs)",
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
