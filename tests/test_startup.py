"""Start-up: a plain ``flower-qlearn`` run imports only what it uses.

``benchmarks/startup.py`` measures the time; this checks the cause that a refactor most easily
brings back: a heavy optional module imported at start (matplotlib with ``figures=false``,
Ray, joblib, gymnasium for a built-in MDP, Flower's SuperLink grid and its SQLAlchemy; numba
and SciPy, which a one-round run on a small MDP does not need: its kernels run interpreted,
``flower_qlearn.jit``, and SciPy serves the large-MDP solvers only).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

#: Top-level modules a ``figures=false`` in-process run on two_state must never import.
NOT_NEEDED = ("matplotlib", "ray", "joblib", "gymnasium", "sqlalchemy", "alembic", "numba",
              "scipy")


def test_a_plain_run_imports_no_plotting_ray_joblib_or_superlink(tmp_path):
    out = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import atexit, json, sys
        NOT_NEEDED = {NOT_NEEDED!r}

        def report():
            loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(NOT_NEEDED))
            print("LOADED " + json.dumps(loaded))

        atexit.register(report)
        sys.argv = ["flower-qlearn", "num_rounds=1", "num_clients=2", "figures=false",
                    "output_dir={out}"]
        from flower_qlearn.cli import main
        main()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "metrics.csv").is_file()
    line = [x for x in proc.stdout.splitlines() if x.startswith("LOADED ")][-1]
    assert json.loads(line.removeprefix("LOADED ")) == []
