"""Hydra at the edge: compose ``conf/``, validate once, and translate to Flower's run config.

The CLI, :func:`flower_qlearn.run_experiment` and the ServerApp's entry compose here; nothing
else in the package imports Hydra (the ClientApp reads its task from the instruction's
ConfigRecord). Invalid values fail here, before any round starts, with a one-line message that
names the field and the allowed range: the rules are those of :mod:`flower_qlearn.schema`
(task keys), of each registered strategy, of the delay group and the run-level rules below.

Flower run config = the composed config flattened with "." (a group's choice is its ``name``,
``null`` is ``""``, a list is its JSON text), e.g. ``strategy.name="importance"``,
``client.learning_rate=0.1``. :func:`from_run_config` turns such keys back into a composed
config: with ``full_config=false`` (what ``flwr run --run-config`` gives) a key equal to its
packaged default counts as not set, so a chosen group option keeps its own defaults;
flower-qlearn's launchers send the whole composed config with ``full_config=true``.
"""

from __future__ import annotations

import copy
import json
import math
import shlex
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import batched, schema
from .defaults import config_dir, default_choices, group_defaults
from .schema import ConfigError, Rule, int_at_least, one_of, options, positive, text
from .strategies import delays, registry
from .strategies.protocol import flatten

__all__ = ["ConfigError", "compose", "config_dir", "from_run_config", "to_run_config", "validate"]

#: Where the Flower apps run (``engine=...``); each has its launcher in :mod:`flower_qlearn.api`.
ENGINES = ("inprocess", "ray", "deployment", "batched")
#: What the ServerApp does when fewer than ``num_clients`` nodes connected (``on_missing_nodes``).
ON_MISSING_NODES = ("fail", "proceed")
#: Run-config key: true when the run config is a whole composed config (see the module doc).
FULL_CONFIG_KEY = "full_config"


# --------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------

# Composed configs by override string: composing costs ~20 ms, a sweep's validation composes
# every job, and the ServerApp composes the group choices of every run config it is given.
_CACHE: dict[str, DictConfig] = {}
_UNCHECKED: dict[str, DictConfig] = {}  # compose(check=False): not validated (yet)


def overrides_to_str(overrides: Sequence[str]) -> str:
    """Canonical string form of a list of overrides."""
    return shlex.join(list(overrides))


