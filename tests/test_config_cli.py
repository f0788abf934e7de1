"""Hydra composition, validation and the command line (configs composed by Hydra itself)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flower_qlearn import config as fq_config


def test_defaults_compose_with_the_design_names():
    cfg = fq_config.compose([])
    assert (cfg.strategy.name, cfg.mdp.name, cfg.engine.name) == ("equal", "two_state", "inprocess")
    assert cfg.client.sampling == "markovian" and cfg.client.behavior == "uniform"
    assert {"num_clients", "num_rounds", "seed"} <= set(cfg)
    assert fq_config.compose(["client=generative"]).client.sampling == "generative"
    # every shipped option of every group composes and validates
    for group, options in [("strategy", ["equal", "importance"]),
                           ("mdp", ["two_state", "garnet", "riverswim", "frozenlake", "taxi",
                                    "cliffwalking"]),
                           ("engine", ["inprocess", "ray"])]:
        for option in options:
            assert fq_config.compose([f"{group}={option}"])[group].name == option


@pytest.mark.parametrize(
    ("override", "field", "allowed"),
    [
        ("mdp.gamma=1.0", "mdp.gamma", "[0, 1)"),
        ("mdp.gamma=-0.1", "mdp.gamma", "[0, 1)"),
        ("client.learning_rate=0", "client.learning_rate", "(0, 1]"),
        ("client.learning_rate=1.5", "client.learning_rate", "(0, 1]"),
        ("client.local_steps=0", "client.local_steps", ">= 1"),
        ("num_clients=0", "num_clients", ">= 1"),
        ("num_rounds=-3", "num_rounds", ">= 1"),
        ("client.behavior=greedy", "client.behavior", "uniform, disjoint"),
        ("client.sampling=offline", "client.sampling", "markovian, generative"),
        ("client.heterogeneity=2", "client.heterogeneity", "[0, 1]"),
        ("mdp=garnet mdp.branching=11", "mdp.branching", "num_states"),
        ("min_replies=21", "min_replies", "num_clients"),
        ("strategy=nope", "strategy=nope", "equal, importance"),
        ("mdp=nope", "mdp=nope", "two_state"),
    ],
)
def test_invalid_values_fail_with_one_line_naming_field_and_range(override, field, allowed):
    with pytest.raises(fq_config.ConfigError) as info:
        fq_config.compose(override.split())
    message = str(info.value)
    assert "\n" not in message
    assert field in message and allowed in message


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flower_qlearn", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_exits_2_on_invalid_config_before_any_run(tmp_path):
    proc = _cli("mdp.gamma=1.2", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "flower-qlearn: invalid config: mdp.gamma=1.2 is out of range; expected a number in [0, 1)"
    ]
    # a bad point in a sweep fails before the good points run
    proc = _cli("-m", "client.learning_rate=0.1,3", cwd=tmp_path)
    assert proc.returncode == 2 and "client.learning_rate=3" in proc.stderr
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()


def test_cli_run_and_multirun_write_one_output_dir_per_job(tmp_path):
    proc = _cli("num_clients=2", "num_rounds=3", "figures=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = list((tmp_path / "outputs").glob("*/*/metrics.csv"))
    assert len(runs) == 1 and "final q_error=" in proc.stdout
    proc = _cli("-m", "strategy=equal,importance", "seed=0,1", "num_clients=2", "num_rounds=3",
                "figures=false", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = sorted((tmp_path / "sweep").glob("*/metrics.csv"))
    assert len(jobs) == 4
    # the SweepFigures callback drew the sweep's figure and table when the multirun ended
    assert (tmp_path / "sweep" / "figures" / "normalized_q_error.png").stat().st_size > 1000
    table = (tmp_path / "sweep" / "figures" / "final.md").read_text()
    assert "equal" in table and "importance" in table
    overrides = sorted((p.parent / ".hydra" / "overrides.yaml").read_text() for p in jobs)
    assert any("strategy=importance" in o and "seed=1" in o for o in overrides)


def test_omegaconf_c_loader_reads_every_config_file_as_omegaconf_does():
    """The CLI makes OmegaConf parse YAML on libyaml (``yaml_text.use_libyaml_for_hydra``):
    every file of conf/ and of Hydra's own config package gives the same values, types
    included; OmegaConf's rules hold (duplicate keys refused, no timestamps, its floats)."""
    import hydra
    import yaml
    from omegaconf._utils import get_yaml_loader

    from flower_qlearn.yaml_text import omegaconf_loader

    fast, reference = omegaconf_loader(), get_yaml_loader()
    files = [*fq_config.config_dir().rglob("*.yaml"),
             *Path(hydra.__file__).parent.rglob("*.yaml")]
    assert len(files) > 50
    for path in files:
        text = path.read_text()
        assert repr(yaml.load(text, Loader=fast)) == repr(yaml.load(text, Loader=reference)), path
    edge = "a: 1e-3\nb: 2020-01-01\nc: .inf\nd: 1_000\ne: 0x1f\nf: ~\ng: 'on'\nh: on\n"
    assert repr(yaml.load(edge, Loader=fast)) == repr(yaml.load(edge, Loader=reference))
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key a"):
        yaml.load("a: 1\na: 2\n", Loader=fast)


