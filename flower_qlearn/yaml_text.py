"""YAML text as OmegaConf and PyYAML give it, with libyaml's C emitter and parser when present.

A multirun writes three small YAML files per job (``.hydra/``) and reads two back when it
draws its figures: with PyYAML's pure-Python emitter and parser that was ~10 ms a job, more
than the batched computation of the job. The C versions give the same text and the same
values (``tests/test_batched.py`` compares every ``.hydra`` file the batched launcher writes
with the one Hydra's basic launcher writes; ``tests/test_sweeps.py`` reads them back).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

__all__ = ["SectionTexts", "config_yaml", "omegaconf_loader", "omegaconf_yaml", "safe_load",
           "use_libyaml_for_hydra"]


@functools.cache
def _dumper() -> type:
    """OmegaConf's dumper (``OmegaConf.to_yaml``'s), on libyaml's emitter if PyYAML has it."""
    from omegaconf._utils import get_omega_conf_dumper

    base = get_omega_conf_dumper()
    if not getattr(yaml, "__with_libyaml__", False):
        return base
    dumper = type("OmegaConfCDumper", (yaml.CDumper,), {})
    for kind, representer in base.yaml_representers.items():  # its str quoting, enums, ...
        dumper.add_representer(kind, representer)
    for kind, representer in base.yaml_multi_representers.items():
        dumper.add_multi_representer(kind, representer)
    return dumper


def omegaconf_yaml(container: Any) -> str:
    """``OmegaConf.to_yaml(OmegaConf.create(container))`` for a plain container (what
    ``OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)`` returns)."""
    return yaml.dump(container, default_flow_style=False, allow_unicode=True, sort_keys=False,
                     Dumper=_dumper())


def config_yaml(node: Any) -> str:
    """``OmegaConf.to_yaml(node)`` (unresolved) of a DictConfig or ListConfig, or of a mapping
    of them (``{"hydra": cfg.hydra}``, as Hydra saves ``hydra.yaml``), on libyaml's emitter."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    def plain(value: Any) -> Any:
        return OmegaConf.to_container(value, resolve=False, enum_to_str=True)

    if isinstance(node, (DictConfig, ListConfig)):
        return omegaconf_yaml(plain(node))
    return omegaconf_yaml({key: plain(value) for key, value in node.items()})


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)``, on libyaml's parser if PyYAML has it."""
    loader = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader
    return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader, the C one


@functools.cache
def omegaconf_loader() -> type:
    """OmegaConf's YAML loader (``omegaconf._utils.get_yaml_loader()``: its float resolver,
    no timestamps, duplicate keys refused) on libyaml's parser, if PyYAML has it: the same
    values from the same text (the constructor and resolver are OmegaConf's own Python
    classes; only scanning and parsing are libyaml's)."""
    from omegaconf._utils import get_yaml_loader

    base = get_yaml_loader()
    if not getattr(yaml, "__with_libyaml__", False):
        return base

    def __init__(self, stream) -> None:  # yaml.CSafeLoader's, for OmegaConf's loader
        yaml.cyaml.CParser.__init__(self, stream)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)

    return type("OmegaConfCLoader", (yaml.cyaml.CParser, base), {"__init__": __init__})


def use_libyaml_for_hydra() -> None:
    """In this process, make OmegaConf (and so Hydra, which loads every config file with
    ``OmegaConf.load``) parse YAML with :func:`omegaconf_loader`, and Hydra's ``run_job``
    write a run's ``.hydra/*.yaml`` with :func:`omegaconf_yaml` (``OmegaConf.to_yaml``'s text
    on libyaml's emitter). Composing a config reads ~20 files: with PyYAML's pure-Python
    parser that was a third of each composition. The CLI calls this; a library user's process
    is left as it is."""
    import hydra.core.utils
    import omegaconf._utils
    import omegaconf.basecontainer

    loader = omegaconf_loader()
    omegaconf._utils.get_yaml_loader = lambda: loader
    omegaconf.basecontainer.get_yaml_loader = omegaconf._utils.get_yaml_loader

    def _save_config(cfg, filename, output_dir) -> None:  # hydra.core.utils._save_config
        output_dir.mkdir(parents=True, exist_ok=True)
        with open(str(output_dir / filename), "w", encoding="utf-8") as file:
            file.write(config_yaml(cfg))

    hydra.core.utils._save_config = _save_config


