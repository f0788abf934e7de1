"""A user's own Flower ServerApp: flower-qlearn's importance averaging drives its ClientApp.

The clients' whole task travels in the instruction's ConfigRecord as flat keys named as in
flower-qlearn's config (``mdp.*``, ``client.*``, ``seed``, ``num_clients``); keys left out take
their defaults from flower-qlearn's conf/. Run it

- in-process:  python examples/own_server_app.py
- with `flwr run` or on a SuperLink: point a Flower App's pyproject at it
  (serverapp = "own_server_app:app", clientapp = "flower_qlearn.client_app:app").
"""

import numpy as np
from flower_qlearn.strategies import ImportanceAveraging
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

S, A, ETA = 20, 4, 0.1  # a Garnet with 20 states and 4 actions; the clients' step size
TASK = {
    "num_clients": 4,
    "mdp.name": "garnet",
    "mdp.num_states": S,
    "mdp.num_actions": A,
    "mdp.branching": 3,
    "mdp.gamma": 0.9,
    "client.local_steps": 100,
    "client.learning_rate": ETA,
    "client.behavior": "disjoint",
}

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = ImportanceAveraging(S, A, learning_rate=ETA, min_available_nodes=4)
    q0 = ArrayRecord({"q": Array(np.zeros((S, A)))})
    result = strategy.start(grid, q0, num_rounds=30, train_config=ConfigRecord(TASK))
    out = context.run_config.get("output_dir") or "."
    np.save(f"{out}/q_table.npy", result.arrays["q"].numpy())


if __name__ == "__main__":
    from flower_qlearn import run_inprocess
    from flower_qlearn.client_app import app as client_app

    run_inprocess(app, client_app, num_supernodes=4)
    print("q_table.npy written:", np.load("q_table.npy").shape)
