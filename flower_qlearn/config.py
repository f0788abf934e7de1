"""Hydra composition and validation: one function used by the CLI, the ServerApp and the ClientApp.

Every path (in-process engine, Ray simulation, ``flwr run`` deployment, Hydra multirun) builds its
configuration from the same ``conf/`` tree and the same list of Hydra overrides, so the same
overrides and seed give the same numbers wherever the apps run. Invalid values fail here, before
any round starts, with a one-line message that names the field and the allowed range.
"""

from __future__ import annotations

import functools
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
    # In a Flower App Bundle (what `flwr run` ships to the SuperLink and SuperNodes) the source
    # tree is unpacked as is, conf/ beside the package, and there is no `flower_qlearn.conf`.
    beside = Path(__file__).resolve().parent.parent / "conf"
    if (beside / "config.yaml").is_file():
        return beside
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
    if isinstance(overrides, str) and overrides in _CACHE:  # the per-message fast path
        return _CACHE[overrides]
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

# --- strategy=average_reward (ALGORITHMS.md section 5) ----------------------------------------
AVERAGE_REWARD_SCHEDULES = ("geometric", "polynomial")
#: Geometric epochs grow as 8^e local steps: beyond this the run cannot finish.
MAX_GEOMETRIC_EPOCHS = 12


@functools.lru_cache(maxsize=64)
def _constant_gain_cached(mdp_items: tuple) -> bool:
    from .mdp import make_mdp
    from .solvers import NonConstantGainError, optimal_gain

    try:
        optimal_gain(make_mdp(**dict(mdp_items)))
    except NonConstantGainError:
        return False
    except Exception:  # noqa: BLE001 - an unbuildable MDP is reported by its own rule or run
        return True
    return True


def _constant_optimal_gain(mdp_cfg: Any) -> bool:
    """True unless the configured MDP provably has a non-constant optimal gain (multichain)."""
    if not isinstance(mdp_cfg, DictConfig):
        return False
    return _constant_gain_cached(tuple(sorted(to_container(mdp_cfg).items())))


def _average_reward_geometric(cfg: DictConfig) -> bool:
    return cfg.strategy.name == "average_reward" and cfg.strategy.get("schedule") == "geometric"


RULES += [
    Rule(
        "strategy.schedule",
        one_of(AVERAGE_REWARD_SCHEDULES),
        "geometric or polynomial",
        when=_strategy("average_reward"),
    ),
    Rule(
        "strategy.num_epochs",
        int_at_least(1),
        "an integer >= 1",
        when=_strategy("average_reward"),
    ),
    Rule(
        "strategy.num_epochs",
        lambda v: _is_int(v) and 1 <= v <= MAX_GEOMETRIC_EPOCHS,
        f"an integer in [1, {MAX_GEOMETRIC_EPOCHS}] for schedule=geometric "
        "(epoch e runs c_T 8^e / K local steps)",
        when=_average_reward_geometric,
    ),
    Rule(
        "strategy.c_T",
        in_interval(0, math.inf, lo_open=True),
        "a number > 0",
        when=_strategy("average_reward"),
    ),
    Rule(
        "strategy.c_eta",
        in_interval(0, math.inf, lo_open=True),
        "a number > 0",
        when=_strategy("average_reward"),
    ),
    Rule(
        "mdp",
        _constant_optimal_gain,
        "an MDP whose optimal gain is the same in every state (strategy=average_reward "
        "refuses multichain MDPs)",
        when=_strategy("average_reward"),
    ),
]

# --- engine=deployment (conf/engine/deployment.yaml) -----------------------------------------


def _deployment(cfg: DictConfig) -> bool:
    return cfg.engine.name == "deployment"


def _host_port(v: Any) -> bool:
    host, _, port = str(v).rpartition(":") if isinstance(v, str) else ("", "", "")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


RULES += [
    Rule(
        "engine.address",
        _host_port,
        "a SuperLink address host:port, e.g. 127.0.0.1:8000",
        when=lambda cfg: _deployment(cfg) and not cfg.engine.get("connection"),
    ),
    Rule("engine.insecure", lambda v: isinstance(v, bool), "true or false", when=_deployment),
    Rule("engine.root_certificates", _text, "null or a path", when=_deployment, optional=True),
    Rule("engine.connection", _text, "null or a connection name", when=_deployment, optional=True),
    Rule("engine.flwr_home", _text, "null or a directory", when=_deployment, optional=True),
    Rule("engine.app_dir", _text, "null or a directory", when=_deployment, optional=True),
    Rule(
        "engine.poll_interval",
        in_interval(0, math.inf, lo_open=True),
        "a number > 0",
        when=_deployment,
    ),
    Rule(
        "engine.run_timeout",
        in_interval(0, math.inf, lo_open=True),
        "a number > 0",
        when=_deployment,
    ),
]


# --- strategy=dasa and the delay group (ALGORITHMS.md section 6) ----------------------------
DASA_RULES = ("dasa", "delayed", "nondelayed")
DASA_EXECUTIONS = ("simulated", "async")
DASA_NORMS = ("l2", "linf")
DELAYS = ("none", "constant", "uniform", "geometric", "pareto", "stragglers")


def _delay(*names: str) -> Callable[[DictConfig], bool]:
    return lambda cfg: cfg.delay.get("name") in names


def _int_list(lo: int) -> Callable[[Any], bool]:
    from omegaconf import ListConfig

    return lambda v: isinstance(v, (list, ListConfig)) and all(_is_int(i) and i >= lo for i in v)


def _never(v: Any) -> bool:
    """Check of a cross-field rule: its ``when`` detects the violation, so the value fails."""
    return False


