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

from .attacks import ATTACKS
from .families import ENVIRONMENTS, SEEDED_MDPS
from .mc_eval import MC_METRICS
from .mdp import GARNET_SUCCESSORS, TERMINAL_MODES
from .mdp_catalog import MDP_NAMES
from .samplers import SAMPLERS
from .sampling import BEHAVIORS, SAMPLINGS
from .step_sizes import LR_SCHEDULES
from .transitions import DENSE_LIMIT

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
    ``allowed`` may be a function of the settings when the range depends on them (e.g. the
    sizes an MDP's construction fixes, or the clients that fit in memory).
    """

    field: str
    check: Callable[[Any], bool]
    allowed: str | Callable[[Settings], str]
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


def allowed_text(rule: Rule, settings: Settings) -> str:
    """The allowed-range words of ``rule`` for these ``settings``."""
    return rule.allowed(settings) if callable(rule.allowed) else rule.allowed


def validate(settings: Settings, rules: Iterable[Rule]) -> None:
    """Check every applicable rule; raise :class:`ConfigError` on the first violation."""
    for rule in rules:
        if not rule.when(settings):
            continue
        present, value = lookup(settings, rule.field)
        if not present or value is None:
            if rule.optional:
                continue
            raise ConfigError(
                f"invalid config: {rule.field} is missing; expected {allowed_text(rule, settings)}"
            )
        if not rule.check(value):
            raise ConfigError(
                f"invalid config: {rule.field}={value!r} is out of range; expected "
                f"{allowed_text(rule, settings)}"
            )


# --- checks ----------------------------------------------------------------------------------


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: is_int(v) and v >= lo


def int_between(lo: int, hi: int) -> Callable[[Any], bool]:
    return lambda v: is_int(v) and lo <= v <= hi


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


def _perturbation_too_large(s: Settings) -> bool:
    """``perturb`` mixes a dense random kernel in: refused where a dense P does not fit."""
    n, a = get(s, "mdp.num_states"), get(s, "mdp.num_actions")
    level = get(s, "client.heterogeneity")
    sized = is_int(n) and is_int(a) and isinstance(level, int | float)
    return sized and level > 0 and n * a * n > DENSE_LIMIT


def _branching_too_large(s: Settings) -> bool:
    b, n = get(s, "mdp.branching"), get(s, "mdp.num_states")
    return get(s, "mdp.name") == "garnet" and is_int(b) and is_int(n) and b > n


# What the MDP builders enforce (mdp_catalog.make_mdp, gym_mdp), checked before anything is
# built; the sizes and map names come from those modules (mdp_catalog.fixed_sizes,
# gym_mdp.frozenlake_maps).
_SIZE_FIELDS = ("mdp.num_states", "mdp.num_actions")


def _frozenlake_maps() -> tuple[str, ...]:
    from .gym_mdp import frozenlake_maps

    return frozenlake_maps()


def _fixed_size(s: Settings, index: int) -> int | None:
    from .mdp_catalog import fixed_sizes

    try:
        sizes = fixed_sizes(
            str(get(s, "mdp.name")),
            map_name=str(get(s, "mdp.map_name", "4x4")),
            is_slippery=bool(get(s, "mdp.is_slippery", True)),
        )
    except (ImportError, KeyError, ValueError):  # no Gymnasium, unknown map: the builder says
        return None
    return sizes[index]


def _size_differs(index: int) -> Callable[[Settings], bool]:
    def when(s: Settings) -> bool:
        value = get(s, _SIZE_FIELDS[index])
        fixed = _fixed_size(s, index) if is_int(value) else None
        return fixed is not None and value != fixed

    return when


def _size_allowed(index: int) -> Callable[[Settings], str]:
    def allowed(s: Settings) -> str:
        name, fixed = get(s, "mdp.name"), _fixed_size(s, index)
        where = f"{name} map {get(s, 'mdp.map_name')}" if name == "frozenlake" else name
        words = _SIZE_FIELDS[index].split("_")[1]
        return f"{fixed} ({where} has {fixed} {words} by construction)"

    return allowed


def _mc_without_gym(s: Settings) -> bool:
    episodes = get(s, "mc_episodes")
    return is_int(episodes) and episodes > 0 and (
        get(s, "mdp.name") not in MC_METRICS or get(s, "mdp.terminal") != "absorbing"
    )


MDP_BUILDER_RULES: tuple[Rule, ...] = (
    Rule("mdp.num_states", int_at_least(2), "an integer >= 2 (a RiverSwim chain)",
         when=_mdp_is("riverswim")),
    Rule("mdp.map_name", lambda v: v in _frozenlake_maps(),
         lambda s: options(_frozenlake_maps()) + " (Gymnasium's FrozenLake maps)",
         when=_mdp_is("frozenlake")),
    Rule("mdp.is_slippery", boolean, "true or false", when=_mdp_is("frozenlake")),
    Rule("mdp.num_states", never, _size_allowed(0), when=_size_differs(0)),
    Rule("mdp.num_actions", never, _size_allowed(1), when=_size_differs(1)),
)

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
    *(  # heterogeneous environments, mazes and the two-phase step size (docs/beyond_the_papers.md)
        Rule("mdp.num_states", lambda v: is_int(v) and v >= 4 and math.isqrt(v) ** 2 == v,
             "a square n^2 >= 4 (a maze has n x n cells)", when=_mdp_is("maze")),
        Rule("mdp.wall_density", in_interval(0, 1, hi_open=True), "a number in [0, 1)",
             when=_mdp_is("maze")),
        Rule("mdp.slip", in_interval(0, 1), "a number in [0, 1]", when=_mdp_is("maze")),
        Rule("client.environment", one_of(ENVIRONMENTS), options(ENVIRONMENTS), optional=True),
        Rule("mdp.name", one_of(SEEDED_MDPS),
             options(SEEDED_MDPS) + " (client.environment=own draws one member per agent)",
             when=lambda s: get(s, "client.environment") == "own"),
        Rule("client.lr_schedule", one_of(LR_SCHEDULES), options(LR_SCHEDULES), optional=True),
        Rule("client.lr_after", in_interval(0, 1, lo_open=True), "a number in (0, 1]",
             when=lambda s: get(s, "client.lr_schedule") == "two_phase"),
        Rule("client.lr_switch_step", int_at_least(0), "an integer >= 0",
             when=lambda s: get(s, "client.lr_schedule") == "two_phase"),
        Rule("client.lr_schedule", never,
             "constant when client.sync is adaptive (two_phase counts steps at a fixed period)",
             when=lambda s: get(s, "client.lr_schedule") == "two_phase"
             and get(s, "client.sync", "constant") != "constant"),
        # Server-side Monte-Carlo evaluation (flower_qlearn.mc_eval): top-level run keys, absent
        # (so skipped) in a client's task.
        Rule("mc_episodes", int_at_least(0), "an integer >= 0 (0: off)", optional=True),
        Rule("mc_every", int_at_least(1), "an integer >= 1", optional=True),
        Rule("mc_max_steps", int_at_least(1), "an integer >= 1", optional=True),
        Rule("mc_episodes", never,
             "0 unless mdp is " + " or ".join(MC_METRICS) + " with mdp.terminal=absorbing",
             when=_mc_without_gym),
        # engine.name is absent from a client's task: these apply to the composed config only
        Rule("client.lr_schedule", never,
             "constant with engine=batched (two_phase: engine=inprocess)",
             when=lambda s: get(s, "engine.name") == "batched"
             and get(s, "client.lr_schedule", "constant") != "constant"),
        Rule("mc_episodes", never, "0 with engine=batched (Monte Carlo: engine=inprocess)",
             when=lambda s: get(s, "engine.name") == "batched"
             and (get(s, "mc_episodes") or 0) != 0),
    ),
    # poisoning experiments (flower_qlearn.attacks, docs/robustness.md)
    Rule("client.attack", one_of(ATTACKS), options(ATTACKS), optional=True),
    Rule("client.attack_agents", int_list(0), "a list of partition ids >= 0", optional=True),
    *MDP_BUILDER_RULES,  # after the generic size rules: sizes are integers here
    # sparse transitions and samplers (flower_qlearn.transitions, samplers; docs/performance.md)
    Rule("mdp.successors", one_of(GARNET_SUCCESSORS), options(GARNET_SUCCESSORS),
         optional=True, when=_mdp_is("garnet")),
    Rule("client.sampler", one_of(SAMPLERS), options(SAMPLERS), optional=True),
    Rule("client.heterogeneity", never,
         f"0 when S * A * S > {DENSE_LIMIT:.0e} (a perturbed kernel is dense)",
         when=_perturbation_too_large),
)
