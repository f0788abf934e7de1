"""The keys a composed config may hold, read from the ``conf/`` tree itself; unknown ones refused.

Hydra's struct mode refuses ``num_client=4`` but lets ``+num_client=4`` (its own hint after the
typo), ``+foo=1`` or ``+mdp.bar=2`` append a key that nothing reads: the run then goes on
silently with the default. :func:`check_known` refuses such a key in one line, naming the
keys allowed at its level and the nearest known key (``did you mean num_clients?``).

The known keys of a config are exactly those the ``conf/`` files define for its choices
(:mod:`flower_qlearn.defaults` reads them; there is no second list): the top-level keys of
``config.yaml``, the keys of the chosen option of each group (``mdp=garnet`` has
``mdp.branching``, ``mdp=two_state`` has not; a group without a ``name`` key, ``client``, has
the keys of all its options), and the keys that the ``_global_`` groups (``experiment/``) add
besides the groups' and top-level keys (``plot.*``). Hydra's own ``hydra.*`` node is not part
of a composed config and is never checked here.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from functools import lru_cache

from .defaults import config_dir, default_choices, group_defaults, top_level_defaults
from .schema import ConfigError, get
from .strategies.protocol import flatten

__all__ = ["check_known", "known_keys", "unknown_key_message"]


@lru_cache(maxsize=1)
def _options() -> dict[str, tuple[str, ...]]:
    """Every group directory of ``conf/`` and its option names."""
    return {
        d.name: tuple(sorted(p.stem for p in d.glob("*.yaml")))
        for d in sorted(config_dir().iterdir())
        if d.is_dir() and not d.name.startswith(("_", "."))
    }


@lru_cache(maxsize=128)
def _option_keys(group: str, option: str) -> frozenset[str]:
    return frozenset(flatten(group_defaults(group, option), group + "."))


@lru_cache(maxsize=1)
def _global_extras() -> frozenset[str]:
    """Keys that ``_global_`` groups (``experiment/``) add beside the groups and top level."""
    groups = set(default_choices())
    top = set(top_level_defaults())
    extras: set[str] = set()
    for group, options in _options().items():
        if group in groups:
            continue
        for option in options:
            content = group_defaults(group, option)
            for key, value in content.items():
                if key in groups or key in top or key == "hydra":
                    continue
                extras |= set(flatten({key: value})) if isinstance(value, Mapping) else {key}
    return frozenset(extras)


def known_keys(settings: Mapping) -> tuple[frozenset[str], tuple[str, ...]]:
    """``(keys, open_groups)`` for a composed config: its known dotted keys, and the groups
    whose chosen option is not in ``conf/`` (e.g. a plugin's), whose keys are not checked."""
    keys = set(top_level_defaults()) | _global_extras()
    open_groups = []
    options = _options()
    for group in default_choices():
        chosen = get(settings, f"{group}.name")
        if chosen is not None and chosen in options.get(group, ()):
            keys |= _option_keys(group, chosen)
        elif chosen is None:  # chosen without a name key (client): any option's keys
            for option in options.get(group, ()):
                keys |= _option_keys(group, option)
        else:
            open_groups.append(group)
    return frozenset(keys), tuple(open_groups)


def _owners(key: str) -> list[str]:
    """The ``group=option`` choices of ``conf/`` that define ``key``."""
    group = key.split(".")[0]
    return [f"{group}={o}" for o in _options().get(group, ()) if key in _option_keys(group, o)]


def _all_keys() -> set[str]:
    keys = set(top_level_defaults()) | _global_extras()
    for group in default_choices():
        for option in _options().get(group, ()):
            keys |= _option_keys(group, option)
    return keys


def unknown_key_message(key: str, settings: Mapping | None = None) -> str:
    """One line: ``key`` is not a key of this config; the nearest known key, or the options
    that do define it, and the keys allowed at its level."""
    known = known_keys(settings)[0] if settings is not None else frozenset(_all_keys())
    parent = key.rpartition(".")[0]
    siblings = sorted(k for k in known if k.rpartition(".")[0] == parent)
    group = key.split(".")[0]
    where = "this config"
    if settings is not None and "." in key and get(settings, f"{group}.name") is not None:
        where = f"{group}={get(settings, f'{group}.name')}"
    line = f"invalid config: {key} is not a key of {where}"
    owners = _owners(key) if "." in key else []
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    if owners:
        line += f" (only of {', '.join(owners)})"
    elif close:
        line += f"; did you mean {close[0]}?"
    if siblings:
        line += f"; expected one of {', '.join(siblings)}"
    return line


def check_known(settings: Mapping) -> None:
    """Raise :class:`ConfigError` (one line) on the first key the ``conf/`` tree does not
    define for this config's choices."""
    known, open_groups = known_keys(settings)
    for key in sorted(flatten(settings)):
        if key in known or key.split(".")[0] in open_groups:
            continue
        raise ConfigError(unknown_key_message(key, settings))
