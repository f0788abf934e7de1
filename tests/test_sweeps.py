"""Tests for the sweep workflow: a real Hydra multirun, its aggregation, figures and tables.

The aggregated mean and band are checked against a hand computation from the individual
``metrics.csv`` files (read with the csv module, t quantiles from a table), not against the
module's own helpers.
"""

from __future__ import annotations

import csv
import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.figure import Figure

from flower_qlearn import config as fq_config
from flower_qlearn import plot_command, plots, sweeps

#: Student t quantiles t_{0.975, df} (standard tables / scipy.stats.t.ppf).
T975 = {
    1: 12.706204736174707,
    2: 4.302652729749464,
    3: 3.182446305284263,
    4: 2.7764451051977934,
    19: 2.0930240544083096,
    99: 1.9842169515086827,
}

SEEDS = 3
SWEEP = [
    "strategy=equal,importance",
    f"seed=range(0,{SEEDS})",
    "num_rounds=6",
    "num_clients=4",
    "client.local_steps=10",
    "client.behavior=disjoint",
    "log_every=3",
    "figures=false",
]
EXPERIMENTS = sorted(p.stem for p in (fq_config.config_dir() / "experiment").glob("*.yaml"))


def _flower_qlearn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flower_qlearn", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> tuple[Path, str]:
    """A real 2-strategy x 3-seed multirun through the CLI (6 in-process jobs)."""
    sweep_dir = tmp_path_factory.mktemp("multirun")
    proc = _flower_qlearn("-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return sweep_dir, proc.stdout + proc.stderr


def _csv_column(path: Path, column: str) -> list[float]:
    with path.open(newline="") as fh:
        return [float(row[column]) for row in csv.DictReader(fh)]


def _by_hand(sweep_dir: Path, metric: str) -> dict[str, np.ndarray]:
    """Per strategy: the (seeds, rounds) matrix of ``metric`` read from each job's files."""
    out: dict[str, list] = {}
    for job in sorted(p for p in sweep_dir.iterdir() if p.name.isdigit()):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        strategy = next(o.split("=")[1] for o in overrides if o.startswith("strategy="))
        out.setdefault(strategy, []).append(_csv_column(job / "metrics.csv", metric))
    return {k: np.array(v) for k, v in out.items()}


def test_multirun_writes_one_dir_per_job_and_tags_progress(multirun):
    sweep_dir, log = multirun
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit())
    assert jobs == [str(i) for i in range(2 * SEEDS)]
    # Which job is running and how far it is.
    assert "[job 5] [round 6/6]" in log
    assert "#5 : strategy=importance seed=2" in log


def test_grouping_picks_the_varying_override(multirun):
    sweep_dir, _ = multirun
    jobs = sweeps.load_jobs(sweep_dir)
    assert [j.path.name for j in jobs] == [str(i) for i in range(2 * SEEDS)]
    # seed varies but is averaged over; num_rounds etc. are constant overrides.
    assert sweeps.varying_keys(jobs) == ["strategy"]
    assert sweeps.varying_keys(jobs, average_over=()) == ["strategy", "seed"]
    groups = sweeps.group_jobs(jobs, ["strategy"])
    assert list(groups) == [("equal",), ("importance",)]
    assert [len(g) for g in groups.values()] == [SEEDS, SEEDS]
    # a job's config (read when first used) is its .hydra/config.yaml
    for job in jobs:
        expected = yaml.safe_load((job.path / ".hydra" / "config.yaml").read_text())
        assert dict(job.config) == expected and job.config == expected
        assert job.config.get("seed") == expected["seed"] and "strategy" in job.config


