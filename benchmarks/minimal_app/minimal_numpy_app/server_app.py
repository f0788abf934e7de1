"""ServerApp: Flower's FedAvg via ``Strategy.start``; writes each round's wall time as JSON.

Rounds are timed as flower-qlearn times its own (``wall_s`` of ``metrics.csv``): from the start
of the round loop to the end of each round's aggregation and (server-side) evaluation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-rounds`` FedAvg rounds over ``num-nodes`` nodes (no federated evaluation)."""
    num_rounds = int(context.run_config["num-rounds"])
    num_nodes = int(context.run_config["num-nodes"])
    marks: list[float] = []

    def mark(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        marks.append(time.perf_counter())  # round 0: the loop starts
        return MetricRecord({"round": server_round})

    strategy = FedAvg(
        fraction_evaluate=0.0,
        min_train_nodes=num_nodes,
        min_available_nodes=num_nodes,
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([np.zeros((2, 10))]),
        num_rounds=num_rounds,
        evaluate_fn=mark,
    )
    out = str(context.run_config.get("timings-file", ""))
    if out:
        rounds = [b - a for a, b in zip(marks, marks[1:], strict=False)]
        Path(out).write_text(json.dumps({"round_s": rounds}))
