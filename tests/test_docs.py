"""The commands shown in the README and docs/: every one is checked, the plugin block is run.

- the README's plugin block is executed as it stands and its Q-table checked against our own
  ServerApp's for the same experiment;
- every ``flower-qlearn ...`` command is composed and validated as the CLI does before Hydra
  starts (every job of a multirun, the launcher's extra included), so a command in the docs can
  never name a key, option or range that does not exist;
- every ``python benchmarks/*.py`` / ``python scripts/*.py`` command's script answers ``--help``.
``flwr``/``flower-superlink`` commands are exercised by tests/test_deployment.py (a real
SuperLink, SuperNodes and ``flwr run``), not line by line.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flower_qlearn import cli, run_experiment

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md")
                                      if p.name != "ALGORITHMS.md")]


def _blocks(page: Path) -> list[tuple[str, str]]:
    return re.findall(r"```(\w*)\n(.*?)```", page.read_text(), re.S)


def _commands(prefix: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for lang, body in _blocks(page):
            if lang not in ("", "bash"):
                continue
            for line in body.replace("\\\n", " ").splitlines():
                line = line.split(" # ")[0].strip()
                if line.startswith(prefix + " ") or line == prefix:
                    found.append((page.name, line))
    return found


FLOWER_QLEARN = [c for c in _commands("flower-qlearn") if "<" not in c[1]]
SCRIPTS = sorted({line.split()[1] for _, line in _commands("python")
                  if line.split()[1].startswith(("benchmarks/", "scripts/"))})


def test_the_docs_show_commands_at_all():
    assert len(FLOWER_QLEARN) >= 25 and len(SCRIPTS) >= 4


@pytest.mark.parametrize(("page", "line"), FLOWER_QLEARN, ids=[c[1][:60] for c in FLOWER_QLEARN])
def test_every_flower_qlearn_command_in_the_docs_composes_and_validates(
    page, line, tmp_path, monkeypatch
):
    if "resume=" in line:  # the docs' resume target is a run the reader made before: not here
        monkeypatch.setattr("flower_qlearn.checkpoint.check_resume", lambda *a, **k: None)
    argv = shlex.split(line.replace("$PWD", str(tmp_path)))[1:]
    argv = [a for a in argv if not a.startswith("--")]  # --cfg job, --help: nothing to compose
    cli._check_launcher(argv)
    cli.prevalidate(argv)  # raises ConfigError naming the field on any bad key or value


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_in_the_docs_exists_and_answers_help(script):
    proc = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_readme_plugin_block_runs_and_matches_our_server_app(tmp_path):
    code = next(body for lang, body in _blocks(ROOT / "README.md") if lang == "python"
                and "run_inprocess(app" in body)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_plugin"})
    finally:
        os.chdir(cwd)
    theirs = np.load(tmp_path / "q_table.npy")
    ours = run_experiment(["strategy=importance", "mdp=garnet", "mdp.num_states=20",
                           "mdp.num_actions=4", "num_clients=4", "client.learning_rate=0.1",
                           "num_rounds=30", "log_every=0", "figures=false",
                           f"output_dir={tmp_path / 'ours'}"])
    np.testing.assert_array_equal(theirs, ours.q_table)