def test_aggregate_equals_hand_computation(multirun):
    sweep_dir, _ = multirun
    keys, curves = sweeps.sweep_curves(sweeps.load_jobs(sweep_dir), ["normalized_q_error"])
    hand = _by_hand(sweep_dir, "normalized_q_error")
    samples = _csv_column(sweep_dir / "0" / "metrics.csv", "samples_per_agent")
    assert keys == ["strategy"]
    for curve in curves["normalized_q_error"]:
        values = hand[curve.params["strategy"]]
        mean = values.sum(axis=0) / SEEDS
        sd = np.sqrt(((values - mean) ** 2).sum(axis=0) / (SEEDS - 1))
        half = T975[SEEDS - 1] * sd / math.sqrt(SEEDS)
        assert curve.num_seeds == SEEDS
        np.testing.assert_allclose(curve.x, samples)
        np.testing.assert_allclose(curve.mean, mean, rtol=1e-12)
        np.testing.assert_allclose(curve.low, mean - half, rtol=1e-9)
        np.testing.assert_allclose(curve.high, mean + half, rtol=1e-9)
    # The strategies really differ (disjoint behavior), so the groups are not mixed up.
    assert not np.allclose(hand["equal"], hand["importance"])


def test_plot_command_writes_figures_and_table(multirun, tmp_path):
    sweep_dir, _ = multirun
    out = tmp_path / "figs"
    args = [str(sweep_dir), "--out", str(out), "--reach", "q_error=100", "--name", "sweep.v1"]
    assert plots.main(args) == 0
    for name in ("normalized_q_error.png", "q_error.png"):
        assert (out / f"sweep.v1_{name}").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| strategy | seeds |" in (out / "sweep.v1_final.md").read_text()
    with (out / "sweep.v1_final.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    hand = _by_hand(sweep_dir, "q_error")
    assert [r["strategy"] for r in rows] == ["equal", "importance"]
    for row in rows:
        final = hand[row["strategy"]][:, -1]
        mean = final.mean()
        half = T975[SEEDS - 1] * final.std(ddof=1) / math.sqrt(SEEDS)
        assert int(row["seeds"]) == SEEDS and int(row["round"]) == 6
        assert float(row["q_error mean"]) == pytest.approx(mean, rel=1e-3)
        assert float(row["q_error low"]) == pytest.approx(mean - half, rel=1e-3)
        assert float(row["q_error high"]) == pytest.approx(mean + half, rel=1e-3)
        assert int(row["rounds to q_error<=100 (first)"]) == 1  # every error is < 100


def test_plot_command_on_a_single_run_dir(multirun, tmp_path):
    sweep_dir, _ = multirun
    run_dir = sweep_dir / "4"
    assert plots.main([str(run_dir), "--metric", "q_error", "--x", "round"]) == 0
    figures = run_dir / "figures"
    # --x round is not the default x: its figure is named for it (issue 15), beside the defaults.
    assert (figures / "q_error_vs_round.png").is_file()
    assert (figures / "error_vs_samples.png").is_file()
    with (figures / "final.csv").open(newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert int(row["seeds"]) == 1
    final = _csv_column(run_dir / "metrics.csv", "q_error")[-1]
    assert float(row["q_error mean"]) == pytest.approx(final, rel=1e-3)
    assert row["q_error low"] == row["q_error high"] == row["q_error mean"]  # one seed


def test_plot_command_rejects_bad_input(tmp_path, multirun, capsys):
    assert plots.main([str(tmp_path)]) == 2  # no runs below
    assert plots.main([str(multirun[0]), "--metric", "nope"]) == 2
    assert "no column nope" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("p", "df"), [(0.975, 1), (0.975, 2), (0.975, 4), (0.975, 19), (0.975, 99)]
)
def test_t_quantile_matches_tables(p, df):
    assert sweeps.t_quantile(p, df) == pytest.approx(T975[df], rel=1e-10)


def test_t_quantile_matches_scipy_on_a_grid():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 3, 7, 30, 500):
        for p in (0.6, 0.9, 0.975, 0.995):
            assert sweeps.t_quantile(p, df) == stats.t.ppf(p, df)  # the same function, bitwise
    dfs = np.arange(1.0, 400.0)
    assert np.array_equal(sweeps.t_quantile(0.975, dfs), stats.t.ppf(0.975, dfs))


