"""Figures and tables of docs/beyond_the_papers.md (items 1 and 6) from finished multiruns.

    python benchmarks/beyond_figures.py sync multirun/adaptive_sync [--out docs/figures]
    python benchmarks/beyond_figures.py mc multirun/mc_policy [--out docs/figures]

``sync``: rounds to reach a target error versus K, per ``client.sync`` schedule (the mean
curve over seeds; "first" = first round at or below the target, "settled" = from which it stays
below), and the final error versus K. ``mc``: per MDP, the Monte-Carlo success rate or return
of the greedy policy (mean and 95% interval over the episodes) next to its exact value.
Item 2's figure is ``flower-qlearn-plot multirun/maze_heterogeneity`` (its ``plot:`` section).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from flower_qlearn.sweeps import load_jobs, markdown_table  # noqa: E402

METRIC = "normalized_q_error"
TARGETS = (0.1, 0.05)


def _first_and_settled(errors: np.ndarray, target: float) -> tuple[int | None, int | None]:
    below = errors <= target
    if not below.any():
        return None, None
    first = int(np.argmax(below)) + 1
    if not below[-1]:
        return first, None
    above = np.flatnonzero(~below)
    return first, (1 if above.size == 0 else int(above[-1]) + 2)


def sync_table(root: Path) -> list[dict]:
    """One row per (schedule, K): rounds to each target (mean curve over seeds), final error."""
    groups: dict[tuple[str, int], list[np.ndarray]] = {}
    samples: dict[tuple[str, int], float] = {}
    for job in load_jobs(root):
        key = (job.value("client.sync"), int(job.value("num_clients")))
        groups.setdefault(key, []).append(job.column(METRIC))
        samples[key] = float(job.column("samples_per_agent")[-1])
    rows = []
    for (sync, k), curves in sorted(groups.items()):
        length = min(len(c) for c in curves)
        mean = np.mean([c[:length] for c in curves], axis=0)
        row: dict = {"client.sync": sync, "K": k, "seeds": len(curves)}
        for target in TARGETS:
            first, settled = _first_and_settled(mean, target)
            row[f"first round <= {target}"] = first
            row[f"settled round <= {target}"] = settled
        row[f"final {METRIC}"] = float(mean[-1])
        row["min over rounds"] = float(mean.min())
        row["samples per agent"] = samples[(sync, k)]
        rows.append(row)
    return rows


def plot_sync(rows: list[dict], out: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for sync in sorted({r["client.sync"] for r in rows}):
        mine = [r for r in rows if r["client.sync"] == sync]
        ks = [r["K"] for r in mine]
        for ax, target in zip(axes[:2], TARGETS, strict=True):
            first = [np.nan if r[f"first round <= {target}"] is None
                     else r[f"first round <= {target}"] for r in mine]
            settled = [np.nan if r[f"settled round <= {target}"] is None
                       else r[f"settled round <= {target}"] for r in mine]
            (line,) = ax.plot(ks, first, "o-", label=f"{sync} (first)")
            ax.plot(ks, settled, "s--", color=line.get_color(), label=f"{sync} (settled)")
        axes[2].plot(ks, [r[f"final {METRIC}"] for r in mine], "o-", label=sync)
    for ax, target in zip(axes[:2], TARGETS, strict=True):
        ax.set(xscale="log", xlabel="K (agents)", ylabel="rounds",
               title=f"rounds to (1-gamma)||Qbar-Q*|| <= {target}")
        ax.grid(alpha=0.3)
    axes[2].set(xscale="log", yscale="log", xlabel="K (agents)", ylabel=METRIC,
                title="error after the last round")
    axes[2].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=8)
    fig.suptitle("Importance averaging, two-state MDP (m=10, gamma=0.9), eta0=0.1, tau0=50, "
                 "V=50; missing point = never reached / not settled", fontsize=9)
    fig.tight_layout()
    path = out / "adaptive_sync_rounds_vs_K.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_mc(root: Path, out: Path) -> tuple[Path, list[dict]]:
    jobs = sorted(load_jobs(root), key=lambda j: j.value("mdp"))
    fig, axes = plt.subplots(1, len(jobs), figsize=(4.6 * len(jobs), 4))
    rows = []
    for ax, job in zip(np.atleast_1d(axes), jobs, strict=True):
        name = job.value("mdp")
        metric = "success_rate" if name == "frozenlake" else "return"
        rounds = job.column("round")
        mc, ci = job.column(f"mc_{metric}"), job.column(f"mc_{metric}_ci")
        exact = job.column(f"exact_{metric}")
        keep = ~np.isnan(mc)
        ax.errorbar(rounds[keep], mc[keep], yerr=ci[keep], fmt="o", ms=4, capsize=3,
                    label=f"Monte Carlo, {job.config['mc_episodes']} episodes (95% CI)")
        ax.plot(rounds[keep], exact[keep], "-", label="exact (tabular model)")
        ax.set(title=name, xlabel="round", ylabel=f"greedy policy's {metric.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        inside = np.abs(mc[keep] - exact[keep]) <= ci[keep]
        rows.append({"mdp": name, "metric": metric, "evaluations": int(keep.sum()),
                     "final MC": float(mc[keep][-1]), "final CI": float(ci[keep][-1]),
                     "final exact": float(exact[keep][-1]),
                     "exact inside the CI": f"{int(inside.sum())}/{int(keep.sum())}"})
    fig.suptitle("Greedy policy of the global Q in the real Gymnasium environment "
                 f"(episodes cut at {jobs[0].config['mc_max_steps']} steps)", fontsize=9)
    fig.tight_layout()
    path = out / "mc_policy.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("sync", "mc"))
    p.add_argument("dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "sync":
        rows = sync_table(args.dir)
        path = plot_sync(rows, args.out)
        name = "adaptive_sync_rounds_vs_K.md"
    else:
        path, rows = plot_mc(args.dir, args.out)
        name = "mc_policy.md"
    shown = [{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    table = markdown_table(shown) if rows else ""
    (args.out / name).write_text(table + "\n")
    print(table)
    print(f"wrote {path} and {args.out / name}")


if __name__ == "__main__":
    main()
