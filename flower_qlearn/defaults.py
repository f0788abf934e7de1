"""The defaults of ``conf/``, read without Hydra (for the ClientApp).

A client's instruction may leave keys out: they take their default from the same ``conf/`` tree
Hydra composes on the server. The ClientApp never imports Hydra or OmegaConf, so this module
reads the few plain YAML files a task needs with PyYAML: ``config.yaml`` (top-level keys and the
default option of each group), the chosen option of a group (``mdp/<name>.yaml``) and its own
``defaults`` list (e.g. ``client/generative.yaml`` extends ``markovian``).
"""

from __future__ import annotations

import copy
import importlib.resources
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any


def config_dir() -> Path:
    """Absolute path of the packaged ``conf/`` directory (installed, editable, or in a FAB)."""
    # In a Flower App Bundle (what `flwr run` ships to the SuperLink and SuperNodes) the source
    # tree is unpacked as is, conf/ beside the package, and there may be no `flower_qlearn.conf`.
    beside = Path(__file__).resolve().parent.parent / "conf"
    if (beside / "config.yaml").is_file():
        return beside
    return Path(str(importlib.resources.files("flower_qlearn.conf")))


@lru_cache(maxsize=64)
def _load(relative: str) -> dict[str, Any]:
    from .yaml_text import safe_load  # libyaml's parser: the same values, ~10x faster

    path = config_dir() / relative
    data = safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a mapping")
    return data


def merge(base: Mapping, extra: Mapping) -> dict:
    """A new nested dict: ``base`` with ``extra``'s keys put over it, recursively."""
    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@lru_cache(maxsize=64)
def _group_option(group: str, option: str) -> dict[str, Any]:
    data = dict(_load(f"{group}/{option}.yaml"))
    merged: dict[str, Any] = {}
    own_done = False
    for entry in data.pop("defaults", []) or []:
        if entry == "_self_":
            merged, own_done = merge(merged, data), True
        elif isinstance(entry, str):  # another option of the same group
            merged = merge(merged, _group_option(group, entry))
    return merged if own_done else merge(merged, data)


def default_choices() -> dict[str, str]:
    """The default option of every config group (``config.yaml``'s defaults list)."""
    choices = {}
    for entry in _load("config.yaml").get("defaults", []):
        if isinstance(entry, dict):
            choices.update({str(k): str(v) for k, v in entry.items()})
    return choices


def group_defaults(group: str, option: str | None = None) -> dict[str, Any]:
    """The keys of one option of a group (default: the group's default option), as a new dict."""
    if option is None:
        option = default_choices()[group]
    path = config_dir() / group / f"{option}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
        raise KeyError(f"{group}.name={option!r} is not an option; allowed: {', '.join(available)}")
    return copy.deepcopy(_group_option(group, option))


def top_level_defaults() -> dict[str, Any]:
    """The top-level scalar keys of ``config.yaml`` (``num_clients``, ``seed``, ...)."""
    return {
        k: copy.deepcopy(v)
        for k, v in _load("config.yaml").items()
        if k not in ("defaults", "hydra") and not isinstance(v, dict)
    }
