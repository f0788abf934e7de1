"""Hydra composition and validation: one function used by the CLI, the ServerApp and the ClientApp.

Every path (in-process engine, Ray simulation, ``flwr run`` deployment, Hydra multirun) builds its
configuration from the same ``conf/`` tree and the same list of Hydra overrides, so the same
overrides and seed give the same numbers wherever the apps run. Invalid values fail here, before
any round starts, with a one-line message that names the field and the allowed range.
"""

from __future__ import annotations

import importlib.resources
import math
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

STRATEGIES = ("equal", "importance", "average_reward", "dasa")
MDPS = ("two_state", "garnet", "riverswim", "frozenlake", "taxi", "cliffwalking")
ENGINES = ("inprocess", "ray", "deployment")
SAMPLINGS = ("markovian", "generative")
BEHAVIORS = ("uniform", "disjoint", "dirichlet", "epsilon_greedy")
TERMINALS = ("absorbing", "reset")

#: Key of the Flower run config (and of ``Context.run_config``) that carries the Hydra overrides.
OVERRIDES_KEY = "overrides"
#: Key of the Flower run config that carries the absolute output directory of the run.
OUTPUT_DIR_KEY = "output-dir"


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line naming the field and range."""


def config_dir() -> Path:
    """Absolute path of the packaged ``conf/`` directory (works installed and editable)."""
    return Path(str(importlib.resources.files("flower_qlearn.conf")))


# Composed configs by override string. The CLI registers the config Hydra composed for its job,
# so in-process clients reuse it instead of re-initialising Hydra inside a running Hydra app.
_CACHE: dict[str, DictConfig] = {}


def overrides_to_str(overrides: Sequence[str]) -> str:
    """Canonical string form of a list of overrides (what travels in the Flower run config)."""
    return shlex.join(list(overrides))


def register(overrides: Sequence[str], cfg: DictConfig) -> None:
    """Remember the composed ``cfg`` for ``overrides`` (validated), for this process."""
    validate(cfg)
    _CACHE[overrides_to_str(overrides)] = cfg


def compose(overrides: Sequence[str] | str = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra ``overrides`` and validate the result.

    Parameters
    ----------
    overrides
        Hydra override strings (``["strategy=importance", "num_clients=4"]``) or one string of
        them separated by spaces (shell quoting allowed), as carried in the Flower run config.

    Raises
    ------
    ConfigError
        On an unknown group option, a malformed override or an out-of-range value.
    """
    items = shlex.split(overrides) if isinstance(overrides, str) else list(overrides)
    key = overrides_to_str(items)
    if key in _CACHE:
        return _CACHE[key]
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    if GlobalHydra.instance().is_initialized():
        # Inside a running Hydra app (e.g. a multirun job) composition must not clobber its state.
        raise ConfigError(
            f"cannot compose {items} inside a running Hydra app; register the job's config first"
        )
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=items)
    except HydraException as exc:
        raise ConfigError(_hydra_error_line(exc)) from None
    validate(cfg)
    _CACHE[key] = cfg
    return cfg


def _hydra_error_line(exc: Exception) -> str:
    """Turn Hydra's multi-line 'Could not find' message into one line listing the options."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Could not find" in text and "Available options" in text:
        idx = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        group = lines[idx].split("'")[1] if "'" in lines[idx] else "group"
        options = []
        for line in lines[idx + 1 :]:
            if line.startswith("Config search path"):
                break
            options.append(line)
        wanted = lines[0].split("Could not find")[-1].strip(" '").split("/")[-1]
        return f"invalid config: {group}={wanted} is not an option; allowed: {', '.join(options)}"
    return "invalid config: " + (" ".join(lines[:2]) if lines else type(exc).__name__)


# --------------------------------------------------------------------------------------------
# Validation: a table of (field, check, allowed-description). Strategy- and group-specific rules
# are added to the same table, so every message has the same shape.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One validation rule: ``check(value)`` must hold for the value at dotted ``field``."""

    field: str
    check: Callable[[Any], bool]
    allowed: str
    when: Callable[[DictConfig], bool] = lambda cfg: True
    optional: bool = False  # a missing or null value is fine


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= lo


