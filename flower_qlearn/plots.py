"""matplotlib figures of one run (error curves) and of sweeps (mean and band across seeds)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs happen on servers and in CI without a display
import matplotlib.pyplot as plt  # noqa: E402


def plot_run(
    history: Sequence[dict], out_dir: Path, objective: str = "discounted", title: str = ""
) -> list[Path]:
    """Draw the error of the global estimate versus samples per agent (log-log).

    Returns the written PNG paths (``error_vs_samples.png``; for average reward also
    ``policy_gain_gap.png``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = [row["samples_per_agent"] for row in history]
    curves = (
        [("gain_error", "gain error ||Vbar - rho*||_inf"), ("policy_gain_gap", "policy gain gap")]
        if objective == "average_reward"
        else [("normalized_q_error", "(1 - gamma) ||Qbar - Q*||_inf")]
    )
    written = []
    for i, (key, label) in enumerate(curves):
        pts = [
            (a, row[key])
            for a, row in zip(x, history, strict=True)
            if row.get(key) is not None and a > 0
        ]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, [max(y, 1e-12) for y in ys], lw=1.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("samples per agent")
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        path = out_dir / ("error_vs_samples.png" if i == 0 else f"{key}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Sequence[str]) -> int:
    """``flower-qlearn-plot RUN_DIR``: redraw a run's figures from its ``metrics.csv``."""
    import json

    from .server_app import read_metrics

    if len(argv) != 1:
        print("usage: flower-qlearn-plot RUN_DIR")
        return 2
    run = Path(argv[0])
    summary = json.loads((run / "summary.json").read_text())
    paths = plot_run(
        read_metrics(run / "metrics.csv"),
        run / "figures",
        objective=summary.get("objective", "discounted"),
    )
    for p in paths:
        print(p)
    return 0