@pytest.mark.parametrize("overrides", [
    [], ["strategy=importance", "num_rounds=3", "hydra.job.chdir=false"],
    ["+experiment=woo_heterogeneity", "seed=4"],
])
def test_a_single_run_composed_once_is_what_hydra_composes(overrides):
    """compose_once.run_mode_config: one RUN-mode composition of the overrides, with
    ``hydra.mode=RUN`` applied, equals Hydra's composition of the overrides plus that line
    (what ``Hydra.run`` composes after ``get_mode``): every key and value, node metadata, the
    hydra node's override lists."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import DictConfig, OmegaConf

    from flower_qlearn.compose_once import RUN_MODE_OVERRIDE, run_mode_config

    def nodes(node, path=""):  # ${now:...} values cached when resolved: seconds apart
        yield path, {k: v for k, v in vars(node._metadata).items() if k != "resolver_cache"}
        if isinstance(node, DictConfig):
            for key in node.keys():
                yield from nodes(node._get_node(key), f"{path}.{key}")

    with initialize_config_dir(str(fq_config.config_dir()), version_base=None):
        loader = GlobalHydra.instance().hydra.config_loader
        hydra = loader.load_configuration("config", [*overrides, RUN_MODE_OVERRIDE], RunMode.RUN)
        ours = run_mode_config(loader.load_configuration("config", list(overrides), RunMode.RUN))
    assert OmegaConf.to_container(ours, resolve=False) == OmegaConf.to_container(
        hydra, resolve=False)
    assert list(nodes(ours)) == list(nodes(hydra))
    assert ours.hydra.mode == RunMode.RUN and ours.hydra.overrides.hydra[-1] == RUN_MODE_OVERRIDE


def test_a_single_run_writes_what_hydras_own_path_writes(tmp_path):
    """The CLI's single run (composed once) writes the same .hydra files as Hydra's own
    ``@hydra.main`` path run into the same directory."""
    out = tmp_path / "run"
    args = ["num_rounds=2", "num_clients=3", "figures=false", f"output_dir={out}"]
    ours = _cli(*args, cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr
    files = {p.name: p.read_text() for p in (out / ".hydra").iterdir()}
    hydra_path = subprocess.run(
        [sys.executable, "-c", "import sys; from flower_qlearn import cli, launcher; "
         f"sys.argv = ['flower-qlearn', *{args!r}, 'hydra.run.dir={out}']; "
         "launcher.register(); cli._hydra_main()"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert hydra_path.returncode == 0, hydra_path.stderr
    assert {p.name: p.read_text() for p in (out / ".hydra").iterdir()} == files
    assert "hydra.mode=RUN" in files["hydra.yaml"]
