"""Config schema: validation rules over plain nested dicts, with one-line errors.

Every configuration value is checked by a :class:`Rule` (the field, a check, the allowed range
in words, and when it applies). The same rules run on the composed Hydra config (at the edge:
CLI, ``run_experiment``, the ServerApp entry) and on the flat keys of a client's instruction
(the ClientApp, which never imports Hydra), so a bad value is refused with the same message
wherever it comes from. This module holds the machinery and the rules of the keys a client's
task is made of (``seed``, ``num_clients``, ``mdp.*``, ``client.*``); the run-level rules live in
:mod:`flower_qlearn.config`, each strategy's rules in its own module, the delay rules in
:mod:`flower_qlearn.strategies.delays`. Option lists are never written here: they are imported
from the module that implements the options.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .mdp import MDP_NAMES, TERMINAL_MODES
from .sampling import BEHAVIORS, SAMPLINGS

Settings = Mapping[str, Any]


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line naming the field and range."""


def _always(settings: Settings) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    """One validation rule: ``check(value)`` must hold for the value at dotted ``field``.

    ``when(settings)`` says whether the rule applies; ``optional`` rules accept a missing or
    null value. A cross-field rule puts the violation in ``when`` and uses :func:`never`.
    """

    field: str
    check: Callable[[Any], bool]
    allowed: str
    when: Callable[[Settings], bool] = _always
    optional: bool = False


def get(settings: Settings, field: str, default: Any = None) -> Any:
    """The value at dotted ``field`` of a nested dict (``default`` if absent)."""
    present, value = lookup(settings, field)
    return value if present else default


def lookup(settings: Settings, field: str) -> tuple[bool, Any]:
    """``(present, value)`` of dotted ``field`` in a nested dict."""
    node: Any = settings
    for part in field.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def validate(settings: Settings, rules: Iterable[Rule]) -> None:
    """Check every applicable rule; raise :class:`ConfigError` on the first violation."""
    for rule in rules:
        if not rule.when(settings):
            continue
        present, value = lookup(settings, rule.field)
        if not present or value is None:
            if rule.optional:
                continue
            raise ConfigError(f"invalid config: {rule.field} is missing; expected {rule.allowed}")
        if not rule.check(value):
            raise ConfigError(
                f"invalid config: {rule.field}={value!r} is out of range; expected {rule.allowed}"
            )


# --- checks ----------------------------------------------------------------------------------


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: is_int(v) and v >= lo


def in_interval(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    def check(v: Any) -> bool:
        if not is_num(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return check


def positive(v: Any) -> bool:
    return in_interval(0, math.inf, lo_open=True)(v)


def non_negative(v: Any) -> bool:
    return in_interval(0, math.inf)(v)


def one_of(options: Iterable[str]) -> Callable[[Any], bool]:
    opts = tuple(options)
    return lambda v: v in opts


def options(names: Iterable[str]) -> str:
    """``"one of a, b, c"``: the allowed-range text of an option list."""
    return "one of " + ", ".join(names)


def boolean(v: Any) -> bool:
    return isinstance(v, bool)


def text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def int_list(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list | tuple) and all(is_int(i) and i >= lo for i in v)


def never(v: Any) -> bool:
    """Check of a cross-field rule: its ``when`` detects the violation, so the value fails."""
    return False


# --- the client's task: seed, num_clients, mdp.*, client.* ----------------------------------


def _mdp_is(*names: str) -> Callable[[Settings], bool]:
    return lambda s: get(s, "mdp.name") in names


def _branching_too_large(s: Settings) -> bool:
    b, n = get(s, "mdp.branching"), get(s, "mdp.num_states")
    return get(s, "mdp.name") == "garnet" and is_int(b) and is_int(n) and b > n


TASK_RULES: tuple[Rule, ...] = (
    Rule("num_clients", int_at_least(1), "an integer >= 1"),
    Rule("seed", int_at_least(0), "an integer >= 0"),
    Rule("mdp.name", one_of(MDP_NAMES), options(MDP_NAMES)),
    Rule("mdp.gamma", in_interval(0, 1, hi_open=True), "a number in [0, 1)"),
    Rule("mdp.num_states", int_at_least(1), "an integer >= 1"),
    Rule("mdp.num_actions", int_at_least(1), "an integer >= 1"),
    Rule("mdp.seed", int_at_least(0), "an integer >= 0"),
    Rule("mdp.branching", int_at_least(1), "an integer in [1, mdp.num_states]",
         when=_mdp_is("garnet")),
    Rule("mdp.branching", never, "an integer in [1, mdp.num_states]", when=_branching_too_large),
    Rule("mdp.num_states", lambda v: v == 2, "2 (two_state has exactly 2 states)",
         when=_mdp_is("two_state")),
    Rule("mdp.terminal", one_of(TERMINAL_MODES), " or ".join(TERMINAL_MODES), optional=True),
    Rule("client.sampling", one_of(SAMPLINGS), options(SAMPLINGS)),
    Rule("client.local_steps", int_at_least(1), "an integer >= 1"),
    Rule("client.learning_rate", in_interval(0, 1, lo_open=True), "a number in (0, 1]"),
    Rule("client.behavior", one_of(BEHAVIORS), options(BEHAVIORS)),
    Rule("client.behavior_alpha", positive, "a number > 0"),
    Rule("client.behavior_epsilon", in_interval(0, 1), "a number in [0, 1]"),
    Rule("client.behavior_groups", int_at_least(1), "null or an integer >= 1", optional=True),
    Rule("client.heterogeneity", in_interval(0, 1), "a number in [0, 1]"),
    Rule("client.sleep_s", non_negative, "a number >= 0"),
    Rule("client.slow_agents", int_list(0), "a list of partition ids >= 0", optional=True),
    Rule("client.slow_sleep_s", non_negative, "a number >= 0", optional=True),
)
