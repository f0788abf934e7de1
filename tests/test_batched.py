"""The batched engine, its RNG port and its launcher against the references they must equal.

- :mod:`flower_qlearn.pcg64` against numpy's own SeedSequence -> PCG64 -> ``random``;
- ``engine=batched`` against ``engine=inprocess`` (real Flower messages through the real apps):
  every number of ``metrics.csv`` (``wall_s`` aside) and the final Q-table, bit for bit;
- jobs batched together (tables stacked along the state axis for the strategy's aggregation)
  against the same jobs run one by one on ``engine=inprocess``;
- ``hydra/launcher=batched`` against Hydra's basic launcher (real ``flower-qlearn -m`` runs);
- the refusals (one line, exit 2).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flower_qlearn import config as fq_config
from flower_qlearn import launcher, run_experiment
from flower_qlearn.api import run_config_for
from flower_qlearn.batched import BatchJob, run_jobs
from flower_qlearn.outputs import read_metrics
from flower_qlearn.pcg64 import fill_random, generator_state

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["num_clients=4", "num_rounds=6", "client.local_steps=7", "figures=false", "log_every=0",
         "mdp.num_actions=3"]


def _numbers(rows: list[dict]) -> list[dict]:
    """A metrics history without its one timing column and its empty (not applicable) cells."""
    return [{k: v for k, v in row.items() if k != "wall_s" and v is not None} for row in rows]


# --------------------------------------------------------------------------- the RNG port


def _entropies() -> list[list[int]]:
    rng = np.random.default_rng(12345)
    cases = [[0], [0, 0], [0, 0, 0], [7, 0, 0], [1, 2, 0, 0, 0, 0], [2**32 - 1] * 3,
             [3, 19, 600], list(range(9)), [0] * 9, [5, 0]]
    for _ in range(200):
        cases.append([int(x) for x in rng.integers(0, 2**32, int(rng.integers(1, 9)))])
    return cases


@pytest.mark.parametrize("chunk", [0, 1, 37])
def test_pcg64_port_equals_numpy_seeding_and_doubles(chunk):
    for entropy in _entropies():
        reference = np.random.default_rng(entropy)
        bits = reference.bit_generator.state["state"]
        state, inc = generator_state(entropy)
        assert (int(state[0]) << 64 | int(state[1])) == bits["state"], entropy
        assert (int(inc[0]) << 64 | int(inc[1])) == bits["inc"], entropy
        if chunk:
            out = np.empty((chunk, 2))
            fill_random(state, inc, out)
            again = np.empty(chunk)  # the stream continues where it stopped
            fill_random(state, inc, again)
            assert np.array_equal(out, reference.random((chunk, 2)))
            assert np.array_equal(again, reference.random(chunk))


def test_pcg64_port_refuses_words_numpy_would_split():
    with pytest.raises(ValueError, match="2\\*\\*32"):
        generator_state([2**32])


# --------------------------------------------------------------------------- engine = inprocess


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy=equal", "client=markovian", "client.behavior=disjoint"],
        ["strategy=importance", "client=markovian", "client.behavior=disjoint", "seed=3"],
        ["strategy=importance", "client=markovian", "client.heterogeneity=0.3", "seed=5"],
        ["strategy=equal", "client=generative", "client.heterogeneity=0.2", "seed=2"],
        ["strategy=importance", "client=generative", "seed=1"],
        ["strategy=equal", "mdp=garnet", "mdp.num_states=6", "client.behavior=dirichlet"],
        ["strategy=average_reward", "client=generative", "strategy.num_epochs=3", "seed=4"],
        ["strategy=average_reward", "client=generative", "mdp=riverswim", "mdp.num_states=5",
         "mdp.num_actions=2", "client.heterogeneity=0.2", "strategy.num_epochs=3"],
    ],
)
def test_batched_run_equals_inprocess_bit_for_bit(tmp_path, overrides):
    common = [*SMALL, *overrides]
    ref = run_experiment([*common, "engine=inprocess", f"output_dir={tmp_path / 'ref'}"])
    fast = run_experiment([*common, "engine=batched", f"output_dir={tmp_path / 'fast'}"])
    assert _numbers(fast.history) == _numbers(ref.history)
    assert np.array_equal(fast.q_table, ref.q_table)
    for key in ("initial", "ground_truth", "rejected_total", "num_rounds", "seed"):
        assert fast.summary[key] == ref.summary[key]
    assert fast.summary["engine"] == "batched"


def _settings(overrides: list[str], out: Path) -> dict:
    cfg = fq_config.compose(overrides)
    return fq_config.settings(fq_config.from_run_config(run_config_for(cfg, out)))


@pytest.mark.parametrize("strategy", ["equal", "importance"])
def test_jobs_batched_together_equal_each_job_run_alone(tmp_path, strategy):
    """Seeds, behaviors and heterogeneity differ inside one group: one compiled call per
    round, one aggregation over the stacked tables; each job equals its own inprocess run."""
    points = [["seed=0"], ["seed=4", "client.behavior=disjoint"],
              ["seed=9", "client.heterogeneity=0.25"]]
    jobs = [BatchJob(_settings([*SMALL, f"strategy={strategy}", "engine=batched", *p],
                               tmp_path / f"b{i}"), tmp_path / f"b{i}")
            for i, p in enumerate(points)]
    run_jobs(jobs)
    for i, point in enumerate(points):
        ref = run_experiment([*SMALL, f"strategy={strategy}", "engine=inprocess", *point,
                              f"output_dir={tmp_path / f'r{i}'}"])
        assert _numbers(jobs[i].history) == _numbers(ref.history), point
        assert np.array_equal(jobs[i].q_final, ref.q_table), point


# --------------------------------------------------------------------------- the launcher


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flower_qlearn", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_batched_launcher_writes_the_basic_launchers_job_dirs(tmp_path):
    sweep = ["-m", "+experiment=woo_heterogeneity", "num_rounds=4", "num_clients=3",
             "seed=0,1", "sweep_figures=false"]
    fast = _cli(*sweep, f"hydra.sweep.dir={tmp_path / 'fast'}", cwd=tmp_path)
    assert fast.returncode == 0, fast.stderr[-2000:]
    ref = _cli(*sweep, "engine=inprocess", "hydra/launcher=basic",
               f"hydra.sweep.dir={tmp_path / 'ref'}", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]
    for job in range(8):  # 2 strategies x 2 behaviors x 2 seeds
        a, b = tmp_path / "fast" / str(job), tmp_path / "ref" / str(job)
        rows_a, rows_b = (read_metrics(d / "metrics.csv") for d in (a, b))
        assert _numbers(rows_a) == _numbers(rows_b)
        assert np.array_equal(np.load(a / "q_table.npy"), np.load(b / "q_table.npy"))
        sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
        assert sa["config"]["seed"] == sb["config"]["seed"] and sa["config"]["engine"] == {
            "name": "batched"}
        assert sa["config"]["output_dir"] == str(a.resolve())
        # the batched launcher turns per-job figures off, visibly (the sweep draws its own)
        assert (a / ".hydra" / "overrides.yaml").read_text() == (
            b / ".hydra" / "overrides.yaml").read_text().replace(
            "- engine=inprocess\n", "") + "- figures=false\n"
        assert not (a / "figures").exists() and (b / "figures").is_dir()
    assert "Launching 8 jobs (8 batched)" in fast.stderr + fast.stdout


def test_computed_jobs_get_the_files_run_job_writes(tmp_path):
    """The batched launcher finishes a computed job without Hydra's ``run_job``: the same files
    as the basic launcher running each job on ``engine=batched`` (wall times and the sweep
    directory's name aside), the same one-line result per job on the console."""
    sweep = ["-m", "+experiment=woo_heterogeneity", "num_rounds=3", "num_clients=2",
             "seed=0,1", "sweep_figures=false", "figures=false"]
    fast = _cli(*sweep, f"hydra.sweep.dir={tmp_path / 'fast'}", cwd=tmp_path)
    ref = _cli(*sweep, "hydra/launcher=basic", f"hydra.sweep.dir={tmp_path / 'ref'}",
               cwd=tmp_path)
    assert fast.returncode == 0 and ref.returncode == 0, (fast.stderr + ref.stderr)[-2000:]

    def text(path: Path, sweep_dir: str) -> str:
        out = path.read_text().replace(str(tmp_path / sweep_dir), "<sweep>")
        return out.replace(launcher.HYDRA_NAME, "<launcher>").replace(
            "hydra._internal.core_plugins.basic_launcher.BasicLauncher", "<launcher>")

    for job in range(8):
        a, b = tmp_path / "fast" / str(job), tmp_path / "ref" / str(job)
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            fa, fb = (text(d / ".hydra" / name, s) for d, s in ((a, "fast"), (b, "ref")))
            if name == "hydra.yaml":  # the launcher's own node and choice differ, nothing else
                fa, fb = (re.sub(
                r"(?m)^  launcher:\n(    .*\n)*|hydra/launcher: \w+|^ *- hydra/launcher=.*\n",
                "", t)
                          for t in (fa, fb))
            assert fa == fb, (job, name)
        ma, mb = (read_metrics(d / "metrics.csv") for d in (a, b))
        assert [{k: v for k, v in r.items() if k != "wall_s"} for r in ma] == [
            {k: v for k, v in r.items() if k != "wall_s"} for r in mb]
        sa, sb = (json.loads(text(d / "summary.json", s)) for d, s in ((a, "fast"), (b, "ref")))
        for summary in (sa, sb):
            del summary["wall_s"], summary["final"]["wall_s"]
        assert sa == sb
        assert (a / "flower-qlearn.log").is_file()
    results = [line for line in fast.stdout.splitlines() if ": final q_error=" in line]
    assert [r.replace("/fast/", "/") for r in results] == [
        r.replace("/ref/", "/") for r in ref.stdout.splitlines() if ": final q_error=" in r]
    assert len(results) == 8


def test_a_held_job_dir_of_a_batched_sweep_is_one_line_exit_2(tmp_path):
    """A computed job whose directory another run holds is refused as the CLI's task refuses it
    (``OutputDirInUse``: one line, exit 2), nothing written into its directory."""
    from flower_qlearn.outputs import hold_output_dir

    sweep_dir = tmp_path / "s"
    with hold_output_dir(sweep_dir / "0"):
        out = _cli("-m", "+experiment=woo_heterogeneity", "num_rounds=2", "num_clients=2",
                   "seed=0", "strategy=equal", "client.behavior=uniform", "sweep_figures=false",
                   f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = [ln for ln in out.stderr.splitlines() if ln.startswith("flower-qlearn:")]
    assert f"output_dir {(sweep_dir / '0').resolve()} is in use by a running run" in line
    assert "Traceback" not in out.stderr
    assert not any((sweep_dir / "0").iterdir())  # the lock was ours, released


def test_a_refused_strategy_is_one_line_exit_2(tmp_path):
    out = _cli("engine=batched", "strategy=dasa", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "strategy.name='dasa'" in lines[0]
    assert "equal, importance, average_reward with engine=batched" in lines[0]


def test_an_attack_is_refused_not_silently_run_honest(tmp_path):
    out = _cli("engine=batched", "client.attack=max_value", "client.attack_agents=[0]",
               f"output_dir={tmp_path / 'a'}", cwd=tmp_path)
    assert out.returncode == 2 and not (tmp_path / "a").exists()
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "client.attack='max_value'" in lines[0]
    assert "none with engine=batched" in lines[0]


@pytest.mark.parametrize("experiment", ["woo_heterogeneity", "woo_speedup"])
def test_shipped_woo_experiments_default_to_batched_and_equal_inprocess(tmp_path, experiment):
    common = [f"+experiment={experiment}", "num_rounds=8", "num_clients=3", "seed=2"]
    fast = run_experiment([*common, f"output_dir={tmp_path / 'fast'}"])
    ref = run_experiment([*common, "engine=inprocess", f"output_dir={tmp_path / 'ref'}"])
    assert fast.summary["engine"] == "batched" and ref.summary["engine"] == "inprocess"
    assert _numbers(fast.history) == _numbers(ref.history)
    assert np.array_equal(fast.q_table, ref.q_table)


def test_table_dedup_gives_each_distinct_array_one_row():
    """batched._Tables (identity first, then content): the rows are the distinct arrays in
    order of first appearance, each array's index that of its equal row, as a plain
    search by value gives them; a shared object and an equal copy get the same row."""
    from flower_qlearn.batched import _Tables

    rng = np.random.default_rng(3)
    base = [rng.random((2, 3)) for _ in range(4)]
    arrays = [base[0], base[1], base[0], base[0].copy(), base[2], np.asfortranarray(base[1]),
              base[3], base[2], base[3].copy()]
    tables = _Tables()
    got = [tables.index(a) for a in arrays]
    unique: list[np.ndarray] = []
    for a in arrays:
        if not any(np.array_equal(u, a) for u in unique):
            unique.append(a)
    assert got == [next(i for i, u in enumerate(unique) if np.array_equal(u, a))
                   for a in arrays]
    assert np.array_equal(tables.stacked("test"), np.stack(unique))


def test_batched_histories_are_the_rows_a_round_by_round_engine_records():
    """batched._Rounds: each job's history (a table sharing the group's columns) has the rows
    {**shared, **errors, "wall_s": wall} in that key order; rounds whose keys differ give
    those rows as a list of dicts."""
    from flower_qlearn.batched import _Rounds
    from flower_qlearn.outputs import MetricsTable

    def expected(rounds, job):
        return [{**shared, **errors[job], "wall_s": wall} for shared, errors, wall in rounds]

    same = [({"round": r, "samples_per_agent": 50 * r, "accepted": 4, "gamma": 0.9 + r},
             [{"q_error": r / (j + 1), "normalized_q_error": r / (j + 2)} for j in range(3)],
             0.25 * r) for r in range(1, 6)]
    varying = [*same[:2], ({"round": 3, "accepted": 4}, same[2][1], 1.0)]
    for rounds, kind in ((same, MetricsTable), (varying, list)):
        log = _Rounds()
        for shared, errors, wall in rounds:
            log.add(shared, errors, wall)
        for job in range(3):
            history = log.history(job)
            assert isinstance(history, kind)
            assert [list(r.items()) for r in history] == [
                list(r.items()) for r in expected(rounds, job)]
            assert list(history[-1].items()) == list(expected(rounds, job)[-1].items())
    assert _Rounds().history(0) == []


def test_a_copier_copy_is_what_deepcopy_gives():
    """The launcher copies each group set's composition by pickle (``sweep_compose.copier``):
    every key, value, interpolation and flag as ``copy.deepcopy`` gives them, the hydra node
    included; the copies are independent of each other and of the original."""
    import copy

    from hydra import compose, initialize_config_dir
    from omegaconf import DictConfig, OmegaConf

    from flower_qlearn.sweep_compose import copier, task_config

    with initialize_config_dir(str(fq_config.config_dir()), version_base=None):
        cfg = compose("config", ["+experiment=woo_heterogeneity"], return_hydra_config=True)

    def nodes(node, path=""):  # (path, metadata) of every node, interpolations unresolved
        yield path, node._metadata
        if isinstance(node, DictConfig):
            for key in node.keys():
                yield from nodes(node._get_node(key), f"{path}.{key}")

    for original in (cfg, task_config(cfg)):
        make = copier(original)
        first, second, reference = make(), make(), copy.deepcopy(original)
        assert OmegaConf.to_container(first, resolve=False) == OmegaConf.to_container(
            reference, resolve=False)
        assert list(nodes(first)) == list(nodes(reference))
        first.seed = 12345
        assert second.seed == reference.seed == original.seed != 12345
    assert "hydra" in cfg and "hydra" not in task_config(cfg)
    assert OmegaConf.is_struct(task_config(cfg)) == OmegaConf.is_struct(cfg)


def test_the_sweep_composer_gives_hydras_job_configs_and_their_changed_paths():
    """sweep_compose.SweepComposer against Hydra's own load_sweep_config: each job's whole
    config (hydra node included) is Hydra's; and two jobs of one group set differ only at the
    paths changes() reports (what SectionTexts reuses the other sections on)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from flower_qlearn.launcher import without_job_figures
    from flower_qlearn.sweep_compose import SweepComposer

    def leaves(node, path=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from leaves(value, f"{path}.{key}" if path else key)
        else:
            yield path, node

    with initialize_config_dir(str(fq_config.config_dir()), version_base=None):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(
            "config", ["+experiment=woo_heterogeneity", "hydra.sweep.dir=/tmp/x", "num_rounds=5"],
            RunMode.MULTIRUN)
        composer = SweepComposer(loader, master, without_job_figures)
        jobs = [[f"strategy={st}", f"client.behavior={be}", f"seed={seed}"]
                for st in ("equal", "importance") for be in ("disjoint", "uniform")
                for seed in (0, 7)]
        configs = [composer.load(job) for job in jobs]
        for job, cfg in zip(jobs, configs, strict=True):
            expected = loader.load_sweep_config(master, without_job_figures(job))
            assert OmegaConf.to_container(cfg) == OmegaConf.to_container(expected), job
    assert composer.enabled
    for first, second in ((0, 1), (0, 3), (4, 7)):  # same group set (strategy), other values
        (group, paths), (group_2, paths_2) = (composer.changes(configs[i]) for i in (first, second))
        assert group == group_2 and paths == paths_2
        a, b = (dict(leaves(OmegaConf.to_container(configs[i]))) for i in (first, second))
        differing = {key for key in a if a[key] != b[key]}
        assert differing and all(any(key == p or key.startswith(p + ".") for p in paths)
                                 for key in differing), differing
    assert composer.changes(OmegaConf.create({})) is None


def test_section_texts_are_the_whole_configs_yaml(monkeypatch):
    """yaml_text.SectionTexts (the batched launcher's .hydra files: each section shared by the
    jobs of a group set emitted once) against config_yaml of each whole config, for copies of
    one composition changed at the given paths: top-level and nested values, the hydra node's
    per-job entries, lists, a multi-line string, an interpolation, a mapping replaced by None,
    paths into a list or to a missing key (emitted whole); and its first-config check turns
    the reuse off when the assembled text differs."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from flower_qlearn import yaml_text
    from flower_qlearn.sweep_compose import copier, task_config
    from flower_qlearn.yaml_text import SectionTexts, config_yaml

    with initialize_config_dir(str(fq_config.config_dir()), version_base=None):
        base = compose("config", ["+experiment=woo_heterogeneity"], return_hydra_config=True)
    make = copier(base)
    # (values set, further paths declared changed)
    changes = [
        ({"seed": 3, "client.behavior": "uniform"}, []),
        ({"seed": 4, "client.behavior": "disjoint", "hydra.job.num": 7, "hydra.job.id": "7",
          "hydra.runtime.output_dir": "/tmp/x/7", "hydra.overrides.task": ["seed=4", "a=b"]},
         []),
        ({"mdp.gamma": 0.5, "hydra.job.override_dirname": "seed=5,x=y"}, ["hydra.verbose"]),
        ({"plot.title": "two\nlines: 'quoted' and a long one " + "x" * 90,
          "log_every": "${seed}"}, []),
        ({"client.slow_agents": [1, 2], "plot.reach": None}, ["client.slow_agents.0"]),
        ({"plot.reach": {"q_error": 0.1, "deeper": {"a": [1, {"b": None}]}}}, []),
        ({"seed": 9}, ["nope.x"]),
        ({}, []),
    ]
    texts = SectionTexts()
    for values, declared in changes:
        cfg = make()
        with open_dict(cfg):
            for path, value in values.items():
                OmegaConf.update(cfg, path, value, merge=False)
        hydra_node = {"hydra": cfg.hydra}
        task = task_config(cfg)
        paths = [*values, *declared]
        assert texts.text(task, "config", [p for p in paths if not p.startswith("hydra.")]) \
            == config_yaml(task), values
        assert texts.text(hydra_node, "hydra", [p for p in paths if p.startswith("hydra.")]) \
            == config_yaml(hydra_node), values
    assert texts.enabled and texts._texts  # sections were reused, none found different

    def broken(path, value):  # an entry's text that is not what the whole config emits
        heads, body = entry_text(path, value)
        return heads, body.replace("seed", "seeds")

    entry_text = yaml_text._entry_text
    monkeypatch.setattr(yaml_text, "_entry_text", broken)
    checked = SectionTexts()
    cfg = task_config(make())
    assert checked.text(cfg, "config", ["seed"]) == config_yaml(cfg)
    assert not checked.enabled


def test_settings_for_are_the_run_configs_settings(tmp_path):
    """api.settings_for (the batched launcher's job settings) equals the settings the run
    config of run_config_for carries, with and without a value interpolating output_dir."""
    from omegaconf import OmegaConf

    from flower_qlearn.api import settings_for

    plain = fq_config.compose([*SMALL, "engine=batched"])
    mentioning = plain.copy()
    OmegaConf.set_struct(mentioning, False)
    mentioning.mdp.label = "${output_dir}/mdp"
    for cfg in (plain, mentioning):
        out = tmp_path / "job"
        expected = fq_config.settings(fq_config.from_run_config(run_config_for(cfg, out)))
        assert settings_for(cfg, out) == expected
    assert settings_for(mentioning, tmp_path / "job")["mdp"]["label"] == f"{tmp_path / 'job'}/mdp"