def in_interval(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    def check(v: Any) -> bool:
        if not _is_num(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return check


def one_of(options: Iterable[str]) -> Callable[[Any], bool]:
    opts = tuple(options)
    return lambda v: v in opts


def _strategy(name: str) -> Callable[[DictConfig], bool]:
    return lambda cfg: cfg.strategy.name == name


RULES: list[Rule] = [
    Rule("num_clients", int_at_least(1), "an integer >= 1"),
    Rule("num_rounds", int_at_least(1), "an integer >= 1"),
    Rule("seed", int_at_least(0), "an integer >= 0"),
    Rule("min_replies", int_at_least(1), "an integer in [1, num_clients]"),
    Rule("round_timeout", in_interval(0, math.inf, lo_open=True), "a number > 0"),
    Rule("log_every", int_at_least(0), "an integer >= 0"),
    Rule("checkpoint_every", int_at_least(0), "an integer >= 0 (0: no checkpoints)"),
    Rule("strategy.name", one_of(STRATEGIES), f"one of {', '.join(STRATEGIES)}"),
    Rule("engine.name", one_of(ENGINES), f"one of {', '.join(ENGINES)}"),
    Rule("mdp.name", one_of(MDPS), f"one of {', '.join(MDPS)}"),
    Rule("mdp.gamma", in_interval(0, 1, hi_open=True), "a number in [0, 1)"),
    Rule("mdp.num_states", int_at_least(1), "an integer >= 1"),
    Rule("mdp.num_actions", int_at_least(1), "an integer >= 1"),
    Rule("mdp.seed", int_at_least(0), "an integer >= 0"),
    Rule(
        "mdp.branching",
        int_at_least(1),
        "an integer in [1, mdp.num_states]",
        when=lambda cfg: cfg.mdp.name == "garnet",
    ),
    Rule("mdp.terminal", one_of(TERMINALS), "absorbing or reset", optional=True),
    Rule("client.sampling", one_of(SAMPLINGS), f"one of {', '.join(SAMPLINGS)}"),
    Rule("client.local_steps", int_at_least(1), "an integer >= 1"),
    Rule("client.learning_rate", in_interval(0, 1, lo_open=True), "a number in (0, 1]"),
    Rule("client.behavior", one_of(BEHAVIORS), f"one of {', '.join(BEHAVIORS)}"),
    Rule("client.behavior_alpha", in_interval(0, math.inf, lo_open=True), "a number > 0"),
    Rule("client.behavior_epsilon", in_interval(0, 1), "a number in [0, 1]"),
    Rule("client.behavior_groups", int_at_least(1), "null or an integer >= 1", optional=True),
    Rule("client.heterogeneity", in_interval(0, 1), "a number in [0, 1]"),
    Rule("client.sleep_s", in_interval(0, math.inf), "a number >= 0"),
    Rule(
        "engine.num_cpus_per_client",
        in_interval(0, math.inf, lo_open=True),
        "a number > 0",
        when=lambda cfg: cfg.engine.name == "ray",
    ),
]


def _lookup(cfg: DictConfig, field: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in field.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False, None
        node = node[part]
    return True, node


def validate(cfg: DictConfig) -> None:
    """Check every rule in :data:`RULES`; raise :class:`ConfigError` on the first violation."""
    for rule in RULES:
        if not rule.when(cfg):
            continue
        present, value = _lookup(cfg, rule.field)
        if not present or value is None:
            if rule.optional:
                continue
            raise ConfigError(f"invalid config: {rule.field} is missing; expected {rule.allowed}")
        if not rule.check(value):
            raise ConfigError(
                f"invalid config: {rule.field}={value!r} is out of range; expected {rule.allowed}"
            )
    if cfg.min_replies > cfg.num_clients:
        raise ConfigError(
            f"invalid config: min_replies={cfg.min_replies} exceeds num_clients={cfg.num_clients}"
        )
    if cfg.mdp.name == "garnet" and cfg.mdp.branching > cfg.mdp.num_states:
        raise ConfigError(
            f"invalid config: mdp.branching={cfg.mdp.branching} exceeds "
            f"mdp.num_states={cfg.mdp.num_states}"
        )
    if cfg.mdp.name == "two_state" and cfg.mdp.num_states != 2:
        raise ConfigError(
            f"invalid config: mdp.num_states={cfg.mdp.num_states} but two_state has exactly 2"
        )


def to_container(cfg: DictConfig) -> dict:
    """Plain-dict copy of a config (resolved), for JSON summaries."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
