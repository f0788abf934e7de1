"""Every bad input refused before anything runs; Ctrl-C, closed pipes and shared output dirs.

Each bad input is given to the real command line (``python -m flower_qlearn``, a subprocess):
it must exit with status 2 and print exactly one line naming the field and the allowed range,
no traceback, and write nothing (no Hydra run dir, no output dir). The interruption, the pipe
and the lock tests send the real signal, close the real pipe and start real second processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flower_qlearn import config as fq_config
from flower_qlearn import outputs, resources, run_experiment, schema
from flower_qlearn.defaults import top_level_defaults
from flower_qlearn.mdp import make_mdp

QUICK = ["num_clients=2", "client.local_steps=5", "figures=false"]


def _cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flower_qlearn", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _popen(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flower_qlearn", *args], cwd=cwd,
                            text=True, **kwargs)


def _wait_for(predicate, timeout: float = 240.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------
# Refused up front: one line naming the field and the range, exit 2, nothing written
# ------------------------------------------------------------------------------------------

REFUSED = [
    # unknown keys, appended (+) or not, at every level; the typo gets a suggestion
    (["+num_client=4"], ["num_client is not a key", "did you mean num_clients?"]),
    (["num_client=4"], ["num_client is not a key", "did you mean num_clients?"]),
    (["+foo=1"], ["foo is not a key of this config", "expected one of", "num_rounds"]),
    (["+client.foo=1"], ["client.foo is not a key", "client.local_steps"]),
    (["client.foo=1"], ["client.foo is not a key"]),
    (["+mdp.bar=2"], ["mdp.bar is not a key of mdp=two_state", "mdp.gamma"]),
    # a key of another option of the group: say which option has it
    (["+mdp.branching=3"], ["mdp.branching is not a key of mdp=two_state",
                            "only of mdp=garnet"]),
    (["+strategy.epsilon=0.1"], ["strategy.epsilon is not a key of strategy=equal",
                                 "only of strategy=dasa"]),
    # wrong types
    (["figures=maybe"], ["figures='maybe'", "true or false"]),
    (["num_rounds=abc"], ["num_rounds='abc'", "an integer >= 1"]),
    (["seed=1.5"], ["seed=1.5", "an integer >= 0"]),
    (["log_every=true"], ["log_every=True", "an integer >= 0"]),
    # absurd sizes: more than this machine's memory
    (["num_clients=1000000000"], ["num_clients=1000000000", "an integer in [1, ",
                                  "of memory available"]),
    (["mdp=garnet", "mdp.num_states=1000000000", "mdp.num_actions=1", "mdp.branching=1"],
     ["mdp.num_states=1000000000", "transition tables fit in memory"]),
    # what the MDP builders enforce
    (["mdp=riverswim", "mdp.num_actions=3"], ["mdp.num_actions=3",
                                              "2 (riverswim has 2 actions"]),
    (["mdp=riverswim", "mdp.num_states=1"], ["mdp.num_states=1", ">= 2"]),
    (["mdp=frozenlake", "mdp.map_name=9x9"], ["mdp.map_name='9x9'", "one of 4x4, 8x8"]),
    (["mdp=frozenlake", "mdp.map_name=8x8"], ["mdp.num_states=16", "64 (frozenlake map 8x8"]),
    (["mdp=taxi", "mdp.num_states=7"], ["mdp.num_states=7", "500 (taxi has 500 states"]),
    (["mdp=cliffwalking", "mdp.num_actions=5"], ["mdp.num_actions=5", "4 (cliffwalking"]),
    # TD(0) with one feature per state on a large MDP: the exact d x d system would not fit
    (["+experiment=dasa_td_speedup", "mdp.num_states=5000", "strategy.num_features=null"],
     ["mdp.num_states=5000", "at most 2000 with tabular features",
      "strategy.features=random strategy.num_features=d"]),
    (["+experiment=dasa_td_speedup", "mdp.num_states=5000", "strategy.num_features=2001"],
     ["strategy.num_features=2001", "null or an integer in [1, 2000]"]),
    # a strategy that makes no sense on the MDP: the hint names the variant that does
    (["mdp=taxi", "strategy=average_reward"], ["mdp.terminal='absorbing'",
                                               "mdp.terminal=reset"]),
]


@pytest.mark.parametrize(("args", "expected"), REFUSED, ids=lambda a: " ".join(a))
def test_cli_refuses_bad_input_in_one_line_before_anything_is_written(args, expected, tmp_path):
    rounds = [] if any(a.startswith("num_rounds") for a in args) else ["num_rounds=2"]
    proc = _cli(*args, *rounds, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("flower-qlearn: invalid config: ")
    for part in expected:
        assert part in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []  # no outputs/, no multirun/, nothing


def test_unwritable_output_dirs_are_refused_naming_why(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    cases = [
        (a_file, f"{a_file} is not a directory"),
        (a_file / "sub", f"{a_file} is not a directory"),
        (Path("/proc/flower-qlearn-x"), "/proc is not writable"),
    ]
    for target, why in cases:
        proc = _cli(f"output_dir={target}", "num_rounds=2", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert f"invalid config: output_dir='{target}' is out of range" in line
        assert "a directory that can be created and written" in line and why in line
        assert target == a_file or not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    assert a_file.read_text() == "not a directory"


def test_a_read_only_directory_is_refused_and_a_new_one_is_creatable(tmp_path):
    assert outputs.output_dir_problem(tmp_path / "gone" / "deep") is None  # creatable
    if os.geteuid() == 0:
        pytest.skip("root writes into a mode-555 directory; /proc covers the refusal above")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        problem = outputs.output_dir_problem(ro / "run")
        assert problem is not None and "not writable" in problem
    finally:
        ro.chmod(0o755)


def test_group_specific_keys_hydra_overrides_and_experiments_still_work(tmp_path):
    # keys that exist only for one option are known when that option is chosen
    for overrides in (["mdp=garnet", "mdp.branching=2"],
                      ["strategy=dasa", "strategy.epsilon=0.1", "delay=stragglers",
                       "delay.low=1", "delay.high=3"],
                      ["mdp=frozenlake", "mdp.map_name=8x8", "mdp.num_states=64"],
                      ["mdp=taxi", "mdp.terminal=reset", "strategy=average_reward"],
                      ["+experiment=dasa_td_delays"], ["+experiment=avg_frozenlake"]):
        fq_config.compose(overrides)
    # Hydra's own overrides (also appended ones) reach Hydra: the job is named by them
    run_dir = tmp_path / "run"
    proc = _cli(*QUICK, "num_rounds=2", f"hydra.run.dir={run_dir}", "hydra.job.name=renamed",
                "+hydra.job.env_set.FLOWER_QLEARN_TEST=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "renamed.log").is_file() and (run_dir / "metrics.csv").is_file()


def test_every_key_of_the_conf_tree_has_a_rule():
    from flower_qlearn.known_keys import _all_keys, _global_extras

    fields = {r.field for r in fq_config.all_rules()}
    assert set(top_level_defaults()) <= fields, set(top_level_defaults()) - fields
    keys = _all_keys() - _global_extras()  # every option of every group (not experiments' plot)
    assert keys - fields == set()
    # and a wrong type of each is refused (a string where a number or bool is expected)
    for key, default in top_level_defaults().items():
        if isinstance(default, bool | int | float):
            with pytest.raises(schema.ConfigError, match=key):
                fq_config.compose([f"{key}=not_a_number"])


def test_the_rules_follow_the_registered_strategies():
    """all_rules is built once per set of registered strategies: registering a strategy (or
    another spec under a name) adds its rules, removing it drops them."""
    import dataclasses

    from flower_qlearn.strategies import registry

    def fields():
        return {r.field for r in fq_config.all_rules()}

    before = fields()
    assert fq_config.all_rules() is not fq_config.all_rules()  # each caller gets its own list
    base = registry.STRATEGIES["equal"]
    extra = schema.Rule("client.test_only_knob", schema.never, "nothing")
    registry.register(dataclasses.replace(base, name="test_only", rules=(extra,)))
    try:
        assert fields() == before | {"client.test_only_knob"}
        registry.STRATEGIES["test_only"] = dataclasses.replace(base, name="test_only")
        assert fields() == before
    finally:
        del registry.STRATEGIES["test_only"]
    assert fields() == before


def test_memory_estimate_counts_the_arrays_a_run_really_allocates():
    # the transition term is what the builder allocates with one successor per (s, a), byte
    # for byte, and a lower bound with more
    one = make_mdp("garnet", gamma=0.9, num_states=40, num_actions=3, branching=1)
    assert resources.transition_bytes(40, 3) == one.transitions.nbytes
    three = make_mdp("garnet", gamma=0.9, num_states=40, num_actions=3, branching=3)
    assert resources.transition_bytes(40, 3) < three.transitions.nbytes
    # max_clients is the exact boundary of run_memory_bytes <= available
    available = 3 * 2**30
    k = resources.max_clients(available, 500, 6)
    assert resources.run_memory_bytes(k, 500, 6) <= available
    assert resources.run_memory_bytes(k + 1, 500, 6) > available
    # with the clients on other machines (deployment) the server alone needs far less
    assert resources.max_clients(available, 500, 6, clients_here=False) > k
    # the machine's available memory is read and is below its total memory
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    got = resources.available_memory_bytes()
    assert got is not None and 0 < got <= total


# ------------------------------------------------------------------------------------------
# Ctrl-C: one line, partial metrics kept, exit 130
# ------------------------------------------------------------------------------------------


def _rounds_logged(log_file: Path) -> int:
    if not log_file.is_file():
        return 0
    return log_file.read_text().count("[round ")


def test_ctrl_c_keeps_the_rounds_done_and_says_where_in_one_line(tmp_path):
    out = tmp_path / "run"
    proc = _popen(*QUICK, "num_rounds=5000", "client.sleep_s=0.01", "log_every=1",
                  f"output_dir={out}", cwd=tmp_path, stdout=subprocess.DEVNULL,
                  stderr=subprocess.PIPE)
    _wait_for(lambda: _rounds_logged(out / outputs.LOG_FILE) >= 3, what="3 rounds")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    (line,) = err.strip().splitlines()
    assert line.startswith("flower-qlearn: interrupted after round ")
    done = int(line.split("interrupted after round ")[1].split("/")[0])
    assert line.endswith(f"/5000; partial results in {out / outputs.METRICS_FILE}")
    history = outputs.read_metrics(out / outputs.METRICS_FILE)
    assert [row["round"] for row in history] == list(range(1, done + 1)) and done >= 3
    assert not (out / outputs.LOCK_FILE).exists()  # the lock went with the run


def test_ctrl_c_in_a_multirun_stops_it_with_one_line_after_the_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _popen("-m", "num_rounds=3,5000", *QUICK, "log_every=1", "client.sleep_s=0.01",
                  "sweep_figures=false", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # job 0 (3 rounds) finishes; job 1 (5000 rounds) is interrupted
    _wait_for(lambda: _rounds_logged(sweep / "1" / outputs.LOG_FILE) >= 2, what="job 1")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    (line,) = err.strip().splitlines()
    assert line.startswith("flower-qlearn: [job 1] interrupted after round ")
    assert len(outputs.read_metrics(sweep / "0" / outputs.METRICS_FILE)) == 3
    assert (sweep / "0" / outputs.SUMMARY_FILE).is_file()
    assert len(outputs.read_metrics(sweep / "1" / outputs.METRICS_FILE)) >= 2


# ------------------------------------------------------------------------------------------
# A closed pipe is not an error
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["--hydra-help"], ["--cfg", "job"]])
def test_output_into_a_closed_pipe_is_no_broken_pipe_error(args, tmp_path):
    proc = _popen(*args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written: every write fails
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert "BrokenPipeError" not in err and "Traceback" not in err, err
    assert proc.returncode == 0, err


def test_a_run_piped_into_head_still_writes_its_results(tmp_path):
    out = tmp_path / "run"
    shell = (f"{sys.executable} -m flower_qlearn {' '.join(QUICK)} num_rounds=30 log_every=1 "
             f"output_dir={out} | head -1")
    proc = subprocess.run(["sh", "-c", shell], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert "BrokenPipeError" not in proc.stderr and "Logging error" not in proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    assert len(outputs.read_metrics(out / outputs.METRICS_FILE)) == 30
    assert (out / outputs.SUMMARY_FILE).is_file()


def test_plot_command_into_a_closed_pipe_is_no_broken_pipe_error(tmp_path):
    out = tmp_path / "run"
    run_experiment([*QUICK, "num_rounds=3", "log_every=0", f"output_dir={out}"])
    plot = Path(sys.executable).with_name("flower-qlearn-plot")
    proc = subprocess.Popen([str(plot), str(out)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert "BrokenPipeError" not in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------------------
# Nothing lost: a held output dir is refused, a stale lock taken over; the engine that ran
# ------------------------------------------------------------------------------------------


def test_a_second_run_into_a_held_output_dir_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "shared"
    first = _popen(*QUICK, "num_rounds=5000", "client.sleep_s=0.01", "log_every=1",
                   f"output_dir={out}", cwd=tmp_path, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _rounds_logged(out / outputs.LOG_FILE) >= 1, what="the first run")
        config_before = (out / ".hydra" / "config.yaml").read_bytes()
        second = _cli(*QUICK, "num_rounds=2", "seed=7", f"output_dir={out}", cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert f"output_dir {out} is in use by a running run (pid {first.pid} on " in line
        assert "started 20" in line and "choose another output_dir" in line
        assert (out / ".hydra" / "config.yaml").read_bytes() == config_before  # untouched
        # the Python API is refused the same way
        with pytest.raises(outputs.OutputDirInUse, match=f"pid {first.pid}"):
            run_experiment([*QUICK, "num_rounds=2", f"output_dir={out}"])
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock: a stale lock file remains
        first.wait(timeout=60)
    stale = json.loads((out / outputs.LOCK_FILE).read_text())
    assert stale["pid"] == first.pid
    third = _cli(*QUICK, "num_rounds=2", f"output_dir={out}", cwd=tmp_path)
    assert third.returncode == 0, third.stderr  # the dead run's lock is taken over
    assert len(outputs.read_metrics(out / outputs.METRICS_FILE)) == 2
    assert not (out / outputs.LOCK_FILE).exists()


def test_a_lock_record_replaces_a_longer_stale_one(tmp_path):
    """The lock file holds exactly this run's record, also over a longer one a dead run left
    (the record is written, then the file cut to its length)."""
    stale = {"pid": 999999, "host": "h" * 500, "started": "then", "command": ["x"] * 100}
    (tmp_path / outputs.LOCK_FILE).write_text(json.dumps(stale))
    with outputs.hold_output_dir(tmp_path):
        record = json.loads((tmp_path / outputs.LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] != stale["host"]
    assert not (tmp_path / outputs.LOCK_FILE).exists()


def test_summary_records_the_engine_that_ran(tmp_path):
    result = run_experiment([*QUICK, "num_rounds=2", "log_every=0", f"output_dir={tmp_path}"])
    assert result.summary["engine"] == "inprocess"


def test_the_engine_is_named_by_the_grid_the_server_app_was_given():
    # a plain `flwr run` gives the ServerApp Flower's simulation grid (Ray) or a SuperLink's
    # grid, whatever engine.name says; tests/test_ray_engine.py and tests/test_deployment.py
    # check the summaries of real runs on both
    from flwr.superlink.grid.http_grid import HttpGrid
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from flower_qlearn.experiment import engine_that_ran

    assert engine_that_ran(InMemoryGrid.__new__(InMemoryGrid)) == "ray"
    assert engine_that_ran(HttpGrid(token="t")) == "deployment"


def test_deployment_without_a_superlink_says_what_failed_in_one_line(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = _cli("engine=deployment", "engine.insecure=true", f"engine.address=127.0.0.1:{port}",
                *QUICK, "num_rounds=2", f"output_dir={tmp_path / 'dep'}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"flower-qlearn: engine=deployment: no SuperLink reachable at "
                           f"engine.address=127.0.0.1:{port} (Connection refused); start one "
                           "(flower-superlink --insecure")
    assert "Traceback" not in proc.stderr and "exit 0" not in proc.stderr
