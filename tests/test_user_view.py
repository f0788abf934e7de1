"""What a user sees: progress lines, one output directory per run, no duplicated log lines."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from flower_qlearn import progress, run_experiment

LINE = re.compile(
    r"\[round (\d+)/(\d+)\] (\d+)% (\S+) rounds/s ETA (\S+) (\w+)=(\S+) samples/agent=(\S+) "
    r"accepted=(\S+) rejected=(\S+) wall=(\S+)"
)


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flower_qlearn", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _progress_lines(text: str) -> list[re.Match]:
    return [m for m in map(LINE.search, text.splitlines()) if m]


@pytest.mark.parametrize(
    ("overrides", "metric"),
    [
        (["num_rounds=20", "log_every=5"], "normalized_q_error"),
        (["+experiment=avg_garnet", "strategy.num_epochs=10", "log_every=5"], "gain_error"),
    ],
)
def test_progress_line_has_rounds_rate_eta_and_the_figures_metric(overrides, metric, tmp_path):
    proc = _cli(*overrides, "figures=false", f"output_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = _progress_lines(proc.stderr + proc.stdout)
    total = int(lines[-1].group(2))
    assert [int(m.group(1)) for m in lines] == list(range(5, total + 1, 5))
    last = lines[-1]
    assert last.group(3) == "100" and last.group(5) == "0.0s" and last.group(6) == metric
    assert float(last.group(4)) > 0
    # the value printed is the one the figures plot (and metrics.csv holds)
    from flower_qlearn.outputs import read_metrics

    final = read_metrics(tmp_path / "run" / "metrics.csv")[-1]
    assert float(last.group(7)) == pytest.approx(final[metric], rel=1e-3)


def test_round_line_eta_from_the_rate_of_this_process():
    row = {"round": 30, "normalized_q_error": 0.25, "samples_per_agent": 1500, "accepted": 20,
           "rejected": 0, "wall_s": 12.0}
    line = progress.round_line(row, 100, elapsed=10.0, done_here=20)  # resumed at round 11
    assert line.startswith("[round 30/100] 30% 2 rounds/s ETA 35s normalized_q_error=0.25 ")
    assert progress.parse_round(line) == (30, 100)
    assert progress.duration(3725) == "1h02m" and progress.duration(65) == "1m05s"


def test_one_output_dir_holds_results_config_overrides_and_log(tmp_path):
    out = tmp_path / "mine"
    proc = _cli("num_rounds=3", "figures=false", f"output_dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} >= {"metrics.csv", "summary.json", "q_table.npy",
                                                ".hydra", "flower-qlearn.log"}
    assert "num_rounds=3" in (out / ".hydra" / "overrides.yaml").read_text()
    assert "[round 3/3]" in (out / "flower-qlearn.log").read_text()
    assert not (tmp_path / "outputs").exists()  # nothing split off into Hydra's own run dir
    # the same from Python
    py = tmp_path / "python"
    run_experiment(["num_rounds=3", "figures=false", f"output_dir={py}"])
    assert {p.name for p in (py / ".hydra").iterdir()} == {"config.yaml", "overrides.yaml"}
    assert "[round 3/3]" in (py / "flower-qlearn.log").read_text()


def test_a_multirun_shows_jobs_done_with_an_eta_and_strategy_lines_once(tmp_path):
    proc = _cli("-m", "strategy=equal,importance", "seed=0,1", "num_clients=2", "num_rounds=2",
                "figures=false", "sweep_figures=false", "min_replies=2",
                f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    done = re.findall(r"\[multirun\] (\d+)/(\d+) jobs done, \S+ elapsed, ETA (\S+)",
                      proc.stdout + proc.stderr)
    assert [(int(a), int(b)) for a, b, _ in done] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert done[-1][2] == "0.0s"


def test_a_flower_log_line_is_printed_once_in_the_cli(tmp_path):
    proc = _cli("strategy=dasa", "strategy.execution=async", "strategy.rule=delayed",
                "num_clients=3", "num_rounds=2", "figures=false", f"output_dir={tmp_path / 'd'}",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).count("DASA async: tick") == 1


def test_a_single_experiment_run_draws_its_figure(tmp_path):
    proc = _cli("+experiment=woo_heterogeneity", "num_rounds=3", "num_clients=4",
                f"output_dir={tmp_path / 'e'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "e" / "figures" / "error_vs_samples.png").stat().st_size > 1000
