"""Figures and tables of issue 14 items 3-5 ("beyond the papers") from their Hydra multiruns.

Three subcommands, one per item, each reading its sweep(s) with the loader and the mean /
95% Student-t band of ``flower_qlearn.sweeps`` and writing PNGs and CSV/Markdown tables:

- ``sync-period``: the synchronization-period trade-off at a fixed sample budget: error versus
  samples and versus rounds for every tau (at one eta), and heat maps over eta x tau of the
  final error's ratio to tau = 1, for FedSynQ, FedAsynQ-EqAvg and FedAsynQ-ImAvg;
- ``comm-cost``: error versus the bytes sent, per strategy, counted two ways: the array payload
  the strategies report, and the whole Flower messages (seed 0 of every strategy is replayed
  through :class:`flower_qlearn.message_size.MeteredClientApp`; its payload per round must equal
  the sweep's ``bytes_up``/``bytes_down``, else the script stops);
- ``imavg-breaks``: the ImAvg / EqAvg final-error ratio as a heat map over behavior
  heterogeneity x eta, beside the exact coverage of the rarest (s, a)
  (:func:`flower_qlearn.coverage.min_coverage` of the agents' own behavior policies).

Reproduce (from the repository root):

    flower-qlearn -m +experiment=beyond_sync_period
    flower-qlearn -m +experiment=beyond_sync_period_fedsynq
    flower-qlearn -m +experiment=beyond_comm_cost
    flower-qlearn -m +experiment=beyond_imavg_breaks
    python benchmarks/beyond_tradeoffs.py all [--multirun multirun] [--out docs/figures]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from flower_qlearn import sweeps  # noqa: E402
from flower_qlearn.stats import mean_band  # noqa: E402

DPI = 110
METRIC = "normalized_q_error"
#: Coverage below this (times S*A) is 0 up to the Abel mean's O(1e-9) leak into transient states.
ZERO_COVERAGE = 1e-6


def _load(root: Path, name: str) -> list[sweeps.Job] | None:
    try:
        return sweeps.load_jobs(root / name)
    except FileNotFoundError:
        print(f"(skipped: no runs in {root / name})")
        return None


def _num(v: float, digits: int = 3) -> float | None:
    return None if v is None or not math.isfinite(v) else float(f"{v:.{digits}g}")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    print(path)
    return path


def _heatmap(ax, ratio: np.ndarray, text: list[list[str]], rows, cols, title: str, vmax: float):
    """Ratios on a log color scale centred on 1 (blue < 1 < red), each cell annotated."""
    norm = LogNorm(vmin=1.0 / vmax, vmax=vmax)
    image = ax.imshow(np.clip(ratio, 1.0 / vmax, vmax), cmap="RdBu_r", norm=norm, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_title(title, fontsize=9)
    return image


# --- item 3: the synchronization-period trade-off ------------------------------------------


def _algorithm(job: sweeps.Job) -> str:
    if job.value("client.sampling") == "generative":
        return "FedSynQ"
    return {"equal": "EqAvg", "importance": "ImAvg"}[job.value("strategy")]


def _tau(job: sweeps.Job) -> int:
    return int(job.column("samples_per_agent")[0] / job.column("round")[0])


def sync_period(root: Path, out: Path, eta_curves: float) -> None:
    jobs = [j for name in ("beyond_sync_period", "beyond_sync_period_fedsynq")
            for j in (_load(root, name) or [])]
    if not jobs:
        return
    groups: dict[tuple[str, float, int], list[sweeps.Job]] = {}
    for job in jobs:
        key = (_algorithm(job), float(job.value("client.learning_rate")), _tau(job))
        groups.setdefault(key, []).append(job)
    algs = [a for a in ("FedSynQ", "EqAvg", "ImAvg") if any(k[0] == a for k in groups)]
    etas = sorted({k[1] for k in groups})
    taus = sorted({k[2] for k in groups})
    final: dict[tuple[str, float, int], sweeps.Curve] = {
        key: sweeps.aggregate(members, METRIC, "samples_per_agent")
        for key, members in groups.items()
    }
    rows = []
    for (alg, eta, tau), curve in sorted(final.items()):
        base = final.get((alg, eta, 1))
        ratio = curve.mean[-1] / base.mean[-1] if base is not None else math.nan
        rows.append({"algorithm": alg, "eta": eta, "tau": tau, "rounds": int(curve.rounds[-1]),
                     "seeds": curve.num_seeds, "samples per agent": int(curve.x[-1]),
                     "final error mean": _num(curve.mean[-1]), "low": _num(curve.low[-1]),
                     "high": _num(curve.high[-1]), "ratio to tau=1": _num(ratio)})
    sweeps.write_table(rows, out / "beyond_sync_period_final")
    print(sweeps.markdown_table(rows))

    # Heat maps: the final error's ratio to tau = 1, per algorithm.
    fig, axes = plt.subplots(1, len(algs), figsize=(4.2 * len(algs), 3.6), squeeze=False)
    image = None
    for ax, alg in zip(axes[0], algs, strict=True):
        ratio = np.full((len(etas), len(taus)), np.nan)
        text = [["" for _ in taus] for _ in etas]
        for i, eta in enumerate(etas):
            for j, tau in enumerate(taus):
                c, b = final.get((alg, eta, tau)), final.get((alg, eta, 1))
                if c is None or b is None:
                    continue
                ratio[i, j] = c.mean[-1] / b.mean[-1]
                text[i][j] = f"{ratio[i, j]:.2f}\n({c.mean[-1]:.3g})"
        image = _heatmap(ax, ratio, text, etas, taus, f"{alg}: final error / final at tau=1", 4.0)
        ax.set_xlabel("tau (local steps per round)")
        if ax is axes[0][0]:
            ax.set_ylabel("eta")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="ratio to tau = 1")
    fig.suptitle(f"Fixed budget of {int(final[next(iter(final))].x[-1])} steps per agent; "
                 "cell: ratio (final error), mean of seeds", fontsize=9)
    fig.savefig(out / "beyond_sync_period_heatmap.png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    print(out / "beyond_sync_period_heatmap.png")

    # Curves at one eta: versus samples and versus rounds, one line per tau.
    fig, axes = plt.subplots(2, len(algs), figsize=(4.2 * len(algs), 6.4), squeeze=False)
    for col, alg in enumerate(algs):
        for row, x in enumerate(("samples_per_agent", "round")):
            ax = axes[row][col]
            for i, tau in enumerate(taus):
                members = groups.get((alg, eta_curves, tau))
                if not members:
                    continue
                c = sweeps.aggregate(members, METRIC, x)
                ax.plot(c.x, c.mean, color=f"C{i}", lw=1.4, label=f"tau={tau}",
                        marker="o" if len(c.x) <= 3 else None, ms=3)
                ax.fill_between(c.x, c.low, c.high, color=f"C{i}", alpha=0.15, lw=0)
            ax.set_xscale("log")
            ax.set_yscale("log")
            lowest = min((line.get_ydata().min() for line in ax.get_lines()), default=None)
            if lowest is not None and lowest > 0:  # a band reaching 0 must not squash the curves
                ax.set_ylim(bottom=lowest / 3)
            ax.set_xlabel("samples per agent" if x == "samples_per_agent" else "round")
            ax.set_ylabel("(1 - gamma) ||Qbar - Q*||_inf")
            ax.set_title(f"{alg}, eta={eta_curves:g}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    _save(fig, out / "beyond_sync_period_curves.png")


# --- item 4: communication cost ---------------------------------------------------------------


def _metered_replay(job: sweeps.Job) -> dict[int, dict[str, int]]:
    """Replay ``job`` (same overrides) through a metered ClientApp: bytes per round, by kind."""
    from flower_qlearn import api
    from flower_qlearn import config as fq_config
    from flower_qlearn.client_app import app as client_app
    from flower_qlearn.inprocess import run_inprocess
    from flower_qlearn.message_size import MeteredClientApp
    from flower_qlearn.server_app import app as server_app

    overrides = [f"{k}={v}" if not k.startswith("experiment") else f"+{k}={v}"
                 for k, v in (job.overrides or {}).items()]
    cfg = fq_config.compose([*overrides, "figures=false", "log_every=0"])
    meter = MeteredClientApp(client_app)
    with tempfile.TemporaryDirectory() as tmp:
        run_inprocess(server_app, meter, int(cfg.num_clients), api.run_config_for(cfg, Path(tmp)))
    per_round: dict[int, dict[str, int]] = {}
    for group, direction, size in meter.log:
        r = per_round.setdefault(int(group), {})
        for kind in ("payload", "proto", "objects"):
            r[f"{direction}_{kind}"] = r.get(f"{direction}_{kind}", 0) + getattr(size, kind)
        r[f"{direction}_messages"] = r.get(f"{direction}_messages", 0) + 1
    return per_round


def comm_cost(root: Path, out: Path, targets: dict[str, float]) -> None:
    jobs = _load(root, "beyond_comm_cost")
    if not jobs:
        return
    groups = sweeps.group_jobs(jobs, ["strategy"])
    rows, drawn = [], {}
    for (strategy,), members in groups.items():
        metric = METRIC if np.any(np.isfinite(members[0].column(METRIC))) else "gain_error"
        curve = sweeps.aggregate(members, metric, "round")
        reference = next(j for j in members if j.value("seed") == "0")
        metered = _metered_replay(reference)
        rounds = reference.column("round").astype(int)
        for r, up, down in zip(rounds, reference.column("bytes_up"),
                               reference.column("bytes_down"), strict=True):
            m = metered[int(r)]
            if m["up_payload"] != up or m["down_payload"] != down:
                raise SystemExit(f"{strategy}: metered payload of round {r} differs from the "
                                 f"sweep's ({m['up_payload']}/{m['down_payload']} vs {up}/{down})")
        payload = np.cumsum([metered[int(r)]["up_payload"] + metered[int(r)]["down_payload"]
                             for r in curve.rounds])
        wire = np.cumsum([metered[int(r)]["up_objects"] + metered[int(r)]["down_objects"]
                          for r in curve.rounds])
        drawn[strategy] = (metric, curve, payload, wire)
        _, settled = sweeps.first_reach(curve, targets[metric])
        at = None if settled is None else int(np.flatnonzero(curve.rounds == settled)[0])
        first = metered[int(rounds[0])]
        n_down, n_up = first["down_messages"], first["up_messages"]
        rows.append({
            "strategy": strategy, "metric": metric, "target": targets[metric],
            "rounds to target": None if settled is None else int(settled),
            "payload bytes to target": None if at is None else int(payload[at]),
            "Flower bytes to target": None if at is None else int(wire[at]),
            "instruction payload": first["down_payload"] // n_down,
            "instruction Flower objects": first["down_objects"] // n_down,
            "instruction proto": first["down_proto"] // n_down,
            "reply payload": first["up_payload"] // n_up,
            "reply Flower objects": first["up_objects"] // n_up,
            "reply proto": first["up_proto"] // n_up,
            "final error": _num(curve.mean[-1]),
        })
    sweeps.write_table(rows, out / "beyond_comm_cost")
    print(sweeps.markdown_table(rows))
    metrics = [m for m in (METRIC, "gain_error") if any(v[0] == m for v in drawn.values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.6 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, (strategy, (m, curve, payload, wire)) in enumerate(drawn.items()):
            if m != metric:
                continue
            ax.plot(payload, curve.mean, color=f"C{i}", lw=1.5, label=f"{strategy}: array payload")
            ax.plot(wire, curve.mean, color=f"C{i}", lw=1.5, ls="--",
                    label=f"{strategy}: whole Flower messages")
        ax.axhline(targets[metric], color="gray", ls=":", lw=1, label=f"target {targets[metric]:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cumulative bytes, up + down (all agents)")
        ax.set_ylabel(metric)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"{metric} versus bytes sent (mean of seeds)", fontsize=9)
    _save(fig, out / "beyond_comm_cost.png")


# --- item 5: where importance averaging breaks ------------------------------------------------


def _settings(job: sweeps.Job) -> dict:
    import json

    return json.loads((job.path / "summary.json").read_text())["config"]


def _behavior_label(s: dict) -> str:
    c = s["client"]
    if c["behavior"] == "dirichlet":
        return f"dirichlet {c['behavior_alpha']:g}"
    if c["behavior"] == "disjoint":
        return f"disjoint G={c['behavior_groups']}"
    return str(c["behavior"])


def _rarest_coverage(s: dict) -> float:
    """``min_{s,a}`` of the agents' mean long-run visitation, times S*A (1 = uniform)."""
    from flower_qlearn.agent import agent_env
    from flower_qlearn.coverage import min_coverage

    envs = [agent_env(s, k) for k in range(int(s["num_clients"]))]
    mdp = envs[0].mdp
    value = min_coverage(mdp.P, [env.behavior for env in envs], mdp.initial)
    return value * mdp.num_states * mdp.num_actions


