"""YAML text as OmegaConf and PyYAML give it, with libyaml's C emitter and parser when present.

A multirun writes three small YAML files per job (``.hydra/``) and reads two back when it
draws its figures: with PyYAML's pure-Python emitter and parser that was ~10 ms a job, more
than the batched computation of the job. The C versions give the same text and the same
values (``tests/test_batched.py`` compares every ``.hydra`` file the batched launcher writes
with the one Hydra's basic launcher writes; ``tests/test_sweeps.py`` reads them back).
"""

from __future__ import annotations

import functools
from typing import Any

import yaml

__all__ = ["config_yaml", "omegaconf_loader", "omegaconf_yaml", "safe_load",
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
