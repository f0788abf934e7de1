"""Start-up cost of a ClientApp process: import the app and answer one ``train`` message.

A SuperNode starts a fresh ``flwr-clientapp`` process for every message, so this is paid once
per message in deployment. Run it as a whole process (e.g. ``/usr/bin/time -v python
benchmarks/client_startup.py``, or ``python -X importtime benchmarks/client_startup.py`` for the
import tree) and compare with ``python -c "import flwr, numpy"``.

Usage: ``python benchmarks/client_startup.py [--legacy]`` (``--legacy``: the instruction keys of
flower-qlearn 0.1's first stage, for measuring an older checkout put first on ``PYTHONPATH``).
"""

from __future__ import annotations

import sys

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity


def main() -> int:
    from flower_qlearn.client_app import app

    if "--legacy" in sys.argv:
        config = {"task": "q_learning", "sampling": "markovian", "local_steps": 50,
                  "learning_rate": 0.05, "gamma": 0.9, "server_round": 1}
    else:
        config = {"task": "q_learning", "server-round": 1}
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    content = RecordDict({"arrays": ArrayRecord({"q": Array(np.zeros((2, 10)))}),
                          "config": ConfigRecord(config)})
    message = Message(content, dst_node_id=1, message_type="train", group_id="1")
    message.metadata.__dict__["_message_id"] = "m1"
    context = Context(1, 1, {"partition-id": 0}, RecordDict(), {})
    reply = app(message=message, context=context)
    if reply.has_error():
        print(reply.error.reason, file=sys.stderr)
        return 1
    hydra = sorted(m for m in sys.modules if m.split(".")[0] in ("hydra", "omegaconf"))
    print(f"replied; hydra/omegaconf modules loaded: {len(hydra)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