def _dasa_async(cfg: DictConfig) -> bool:
    return cfg.strategy.name == "dasa" and cfg.strategy.get("execution") == "async"


def _high_below_low(cfg: DictConfig) -> bool:
    low, high = cfg.delay.get("low"), cfg.delay.get("high")
    return _is_int(low) and _is_int(high) and high < low


def _stragglers_out_of_range(cfg: DictConfig) -> bool:
    d = cfg.delay
    if d.get("name") != "stragglers":
        return False
    if d.get("agents"):
        return any(_is_int(i) and i >= cfg.num_clients for i in d.agents)
    if d.get("fraction") is not None:  # floor(fraction N) <= N: num_stragglers is not used
        return False
    n = d.get("num_stragglers")
    return _is_int(n) and n > cfg.num_clients


RULES += [
    Rule(
        "strategy.rule", one_of(DASA_RULES), "dasa, delayed or nondelayed", when=_strategy("dasa")
    ),
    Rule(
        "strategy.step_size",
        in_interval(0, math.inf, lo_open=True),
        "a number > 0",
        when=_strategy("dasa"),
    ),
    Rule("strategy.epsilon", in_interval(0, math.inf), "a number >= 0", when=_strategy("dasa")),
    Rule("strategy.batch_size", int_at_least(1), "an integer >= 1", when=_strategy("dasa")),
    Rule("strategy.max_staleness", int_at_least(0), "an integer >= 0", when=_strategy("dasa")),
    Rule("strategy.norm", one_of(DASA_NORMS), "l2 or linf", when=_strategy("dasa")),
    Rule(
        "strategy.execution",
        one_of(DASA_EXECUTIONS),
        "simulated or async",
        when=_strategy("dasa"),
    ),
    Rule(
        "strategy.tick_s",
        in_interval(0, math.inf, lo_open=True),
        "a number > 0 (seconds)",
        when=_strategy("dasa"),
    ),
    Rule(
        "client.sampling",
        one_of(["markovian"]),
        "markovian (DASA's operator samples each agent's Markov chain)",
        when=_strategy("dasa"),
    ),
    Rule(
        "strategy.rule",
        one_of(["dasa", "delayed"]),
        "dasa or delayed with execution=async (nondelayed is the synchronous baseline: use "
        "execution=simulated)",
        when=_dasa_async,
    ),
    Rule(
        "delay.name",
        one_of(["none"]),
        "none with execution=async (real delays replace the simulated ones)",
        when=_dasa_async,
    ),
    Rule(
        "engine.concurrent",
        lambda v: isinstance(v, bool),
        "true or false",
        when=lambda cfg: cfg.engine.name == "inprocess",
        optional=True,
    ),
    Rule("client.slow_agents", _int_list(0), "a list of partition ids >= 0", optional=True),
    Rule("client.slow_sleep_s", in_interval(0, math.inf), "a number >= 0", optional=True),
    Rule("delay.name", one_of(DELAYS), f"one of {', '.join(DELAYS)}"),
    Rule("delay.delay", int_at_least(0), "an integer >= 0", when=_delay("constant")),
    Rule("delay.low", int_at_least(0), "an integer >= 0", when=_delay("uniform", "stragglers")),
    Rule("delay.high", int_at_least(0), "an integer >= 0", when=_delay("uniform", "stragglers")),
    Rule(
        "delay.high",
        _never,
        "an integer >= delay.low",
        when=lambda cfg: _delay("uniform", "stragglers")(cfg) and _high_below_low(cfg),
    ),
    Rule(
        "delay.p", in_interval(0, 1, lo_open=True), "a number in (0, 1]", when=_delay("geometric")
    ),
    Rule(
        "delay.max_delay",
        int_at_least(0),
        "an integer >= 0",
        when=_delay("geometric", "pareto"),
    ),
    Rule(
        "delay.shape",
        in_interval(0, math.inf, lo_open=True),
        "a number > 0",
        when=_delay("pareto"),
    ),
    Rule(
        "delay.scale",
        in_interval(0, math.inf, lo_open=True),
        "a number > 0",
        when=_delay("pareto"),
    ),
    Rule(
        "delay.num_stragglers",
        int_at_least(0),
        "an integer in [0, num_clients]",
        when=_delay("stragglers"),
    ),
    Rule(
        "delay.agents",
        _int_list(0),
        "null or a list of partition ids in [0, num_clients)",
        when=_delay("stragglers"),
        optional=True,
    ),
    Rule("delay.others_high", int_at_least(0), "an integer >= 0", when=_delay("stragglers")),
    Rule(
        "delay.fraction",
        in_interval(0, 1),
        "null or a number in [0, 1]",
        when=_delay("stragglers"),
        optional=True,
    ),
    Rule(
        "delay.num_stragglers",
        _never,
        "an integer in [0, num_clients] (and delay.agents partition ids < num_clients)",
        when=_stragglers_out_of_range,
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


_PLAIN: dict[int, tuple[DictConfig, dict]] = {}


def plain(cfg: DictConfig) -> dict:
    """A cached plain-dict copy of ``cfg`` for hot paths (OmegaConf attribute access costs
    tens of microseconds; clients read a few settings on every message)."""
    hit = _PLAIN.get(id(cfg))
    if hit is None or hit[0] is not cfg:
        hit = (cfg, to_container(cfg))
        _PLAIN[id(cfg)] = hit
    return hit[1]


def to_container(cfg: DictConfig) -> dict:
    """Plain-dict copy of a config (resolved), for JSON summaries."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
