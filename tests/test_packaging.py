"""Packaging: the wheel's only top-level package is flower_qlearn, with its strategies and conf."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import flower_qlearn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return zipfile.ZipFile(next(out.glob("flower_qlearn-*.whl")))


def test_wheel_has_one_top_level_package_holding_strategies_and_conf(wheel):
    names = wheel.namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "flower_qlearn"
    }
    top_level = next(n for n in names if n.endswith("top_level.txt"))
    assert wheel.read(top_level).decode().split() == ["flower_qlearn"]
    for module in (ROOT / "strategies").rglob("*.py"):
        assert f"flower_qlearn/strategies/{module.relative_to(ROOT / 'strategies')}" in names
    assert "flower_qlearn/conf/config.yaml" in names
    assert "flower_qlearn/conf/strategy/dasa.yaml" in names


def test_version_comes_from_the_package_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert flower_qlearn.__version__ == project["version"]
    assert project["version"] not in (ROOT / "flower_qlearn" / "__init__.py").read_text()


def test_every_imported_third_party_module_is_a_declared_dependency():
    import ast

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = " ".join(project["dependencies"]).lower()
    extras = " ".join(" ".join(v) for v in project["optional-dependencies"].values()).lower()
    # import name -> distribution name, where they differ
    dist = {"yaml": "pyyaml", "hydra": "hydra-core", "flwr": "flwr", "tomli_w": "tomli-w",
            "hydra_plugins": "hydra-joblib-launcher", "ray": "flwr[simulation]"}
    stdlib = set(sys.stdlib_module_names)
    for path in [*(ROOT / "flower_qlearn").rglob("*.py"), *(ROOT / "strategies").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top == "flower_qlearn":
                    continue
                wanted = dist.get(top, top)
                assert wanted in declared or wanted in extras, f"{path.name} imports {top}"


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        ("ray", ["engine=ray"], "pip install 'flower-qlearn[ray]'"),
        ("hydra_plugins.hydra_joblib_launcher", ["-m", "seed=0,1", "hydra/launcher=joblib"],
         "pip install 'flower-qlearn[joblib]'"),
    ],
)
def test_a_missing_extra_is_named_in_one_line(blocked, argv, extra, tmp_path):
    # The module is made unimportable in a fresh interpreter, as on a core-only install.
    script = (f"import sys; sys.modules[{blocked!r}] = None; sys.argv = ['flower-qlearn', "
              f"*{argv!r}]; from flower_qlearn.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and extra in proc.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_every_relative_link_in_the_readme_and_docs_resolves():
    import re

    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