class SectionTexts:
    """:func:`config_yaml` of many configs that are equal but at known paths, each section
    that is the same in all of them emitted once.

    A multirun's jobs are copies of one composition per set of group choices with a few values
    changed (``seed``, ``hydra.job.num``, ...: :class:`~flower_qlearn.sweep_compose.
    SweepComposer`); the rest of their ``.hydra`` files is the same text job after job. In
    block style, the text of a mapping is the texts of its entries one after the other, each
    emitted at its own indentation whatever its neighbours (no anchors: ``to_container``
    makes every node a new object). So :meth:`text` emits only the entries on a changed path
    and reuses the text of every other entry of the same ``base``; the first config of every
    ``base`` is also emitted whole and compared, and any difference turns the reuse off.
    """

    def __init__(self) -> None:
        self.enabled = True
        self._texts: dict[tuple, tuple[list[str], str]] = {}  # (base, path) -> (heads, body)
        self._checked: set = set()

    def text(self, node: Any, base: Any, changed: Iterable[str]) -> str:
        """``config_yaml(node)``, for a ``node`` equal to every other node given with the same
        ``base`` except at the dotted paths ``changed`` (``"client.behavior"``, ``"seed"``)."""
        if not self.enabled:
            return config_yaml(node)
        tree: dict = {}
        for path in changed:
            branch = tree
            for key in path.split("."):
                branch = branch.setdefault(key, {})
        pieces = _entries(node)
        if pieces is None or not set(tree) <= pieces.keys():
            return config_yaml(node)
        text = "".join(self._mapping(base, (), pieces, tree)[1])
        if base not in self._checked:
            self._checked.add(base)
            whole = config_yaml(node)
            if whole != text:
                import logging

                logging.getLogger("flower_qlearn").warning(
                    "reused YAML sections differ from OmegaConf.to_yaml's text; emitting every "
                    "config whole")
                self.enabled = False
                return whole
        return text

    def _mapping(self, base: Any, path: tuple, entries: dict, tree: dict
                 ) -> tuple[list[str], list[str]]:
        """``(heads, pieces)`` of the non-empty mapping at ``path``: the header lines down to
        its entries and the text of each entry."""
        heads: list[str] = []
        pieces = []
        for key, child in entries.items():
            sub = tree.get(key)
            inner = None if sub is None or not sub else _entries(child)
            if sub is None:  # the same in every config of base
                found = self._texts.get((base, path + (key,)))
                if found is None:
                    found = _entry_text(path + (key,), _plain(child))
                    self._texts[base, path + (key,)] = found
                entry_heads, body = found
            elif inner and set(sub) <= inner.keys():  # changed somewhere inside: its entries
                entry_heads, bodies = self._mapping(base, path + (key,), inner, sub)
                body = entry_heads[len(path)] + "".join(bodies)
                entry_heads = entry_heads[:len(path)]
            else:  # changed (or a changed path this walk cannot follow): emitted whole
                entry_heads, body = _entry_text(path + (key,), _plain(child))
            heads = heads or entry_heads
            pieces.append(body)
        return heads, pieces


def _entries(node: Any) -> dict | None:
    """The entries (key -> node) of a mapping whose text is that of its entries: a non-empty
    DictConfig (not None, missing or an interpolation) or a non-empty plain mapping of config
    nodes (``{"hydra": cfg.hydra}``); None for anything else."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        if node._is_none() or node._is_missing() or node._is_interpolation():
            return None
        entries = {key: node._get_node(key) for key in node.keys()}
    elif isinstance(node, Mapping) and all(map(OmegaConf.is_config, node.values())):
        entries = dict(node)
    else:
        return None
    if not entries or not all(isinstance(key, str) for key in entries):
        return None
    return entries


def _plain(node: Any) -> Any:
    """What ``OmegaConf.to_container(parent, resolve=False, enum_to_str=True)`` holds for the
    child ``node`` of ``parent``: a container converted, a value node's value (an enum by
    name)."""
    from enum import Enum

    from omegaconf import Container, OmegaConf

    if isinstance(node, Container):
        return OmegaConf.to_container(node, resolve=False, enum_to_str=True)
    value = node._value()
    return value.name if isinstance(value, Enum) else value


def _entry_text(path: tuple, value: Any) -> tuple[list[str], str]:
    """The text of the entry ``path[-1]: value`` at the depth of ``path``, and the header
    lines of the mappings above it (``path[:-1]``, one line each)."""
    nested = value
    for key in reversed(path):
        nested = {key: nested}
    text = omegaconf_yaml(nested)
    *heads, body = text.split("\n", len(path) - 1)
    return [head + "\n" for head in heads], body