def test_read_metrics_reads_what_csv_dictreader_reads(tmp_path):
    """Ints, floats, nan/inf, empty cells, a short (truncated) last row, blank lines."""
    from flower_qlearn.outputs import _parse_cell, read_metrics

    path = tmp_path / "metrics.csv"
    path.write_text("round,q_error,rejected,extra\n1,0.5,0,\n\n2,1e-05,3,nan\n"
                    "3,inf,-2,+4\n4,0.25\n")
    with path.open(newline="") as fh:
        expected = [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    got = read_metrics(path)
    assert [list(r) for r in got] == [list(r) for r in expected]
    assert repr(got) == repr(expected)
    assert got[3] == {"round": 4, "q_error": 0.25, "rejected": None, "extra": None}
    assert isinstance(got[2]["extra"], int) and isinstance(got[1]["q_error"], float)
    # full rows: each column converted at once (ints, floats, mixed, empty cells, signs)
    path.write_text("round,q_error,mixed,empty,signed\n1,0.5,1,,+3\n2,nan,0.5,,-1\n"
                    "3,1e-05,inf,4, 7\n")
    with path.open(newline="") as fh:
        expected = [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    got = read_metrics(path)
    assert repr(got) == repr(expected)
    assert [type(r["mixed"]) for r in got] == [int, float, float]
    assert [r["round"] for r in got] == [1, 2, 3] and got[2]["empty"] == 4


def test_a_metrics_table_is_read_metrics_rows_and_columns(tmp_path):
    """outputs.read_metrics_table (what load_job keeps: columns parsed when asked for) against
    the rows read_metrics gives: the same rows, each column the rows' values of that key, and
    Job.column the same float64 arrays (NaN for empty cells or a missing column) as the plain
    computation from those rows; for regular files, truncated rows, a repeated column name,
    a header alone and an empty file."""
    from flower_qlearn.outputs import read_metrics, read_metrics_table

    texts = [
        "round,q_error,mixed,empty,signed\r\n1,0.5,1,,+3\r\n2,nan,0.5,,-1\r\n3,1e-05,inf,4, 7\r\n",
        "round,q_error,rejected,extra\n1,0.5,0,\n\n2,1e-05,3,nan\n3,inf,-2,+4\n4,0.25\n",
        "round,x,x\n1,2,3.5\n2,,4\n",
        "round,q_error\n",
        "",
    ]
    path = tmp_path / "metrics.csv"
    for text in texts:
        path.write_text(text)
        rows = read_metrics(path)
        table = read_metrics_table(path)
        for name in (*(rows[0] if rows else ()), "absent"):
            assert repr(table.column(name)) == repr([row.get(name) for row in rows]), name
            fast = sweeps.Job(path, None, {}, table).column(name)
            plain = sweeps.Job(path, None, {}, rows).column(name)
            assert fast.dtype == plain.dtype and np.array_equal(fast, plain, equal_nan=True)
        assert len(table) == len(rows) and repr(list(table)) == repr(rows)
        assert repr(table[-1:]) == repr(rows[-1:]) and bool(table) == bool(rows)
        if "nan" not in text:  # (nan != nan: a dict holding one is unequal to its copy)
            assert table == rows


def test_metrics_text_of_a_table_is_that_of_its_rows():
    """A MetricsTable (the batched engine's histories: shared tuple columns, own lists) gives
    the metrics.csv text of its rows, converted once for a shared column; its rows, row
    access and history_column are those of the row dicts."""
    from flower_qlearn.outputs import MetricsTable, history_column, metrics_text

    n = 25
    rounds, walls = tuple(range(1, n + 1)), tuple(0.5 + r / 3 for r in range(n))
    counts = (20,) * n
    tables = []
    for job in range(3):
        errors = [float("nan") if r == 3 else (r + job) / 7 for r in range(n)]
        extra = [None if r % 4 else r for r in range(n)]
        tables.append(MetricsTable(
            ["round", "accepted", "zeta", "q_error", "wall_s"],
            [rounds, counts, extra, errors, walls], n))
    tables.append(MetricsTable(["round", "q_error"], [(), []], 0))
    for table in tables:
        rows = list(table)
        assert metrics_text(table) == metrics_text(rows)
        assert repr(table[2:5]) == repr(rows[2:5]) and len(table) == len(rows)
        if rows:
            assert repr(table[-1]) == repr(rows[-1]) and list(table[0]) == list(rows[0])
        for name in ("round", "zeta", "q_error", "absent"):
            assert repr(list(history_column(table, name))) == repr(
                history_column(rows, name)) == repr([r.get(name) for r in rows])
    with pytest.raises(IndexError):
        tables[0][n]


def test_write_metrics_writes_what_csv_dictwriter_writes(tmp_path):
    """DESIGN.md columns first, extras sorted after; None and a missing key are empty cells."""
    from flower_qlearn.outputs import METRIC_COLUMNS, read_metrics, write_metrics

    full = [{c: None for c in METRIC_COLUMNS} | {"round": r, "q_error": 0.5 / r, "zeta": r}
            for r in (1, 2, 3)]
    sparse = [{"round": 1, "q_error": 1e-05}, {"round": 2, "q_error": float("nan"), "beta": 7}]
    for history in (full, sparse):
        path = tmp_path / "metrics.csv"
        write_metrics(path, history)
        columns = list(METRIC_COLUMNS) + sorted({k for row in history for k in row}
                                                - set(METRIC_COLUMNS))
        with (tmp_path / "expected.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, columns, restval="")
            writer.writeheader()
            writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in history])
        assert path.read_text() == (tmp_path / "expected.csv").read_text()
        assert [r["round"] for r in read_metrics(path)] == [r["round"] for r in history]


def test_metrics_text_is_what_csv_writer_writes():
    """outputs.metrics_text (columns of numbers joined without csv's per-cell checks) against
    the plain csv.writer of every row: ints and floats (their repr: nan, inf, -0.0, 1e-300,
    1e+16), big ints, missing keys and None as empty cells, bool, numpy scalars, strings that
    need quoting, a header that needs quoting, no rows at all."""
    import io

    from flower_qlearn.outputs import METRIC_COLUMNS, metrics_text

    def plain(history):
        columns = list(METRIC_COLUMNS) + sorted({k for row in history for k in row}
                                                - set(METRIC_COLUMNS))
        fh = io.StringIO(newline="")
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows([[row.get(c) for c in columns] for row in history])
        return fh.getvalue()

    floats = [0.1, 1 / 3, -0.0, 0.0, float("nan"), float("inf"), float("-inf"), 1e-300, 1e16,
              5e-324, 2.5, 123456789.125, -7.0]
    batched = [{"round": r, "samples_per_agent": 50 * r, "accepted": 20, "rejected": 0,
                "missing": 0, "bytes_up": 11520, "bytes_down": 5760, "kept_previous": 0,
                "q_error": floats[r % len(floats)], "normalized_q_error": 0.1 * r,
                "wall_s": 1.0 + r / 7} for r in range(1, 40)]
    mixed = [{"round": 1, "q_error": 2**70, "gamma": 0.9, "samples_per_agent": 50},
             {"round": 2, "q_error": None, "samples_per_agent": 75.5, "zeta": -3},
             {"round": 3, "q_error": 1e-5, "alpha": 1, "samples_per_agent": None}]
    odd = [{"round": 1, "flag": True, "q_error": np.float64(0.25), "rejected": np.int64(3)},
           {"round": 2, "flag": False, "note": 'a "quoted", odd\nvalue', "q_error": 0.5},
           {"round": 3, "note": " padded ", "weird,name": 1, "q\nline": 2.0}]
    for history in (batched, mixed, odd, [], [{}], batched + mixed + odd):
        assert metrics_text(history) == plain(history), history[:2]
    assert metrics_text([]) == ",".join(METRIC_COLUMNS) + "\r\n"


def _job(path: str, overrides: dict[str, str], errors: list[float]) -> sweeps.Job:
    rows = [
        {"round": r + 1, "samples_per_agent": 10.0 * (r + 1), "normalized_q_error": e}
        for r, e in enumerate(errors)
    ]
    return sweeps.Job(Path(path), overrides, {}, rows)


def test_scaling_slope_and_tail_average_by_hand():
    # err = c / sqrt(K) (times a seed factor) in the tail: E[err^2] ~ 1/K, slope exactly 1.
    jobs = []
    for k in (1, 2, 4, 8):
        for seed, factor in enumerate((0.9, 1.1)):
            tail = [factor * 0.1 / math.sqrt(k)] * 4
            jobs.append(
                _job(
                    f"{k}-{seed}",
                    {"num_clients": str(k), "seed": str(seed)},
                    [5.0, 4.0, 3.0, 2.0, *tail],
                )
            )
    scaling = sweeps.scaling_table(jobs, "num_clients", "normalized_q_error", tail=0.5)
    assert scaling.slope == pytest.approx(1.0, abs=1e-9)
    assert [row["num_clients"] for row in scaling.rows] == [1, 2, 4, 8]
    expected = (0.9**2 + 1.1**2) / 2 * 0.01 / 4  # mean over seeds of err^2, K = 4
    assert scaling.rows[2]["E[normalized_q_error^2]"] == pytest.approx(expected, rel=1e-3)
    assert scaling.rows[2]["tail rounds"] == 4
    with pytest.raises(ValueError, match="not a number > 0"):
        sweeps.scaling_table(
            jobs[:2] + [_job("x", {"num_clients": "0"}, [1.0])], "num_clients", "normalized_q_error"
        )


def test_first_reach_reports_transient_dips():
    curve = sweeps.aggregate(
        [_job("a", {}, [0.5, 0.04, 0.06, 0.045, 0.03])], "normalized_q_error", "round"
    )
    assert sweeps.first_reach(curve, 0.05) == (2.0, 4.0)
    assert sweeps.first_reach(curve, 0.01) == (None, None)
    ends_above = sweeps.aggregate([_job("b", {}, [0.5, 0.04, 0.06])], "normalized_q_error")
    assert sweeps.first_reach(ends_above, 0.05) == (2.0, None)


def test_runs_without_hydra_fall_back_to_config_differences():
    jobs = [
        sweeps.Job(
            Path(str(i)),
            None,
            {"strategy": {"name": s}, "seed": i, "output_dir": str(i)},
            [{"round": 1, "samples_per_agent": 5.0, "q_error": 1.0}],
        )
        for i, s in enumerate(["equal", "equal", "importance"])
    ]
    assert sweeps.varying_keys(jobs) == ["strategy.name"]


#: Sweeps whose statistic is not a mean over seeds (each says why).
NOT_SEED_SWEEPS = {
    "mc_policy": "one greedy policy per MDP; its statistic is the per-round Monte-Carlo 95% CI",
}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_configs_compose_and_every_sweep_point_validates(name):
    """Every shipped experiment composes; a sweep (``hydra.sweeper.params``) validates per value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = fq_config.config_dir() / "experiment" / f"{name}.yaml"
    assert path.read_text().startswith("# @package _global_")
    params = (yaml.safe_load(path.read_text()).get("hydra") or {}).get("sweeper", {}).get("params")
    if not params:  # a single-run experiment
        assert fq_config.compose([f"+experiment={name}"]).num_rounds >= 1
        return
    if name not in NOT_SEED_SWEEPS:
        assert "seed" in params, "sweep experiments average over seeds"
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for o in parsed
    ]
    # Each swept value with the others at their first value (composition costs ~20 ms each).
    points = {tuple(c[0] for c in choices)}
    for i, options in enumerate(choices):
        for value in options:
            points.add(tuple(value if j == i else c[0] for j, c in enumerate(choices)))
    for point in points:
        cfg = fq_config.compose([f"+experiment={name}", *point])
        assert cfg.num_rounds >= 1


@pytest.mark.slow
def test_joblib_launcher_gives_the_same_numbers(multirun, tmp_path):
    """The documented parallel option: ``hydra/launcher=joblib`` (2 workers)."""
    sweep_dir, _ = multirun
    proc = _flower_qlearn(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *SWEEP[:1],
        "seed=0",
        *SWEEP[2:],
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    hand = _by_hand(sweep_dir, "q_error")
    for job, strategy in (("0", "equal"), ("1", "importance")):
        parallel = _csv_column(tmp_path / job / "metrics.csv", "q_error")
        np.testing.assert_array_equal(parallel, hand[strategy][0])


# --------------------------------------------------------------------------------------------
# Figures as a user sees them (issue 15), on sweep directories written here: no run needed.
# --------------------------------------------------------------------------------------------


def _write_sweep(
    root: Path, grid: dict[str, list], seeds: int, metrics, rounds: int = 30, plot=None
) -> Path:
    """A Hydra-style multirun: ``root/<n>/{.hydra/overrides.yaml, .hydra/config.yaml,
    metrics.csv}``, one job per grid point and seed; ``metrics(params, seed, round)`` -> row."""
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    num = 0
    for params in points:
        for seed in range(seeds):
            job = root / str(num)
            num += 1
            (job / ".hydra").mkdir(parents=True)
            overrides = [f"{k}={v}" for k, v in params.items()] + [f"seed={seed}"]
            (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
            config = {"seed": seed, **({"plot": plot} if plot else {})}
            (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
            rows = [
                {"round": r, "samples_per_agent": 50 * r, **metrics(params, seed, r)}
                for r in range(1, rounds + 1)
            ]
            with (job / "metrics.csv").open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    return root


def _decay(params: dict, seed: int, r: int) -> dict:
    scale = {"equal": 1.0, "importance": 0.6}[params["strategy"]]
    scale *= {"uniform": 1.0, "disjoint": 1.5}[params.get("client.behavior", "uniform")]
    return {"normalized_q_error": scale * 0.85**r * (1 + 0.02 * seed), "q_error": 9 * scale / r}


@pytest.fixture
def saved_figures(monkeypatch) -> dict[str, Figure]:
    """Every figure the plot command saves, by file name, to look at its title, legend, ticks."""
    saved: dict[str, Figure] = {}
    savefig = Figure.savefig

    def recording_savefig(self, fname, *args, **kwargs):
        saved[Path(fname).name] = self
        return savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    return saved


def _legend_texts(fig: Figure) -> list[str]:
    legend = fig.axes[0].get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_sweep_figure_title_says_what_was_swept(tmp_path, saved_figures):
    sweep_dir = _write_sweep(
        tmp_path / "18-16-40",
        {"strategy": ["equal", "importance"], "client.behavior": ["uniform", "disjoint"]},
        3,
        _decay,
    )
    assert plot_command.main([str(sweep_dir)]) == 0
    title = saved_figures["normalized_q_error.png"].axes[0].get_title()
    assert "normalized_q_error: strategy x behavior, mean of 3 seeds" in title
    assert "95% t-interval" in title
    assert "18-16-40" not in title and "runs in" not in title
    # A title given by the user (or the sweep's plot.title) comes first; the description stays.
    assert plot_command.main([str(sweep_dir), "--title", "Woo et al., K=20"]) == 0
    title = saved_figures["q_error.png"].axes[0].get_title()
    assert title.splitlines()[0] == "Woo et al., K=20"
    assert "q_error: strategy x behavior, mean of 3 seeds" in title.splitlines()[1]


def test_another_x_axis_does_not_overwrite_the_default_figures(tmp_path, saved_figures):
    sweep_dir = _write_sweep(tmp_path / "sweep", {"strategy": ["equal", "importance"]}, 2, _decay)
    figures = sweep_dir / "figures"
    assert plot_command.main([str(sweep_dir)]) == 0
    default = (figures / "q_error.png").read_bytes()
    assert plot_command.main([str(sweep_dir), "--x", "round", "--name", "v1"]) == 0
    assert plot_command.main([str(sweep_dir), "--x", "round"]) == 0
    assert (figures / "q_error.png").read_bytes() == default
    assert saved_figures["q_error.png"].axes[0].get_xlabel() == "samples per agent"
    assert saved_figures["q_error_vs_round.png"].axes[0].get_xlabel() == "round"
    assert (figures / "v1_normalized_q_error_vs_round.png").is_file()
    # The default x is the sweep's own (plot.x): then the other axis gets the suffix.
    dasa_like = _write_sweep(
        tmp_path / "dasa", {"strategy": ["equal", "importance"]}, 2, _decay, plot={"x": "round"}
    )
    assert plot_command.main([str(dasa_like), "--metric", "q_error"]) == 0
    other_x = ["--metric", "q_error", "--x", "samples_per_agent"]
    assert plot_command.main([str(dasa_like), *other_x]) == 0
    assert saved_figures["q_error.png"].axes[0].get_xlabel() == "round"
    assert (dasa_like / "figures" / "q_error_vs_samples_per_agent.png").is_file()


def _gap(params: dict, seed: int, r: int) -> dict:
    # importance: the greedy policy is optimal from round 6 on (a gap of exactly 0); equal: from
    # round 10 on, where one seed's gap is a rounding residue (1e-16), as rho* - rho(pi) gives.
    solved = 6 if params["strategy"] == "importance" else 10
    gap = 0.3 * 0.5**r if r < solved else (1e-16 if seed == 0 else 0.0)
    return {"gain_error": 0.5 * 0.9**r, "policy_gain_gap": gap}


def _zero_marks(fig: Figure) -> list:
    ax = fig.axes[0]
    return [line for line in ax.lines if line.get_marker() == "v" and line.get_label()[0] == "_"]


def test_zeros_on_a_log_axis_are_marked_on_the_axis_bottom(tmp_path, saved_figures):
    sweep_dir = _write_sweep(
        tmp_path / "avg", {"strategy": ["equal", "importance"]}, 3, _gap, rounds=15
    )
    args = [str(sweep_dir), "--metric", "policy_gain_gap", "--yscale", "log"]
    assert plot_command.main(args) == 0
    fig = saved_figures["policy_gain_gap.png"]
    ax = fig.axes[0]
    bottom = ax.get_ylim()[0]
    smallest_gap = 0.3 * 0.5**9  # equal's last positive gap
    assert bottom == pytest.approx(smallest_gap / 3)  # not 1e-12, not a made-up floor
    for line in ax.lines:
        if line.get_marker() != "v" and line.get_label().endswith("(n=3)"):
            y = np.asarray(line.get_ydata(), dtype=float)
            assert np.nanmin(y) >= smallest_gap * (1 - 1e-9)  # the line never dips to a floor
            assert np.isnan(y).sum() == {"equal": 6, "importance": 10}[line.get_label()[:-6]]
    marks = _zero_marks(fig)
    rounds_at_zero = sorted(len(m.get_xdata()) for m in marks)
    assert rounds_at_zero == [6, 10]  # each group's zeros, one triangle per x
    assert all(m.get_transform() == ax.get_xaxis_transform() for m in marks)  # axes units
    assert min(float(np.max(m.get_ydata())) for m in marks) == 0.0  # on the axis bottom
    assert plots.ZERO_LABEL in _legend_texts(fig)


def test_single_run_figure_marks_a_zero_gap_instead_of_drawing_1e_12(tmp_path, saved_figures):
    history = [
        {"samples_per_agent": 50 * r, **_gap({"strategy": "equal"}, 1, r)} for r in range(1, 15)
    ]
    plots.plot_run(history, tmp_path, objective="average_reward")
    fig = saved_figures["policy_gain_gap.png"]
    ax = fig.axes[0]
    (curve,) = [line for line in ax.lines if line.get_marker() != "v"]
    assert np.nanmin(np.asarray(curve.get_ydata(), dtype=float)) > 1e-4
    assert ax.get_ylim()[0] > 1e-4
    ((mark),) = _zero_marks(fig)
    assert list(mark.get_xdata()) == [50.0 * r for r in range(10, 15)]
    assert _legend_texts(fig) == [plots.ZERO_LABEL]


def test_reach_threshold_is_in_the_legend(tmp_path, saved_figures):
    sweep_dir = _write_sweep(tmp_path / "sweep", {"strategy": ["equal", "importance"]}, 2, _decay)
    assert plot_command.main([str(sweep_dir), "--reach", "normalized_q_error=0.05"]) == 0
    texts = _legend_texts(saved_figures["normalized_q_error.png"])
    assert "reach threshold 0.05" in texts
    assert texts[:2] == ["equal (n=2)", "importance (n=2)"]
    assert not any("threshold" in t for t in _legend_texts(saved_figures["q_error.png"]))


def _floor(params: dict, seed: int, r: int) -> dict:
    # Error floor ~ 1/sqrt(K): 1/E[err^2] spans less than a decade over K = 2..6.
    k = int(params["num_clients"])
    return {"normalized_q_error": 0.05 / math.sqrt(k) * (1 + 0.05 * (seed - 1)) + 0.5 * 0.7**r}


def test_vs_figure_labels_only_clean_major_ticks(tmp_path, saved_figures):
    sweep_dir = _write_sweep(tmp_path / "speedup", {"num_clients": [2, 3, 4, 6]}, 3, _floor)
    assert plot_command.main([str(sweep_dir), "--vs", "num_clients"]) == 0
    fig = saved_figures["normalized_q_error_vs_num_clients.png"]
    fig.canvas.draw()
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert high / low < 10  # less than a decade: where matplotlib labels minor ticks "3x10^0"
    for axis in (ax.xaxis, ax.yaxis):
        assert [t.get_text() for t in axis.get_ticklabels(minor=True)] == [""] * len(
            axis.get_ticklabels(minor=True)
        )
    assert [t.get_text() for t in ax.xaxis.get_ticklabels()] == ["2", "3", "4", "6"]
    y_labels = [
        t.get_text()
        for t, v in zip(ax.yaxis.get_ticklabels(), ax.yaxis.get_ticklocs(), strict=True)
        if low <= v <= high
    ]
    assert len(y_labels) >= 2 and all(label.isdigit() for label in y_labels)  # e.g. 1000, 2000


def test_help_shows_a_plain_percent_sign(capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot_command.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "95% band" in " ".join(out.split())  # argparse may wrap the line
    assert "%%" not in out


def test_mean_band_matches_a_hand_computation():
    values = np.array([[1.0, 2.0, np.nan], [3.0, 2.5, 4.0], [2.0, 6.0, np.nan], [5.0, np.nan, 1]])
    mean, low, high = sweeps.mean_band(values)
    for j, df in ((0, 3), (1, 2)):
        column = values[~np.isnan(values[:, j]), j]
        half = T975[df] * column.std(ddof=1) / math.sqrt(df + 1)
        assert mean[j] == pytest.approx(column.mean(), rel=1e-12)
        assert (low[j], high[j]) == pytest.approx((column.mean() - half, column.mean() + half))
    half = T975[1] * np.std([4.0, 1.0], ddof=1) / math.sqrt(2)
    assert (low[2], high[2]) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-12)
    # One value: a zero-width band, not NaN.
    assert sweeps.mean_band(np.array([[0.3]])) == (
        pytest.approx([0.3]),
        pytest.approx([0.3]),
        pytest.approx([0.3]),
    )


def test_the_hydra_callback_module_does_not_import_matplotlib():
    code = (
        "import sys, flower_qlearn.sweep_callback; "
        "print(sorted(m for m in ('matplotlib', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    # The old _target_ keeps working.
    from flower_qlearn import sweep_callback

    assert plots.SweepFigures is sweep_callback.SweepFigures
