"""A user's own Flower ServerApp that uses flower-qlearn's importance averaging and ClientApp."""

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from strategies import ImportanceAveraging

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = ImportanceAveraging(num_states=2, num_actions=10, learning_rate=0.05)
    config = ConfigRecord({"task": "q_learning", "sampling": "markovian", "local_steps": 50,
                           "learning_rate": 0.05, "gamma": 0.9})
    q0 = ArrayRecord({"q": Array(np.zeros((2, 10)))})
    result = strategy.start(grid, q0, num_rounds=20, train_config=config)
    np.save(context.run_config.get("output-dir", ".") + "/q_table.npy", result.arrays["q"].numpy())