def compose(overrides: Sequence[str] | str = (), *, check: bool = True) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra ``overrides`` and validate the result.

    Parameters
    ----------
    overrides
        Hydra override strings (``["strategy=importance", "num_clients=4"]``) or one string of
        them separated by spaces (shell quoting allowed).
    check
        False: do not validate (for a caller that changes the config and validates the result,
        e.g. :func:`from_run_config`: ``strategy=average_reward mdp=frozenlake`` is refused
        alone, valid once the run config's ``mdp.terminal=reset`` is applied).

    Raises
    ------
    ConfigError
        On an unknown group option, a malformed override or an out-of-range value.
    """
    items = shlex.split(overrides) if isinstance(overrides, str) else list(overrides)
    key = overrides_to_str(items)
    if key in _CACHE:
        return _CACHE[key]
    if not check and key in _UNCHECKED:
        return _UNCHECKED[key]
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
    if not check:
        _UNCHECKED[key] = cfg
        return cfg
    validate(cfg)
    _CACHE[key] = cfg
    return cfg


def _hydra_error_line(exc: Exception) -> str:
    """Turn Hydra's multi-line 'Could not find' message into one line listing the options."""
    text_ = str(exc)
    lines = [line.strip() for line in text_.splitlines() if line.strip()]
    if "Could not find" in text_ and "Available options" in text_:
        idx = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        group = lines[idx].split("'")[1] if "'" in lines[idx] else "group"
        opts = []
        for line in lines[idx + 1 :]:
            if line.startswith("Config search path"):
                break
            opts.append(line)
        wanted = lines[0].split("Could not find")[-1].strip(" '").split("/")[-1]
        return f"invalid config: {group}={wanted} is not an option; allowed: {', '.join(opts)}"
    if lines and lines[0].startswith("Could not override '"):  # num_client=4: a typo
        from .known_keys import unknown_key_message

        return unknown_key_message(lines[0].split("'")[1])
    return "invalid config: " + (" ".join(lines[:2]) if lines else type(exc).__name__)


# --------------------------------------------------------------------------------------------
# Validation: the run-level rules; the others come from schema, the strategies and delays.
# --------------------------------------------------------------------------------------------


def _engine_is(name: str):
    return lambda s: schema.get(s, "engine.name") == name


def _deployment_address_needed(s: Mapping) -> bool:
    return schema.get(s, "engine.name") == "deployment" and not schema.get(s, "engine.connection")


def _host_port(v: Any) -> bool:
    host, _, port = v.rpartition(":") if isinstance(v, str) else ("", "", "")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def _min_replies_too_large(s: Mapping) -> bool:
    m, k = s.get("min_replies"), s.get("num_clients")
    return schema.is_int(m) and schema.is_int(k) and m > k


_DEPLOYMENT = _engine_is("deployment")


def _ray_installed(name: Any) -> bool:
    import importlib.util

    if name != "ray":
        return True
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False

RUN_RULES: tuple[Rule, ...] = (
    Rule("num_rounds", int_at_least(1), "an integer >= 1"),
    Rule("min_replies", int_at_least(1), "an integer in [1, num_clients]"),
    Rule("min_replies", schema.never, "an integer in [1, num_clients]",
         when=_min_replies_too_large),
    Rule("round_timeout", positive, "a number > 0"),
    Rule("node_wait", schema.non_negative, "a number >= 0 (seconds)"),
    Rule("on_missing_nodes", one_of(ON_MISSING_NODES), options(ON_MISSING_NODES)),
    Rule("log_every", int_at_least(0), "an integer >= 0"),
    Rule("checkpoint_every", int_at_least(0), "an integer >= 0 (0: no checkpoints)"),
    Rule("resume", text, "null or a run directory (or its checkpoint.npz)", optional=True),
    Rule("engine.name", one_of(ENGINES), options(ENGINES)),
    Rule("engine.name", _ray_installed,
         "inprocess or deployment (engine=ray needs the ray extra: pip install "
         "'flower-qlearn[ray]')"),
    Rule("engine.num_cpus_per_client", positive, "a number > 0", when=_engine_is("ray")),
    Rule("engine.concurrent", schema.boolean, "true or false", when=_engine_is("inprocess"),
         optional=True),
    Rule("engine.address", _host_port, "a SuperLink address host:port, e.g. 127.0.0.1:8000",
         when=_deployment_address_needed),
    Rule("engine.insecure", schema.boolean, "true or false", when=_DEPLOYMENT),
    Rule("engine.root_certificates", text, "null or a path", when=_DEPLOYMENT, optional=True),
    Rule("engine.connection", text, "null or a connection name", when=_DEPLOYMENT,
         optional=True),
    Rule("engine.flwr_home", text, "null or a directory", when=_DEPLOYMENT, optional=True),
    Rule("engine.app_dir", text, "null or a directory", when=_DEPLOYMENT, optional=True),
    Rule("engine.poll_interval", positive, "a number > 0", when=_DEPLOYMENT),
    Rule("engine.run_timeout", positive, "a number > 0", when=_DEPLOYMENT),
)


# --- the remaining top-level keys, sizes that cannot fit, combinations that make no sense ------


def _output_dir_ok(v: Any) -> bool:
    from .outputs import output_dir_problem

    return text(v) and output_dir_problem(v) is None


def _output_dir_allowed(s: Mapping) -> str:
    from .outputs import output_dir_problem

    v = s.get("output_dir")
    why = output_dir_problem(v) if text(v) else "not a path"
    return f"null or a directory that can be created and written ({why})"


def _sizes(s: Mapping) -> tuple[int, int, bool] | None:
    """``(S, A, clients_here)`` of a config whose sizes are valid integers, else None."""
    n_s, n_a = schema.get(s, "mdp.num_states"), schema.get(s, "mdp.num_actions")
    if not (schema.is_int(n_s) and schema.is_int(n_a) and n_s >= 1 and n_a >= 1):
        return None
    return n_s, n_a, schema.get(s, "engine.name") != "deployment"


def _memory() -> int | None:
    from .resources import available_memory_bytes

    return available_memory_bytes()


def _table_too_large(s: Mapping) -> bool:
    from .resources import fixed_bytes

    sizes, available = _sizes(s), _memory()
    return sizes is not None and available is not None and fixed_bytes(*sizes[:2]) > available


def _table_allowed(s: Mapping) -> str:
    from .resources import fixed_bytes, human_bytes

    n_s, n_a, _ = _sizes(s) or (0, 0, True)
    return (
        f"a size whose transition tables fit in memory: 2 x 16 S A bytes = "
        f"{human_bytes(fixed_bytes(n_s, n_a))} for S={n_s}, A={n_a}, "
        f"{human_bytes(_memory() or 0)} available"
    )


def _too_many_clients(s: Mapping) -> bool:
    from .resources import run_memory_bytes

    k, sizes, available = s.get("num_clients"), _sizes(s), _memory()
    if not schema.is_int(k) or sizes is None or available is None:
        return False
    return run_memory_bytes(k, sizes[0], sizes[1], clients_here=sizes[2]) > available


def _clients_allowed(s: Mapping) -> str:
    from .resources import human_bytes, max_clients, per_client_bytes, run_memory_bytes

    n_s, n_a, here = _sizes(s) or (1, 1, True)
    available = _memory() or 0
    need = run_memory_bytes(int(s["num_clients"]), n_s, n_a, clients_here=here)
    return (
        f"an integer in [1, {max_clients(available, n_s, n_a, clients_here=here)}]: this run "
        f"needs at least {human_bytes(need)} "
        f"({human_bytes(per_client_bytes(n_s, n_a, clients_here=here))} per client at "
        f"S={n_s}, A={n_a}), {human_bytes(available)} of memory available"
    )


def _average_reward_on_absorbing(s: Mapping) -> bool:
    return (
        schema.get(s, "strategy.name") == "average_reward"
        and schema.get(s, "mdp.terminal") == "absorbing"
    )


INPUT_RULES: tuple[Rule, ...] = (
    Rule("figures", schema.boolean, "true or false"),
    Rule("sweep_figures", schema.boolean, "true or false"),
    Rule("output_dir", _output_dir_ok, _output_dir_allowed, optional=True),
    Rule("mdp.num_states", schema.never, _table_allowed, when=_table_too_large),
    Rule("num_clients", schema.never, _clients_allowed, when=_too_many_clients),
    Rule("mdp.terminal", schema.never,
         "reset with strategy=average_reward (an absorbing terminal state makes the MDP "
         "multichain and the gain blind to the episode's rewards: set mdp.terminal=reset, the "
         "unichain variant)",
         when=_average_reward_on_absorbing),
)


def all_rules() -> list[Rule]:
    """Every rule a composed config must satisfy (built once per set of registered strategies:
    a sweep validates every job)."""
    registry.load_all()
    key = tuple((name, id(spec)) for name, spec in registry.STRATEGIES.items())
    if _RULES.get("key") != key:
        strategy_names = tuple(registry.STRATEGIES)
        _RULES["key"] = key
        _RULES["specs"] = tuple(registry.STRATEGIES.values())  # alive: their ids stay theirs
        _RULES["rules"] = (
            Rule("strategy.name", one_of(strategy_names), options(strategy_names)),
            *schema.TASK_RULES,
            *RUN_RULES,
            *INPUT_RULES,
            *batched.RULES,
            *delays.RULES,
            *registry.strategy_rules(),
        )
    return list(_RULES["rules"])


_RULES: dict[str, tuple] = {}  # "key": the registry's (name, id(spec)); "rules": theirs


def validate(cfg: DictConfig | Mapping) -> None:
    """Check every rule; raise :class:`ConfigError` (one line) on the first violation.

    A ``resume`` target is checked too (:func:`flower_qlearn.checkpoint.check_resume`: the file
    is read without pickle, hashed and its values checked), so a bad checkpoint is refused
    here, before any job starts or any output is written.
    """
    from .checkpoint import check_resume
    from .known_keys import check_known

    plain = settings(cfg)
    check_known(plain)  # +num_client=4, +foo=1, +mdp.bar=2: refused before any rule
    schema.validate(plain, all_rules())
    check_resume(plain)


_PLAIN: dict[int, tuple[Any, dict]] = {}


def settings(cfg: DictConfig | Mapping) -> dict:
    """The composed config as a plain nested dict (cached per config object: a config is not
    modified once composed and validated).

    OmegaConf attribute access costs tens of microseconds; the server reads settings often.
    """
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    hit = _PLAIN.get(id(cfg))
    if hit is None or hit[0] is not cfg:
        hit = (cfg, to_container(cfg))
        _PLAIN[id(cfg)] = hit
    return hit[1]


def to_container(cfg: DictConfig) -> dict:
    """Plain-dict copy of a config (resolved), for JSON summaries."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Flower run config <-> composed config
# --------------------------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _decode(key: str, value: Any) -> Any:
    if isinstance(value, str) and value.startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"invalid run config: {key}={value!r} is not a JSON list") from None
    return value


def to_run_config(cfg: DictConfig | Mapping, *, full: bool = True) -> dict[str, Any]:
    """The Flower run config of a composed config (scalars only, as Flower requires)."""
    flat = {k: _encode(v) for k, v in flatten(settings(cfg)).items()}
    flat[FULL_CONFIG_KEY] = bool(full)
    return flat


def _groups() -> tuple[str, ...]:
    """Config groups chosen by a ``name`` key (``strategy``, ``mdp``, ``engine``, ``delay``)."""
    return tuple(g for g in default_choices() if "name" in group_defaults(g))


@lru_cache(maxsize=1)
def packaged_run_config() -> dict[str, Any]:
    """``[tool.flwr.app.config]``: the default config as run-config keys, plus every key of the
    other group options with ``""`` (= that option's own default), and ``full_config=false``."""
    flat = to_run_config(compose([]), full=False)
    for group in _groups():
        for option in sorted(p.stem for p in (config_dir() / group).glob("*.yaml")):
            for key in flatten(group_defaults(group, option), group + "."):
                flat.setdefault(key, "")
    return flat


_RUN_CACHE: dict[str, DictConfig] = {}


def _run_key(run_config: Mapping[str, Any]) -> str:
    return json.dumps(sorted((str(k), repr(v)) for k, v in run_config.items()))


def register_run_config(run_config: Mapping[str, Any], cfg: DictConfig) -> None:
    """Remember that ``run_config`` (from :func:`to_run_config`) stands for ``cfg``."""
    _RUN_CACHE[_run_key(run_config)] = cfg


def from_run_config(run_config: Mapping[str, Any]) -> DictConfig:
    """The composed, validated config that a Flower run config describes.

    Raises :class:`ConfigError` (one line) on an unknown key or a bad value.
    """
    key = _run_key(run_config)
    if key in _RUN_CACHE:
        return _RUN_CACHE[key]
    flat = dict(run_config)
    full = bool(flat.pop(FULL_CONFIG_KEY, False))
    packaged = packaged_run_config()
    groups = _groups()
    choices = []
    for group in groups:
        choice = flat.get(f"{group}.name")
        if choice not in (None, "") and (full or choice != packaged.get(f"{group}.name")):
            choices.append(f"{group}={choice}")
    # cached: never mutate it; validated below, once the run config's values are applied
    cfg = copy.deepcopy(compose(choices, check=False))
    known = set(flatten(to_container(cfg)))
    if full:  # a whole composed config (e.g. of a +experiment) may hold keys of its own
        OmegaConf.set_struct(cfg, False)
    for name, value in flat.items():
        if name.endswith(".name") and name.split(".")[0] in groups:
            continue
        if not full and (value == "" or value == packaged.get(name)):
            continue  # not set: the chosen options' defaults apply
        if name not in known:
            # A key of another group option, not set; or, in a whole config, a packaged key that
            # Flower's fuse with pyproject.toml added (e.g. engine.concurrent of the default
            # engine under engine=deployment): neither belongs to this config.
            if value == "" or (full and name in packaged and value == packaged[name]):
                continue
            if full:  # a key of the whole composed config itself (e.g. plot.* of +experiment)
                OmegaConf.update(cfg, name, _decode(name, value), merge=False)
                continue
            raise ConfigError(
                f"invalid run config: {name} is not a key of this config "
                f"({', '.join(choices) or 'the defaults'})"
            )
        OmegaConf.update(cfg, name, None if value == "" else _decode(name, value), merge=False)
    _PLAIN.pop(id(cfg), None)
    validate(cfg)
    _RUN_CACHE[key] = cfg
    return cfg


def packaged_run_config_toml() -> str:
    """``[tool.flwr.app.config]`` as TOML tables (what pyproject.toml holds)."""
    import tomli_w

    nested: dict[str, Any] = {}
    for name, value in packaged_run_config().items():
        *parents, leaf = name.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tomli_w.dumps({"tool": {"flwr": {"app": {"config": nested}}}})


if __name__ == "__main__":  # python -m flower_qlearn.config --run-config
    import sys

    if sys.argv[1:] != ["--run-config"]:
        sys.exit("usage: python -m flower_qlearn.config --run-config")
    print(packaged_run_config_toml(), end="")