def _coverage_cell(values: list[float]) -> float | str | None:
    mean = float(np.mean(values))
    return f"< {ZERO_COVERAGE:g} (~0)" if mean < ZERO_COVERAGE else _num(mean)


def imavg_breaks(root: Path, out: Path, tail: float, converged: float) -> None:
    jobs = _load(root, "beyond_imavg_breaks")
    if not jobs:
        return
    table: dict[tuple[str, float, str], list[float]] = {}
    cover: dict[str, dict[int, float]] = {}
    order: list[str] = []
    for job in jobs:
        s = _settings(job)
        label = _behavior_label(s)
        if label not in order:
            order.append(label)
        err = job.column(METRIC)
        n = max(1, int(math.ceil(tail * len(err))))
        key = (label, float(s["client"]["learning_rate"]), s["strategy"]["name"])
        table.setdefault(key, []).append(float(np.mean(err[-n:])))
        seeds = cover.setdefault(label, {})  # coverage depends on the behavior and seed only
        if s["seed"] not in seeds:
            seeds[s["seed"]] = _rarest_coverage(s)
    etas = sorted({k[1] for k in table})
    rows, ratio = [], np.full((len(order), len(etas)), np.nan)
    text = [["" for _ in etas] for _ in order]
    for i, label in enumerate(order):
        for j, eta in enumerate(etas):
            eq = mean_band(np.array(table.get((label, eta, "equal"), [np.nan])))
            im = mean_band(np.array(table.get((label, eta, "importance"), [np.nan])))
            r = float(im[0] / eq[0])
            ratio[i, j] = r
            neither = eq[0] > converged and im[0] > converged
            text[i][j] = f"{r:.2f}" + ("\nneither" if neither else "")
            rows.append({"behavior": label, "eta": eta,
                         "rarest coverage x SA": _coverage_cell(list(cover[label].values())),
                         "EqAvg tail error": _num(float(eq[0])),
                         "EqAvg low": _num(float(eq[1])), "EqAvg high": _num(float(eq[2])),
                         "ImAvg tail error": _num(float(im[0])),
                         "ImAvg low": _num(float(im[1])), "ImAvg high": _num(float(im[2])),
                         "ImAvg / EqAvg": _num(r), f"neither <= {converged:g}": neither})
    sweeps.write_table(rows, out / "beyond_imavg_breaks")
    print(sweeps.markdown_table(rows))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(8.6, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    image = _heatmap(ax, ratio, text, order, etas,
                     f"ImAvg / EqAvg error (mean of last {tail:.0%} of rounds)", 4.0)
    ax.set_xlabel("eta")
    fig.colorbar(image, ax=ax, shrink=0.8, label="ImAvg / EqAvg (< 1: ImAvg better)")
    values = np.array([float(np.mean(list(cover[label].values()))) for label in order])
    bx.barh(range(len(order)), np.maximum(values, ZERO_COVERAGE), color="C2")
    for i, v in enumerate(values):
        if v < ZERO_COVERAGE:  # 0 up to the Abel mean's 1e-9 leak: never visited in the long run
            bx.text(ZERO_COVERAGE * 1.5, i, "~0 (never visited)", va="center", fontsize=7)
    bx.set_xscale("log")
    bx.set_xlim(ZERO_COVERAGE / 2, 2.0)
    bx.set_yticks(range(len(order)), order)
    bx.invert_yaxis()
    bx.axvline(1.0, color="gray", ls=":", lw=1)
    bx.set_xlabel("min_(s,a) visitation x SA (1: uniform)")
    bx.set_title("exact coverage of the rarest entry", fontsize=9)
    bx.grid(True, which="both", axis="x", alpha=0.3)
    _save(fig, out / "beyond_imavg_breaks.png")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("item", choices=("sync-period", "comm-cost", "imavg-breaks", "all"))
    p.add_argument("--multirun", type=Path, default=Path("multirun"),
                   help="directory holding the sweeps' dirs (default multirun)")
    p.add_argument("--out", type=Path, default=Path("docs/figures"),
                   help="where figures and tables go (default docs/figures)")
    p.add_argument("--eta", type=float, default=0.5, help="sync-period: eta of the curves")
    p.add_argument("--q-target", type=float, default=0.2,
                   help="comm-cost: target normalized_q_error (default 0.2)")
    p.add_argument("--gain-target", type=float, default=0.1,
                   help="comm-cost: target gain_error of average reward (default 0.1)")
    p.add_argument("--tail", type=float, default=0.2,
                   help="imavg-breaks: fraction of final rounds averaged (default 0.2)")
    p.add_argument("--converged", type=float, default=0.1,
                   help="imavg-breaks: a tail error above this counts as not converged")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.item in ("sync-period", "all"):
        sync_period(args.multirun, args.out, args.eta)
    if args.item in ("comm-cost", "all"):
        comm_cost(args.multirun, args.out, {METRIC: args.q_target, "gain_error": args.gain_target})
    if args.item in ("imavg-breaks", "all"):
        imavg_breaks(args.multirun, args.out, args.tail, args.converged)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
