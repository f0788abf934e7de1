"""Simulated uplink delays for DASA: how many server iterations an agent's upload takes.

DASA (:mod:`flower_qlearn.strategies.dasa`) is evaluated on a virtual clock: every agent
computes its operator at every server iteration ``t`` and the reply reaches the server at
iteration ``t + d_{i,t}``. The delay ``d_{i,t}`` is drawn here, server-side, from one of the
models of docs/ALGORITHMS.md section 6.
Each draw is a pure function of ``(seed, agent, t)`` (its own ``SeedSequence``), so a run is
reproducible, independent of the order in which replies arrive, and resumable from a checkpoint
without any random-generator state.

Models (``name``):

``none``        ``d = 0``.
``constant``    ``d = delay``.
``uniform``     ``d ~ U{low, ..., high}``.
``geometric``   ``P(d = k) = (1 - p)^k p`` for ``k >= 0`` (mean ``(1 - p) / p``), capped at
                ``max_delay``.
``pareto``      heavy-tailed: ``d = floor(scale * X)`` with ``X`` Lomax (Pareto II) of tail
                index ``shape`` (``P(X > x) = (1 + x)^-shape``), capped at ``max_delay``.
``stragglers``  a fixed subset of agents (``agents``; else the ``floor(fraction N)`` or the
                ``num_stragglers`` highest partition ids) draws ``d ~ U{low, ..., high}``;
                every other agent draws ``d ~ U{0, ..., others_high}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from flower_qlearn.schema import (
    Rule,
    in_interval,
    int_at_least,
    int_list,
    is_int,
    never,
    one_of,
    options,
    positive,
)

DELAY_MODELS = ("none", "constant", "uniform", "geometric", "pareto", "stragglers")

# Domain tag of the delay streams in SeedSequence([seed, tag, agent, t]): keeps them apart from
# the clients' sampling streams, which use SeedSequence([seed, agent, round]).
_DELAY_STREAM = 0x0DE1A7


@dataclass(frozen=True)
class DelayModel:
    """A seeded model of uplink delays ``d_{i,t} >= 0``, in server iterations.

    Parameters
    ----------
    name : str
        One of :data:`DELAY_MODELS` (see the module docstring for each law).
    num_agents : int
        Number of agents ``N`` (partition ids ``0 .. N-1``).
    seed : int
        Master seed; draw ``(i, t)`` uses ``SeedSequence([seed, tag, i, t])``.
    delay : int
        ``constant``: the delay.
    low, high : int
        ``uniform``: the range ``{low .. high}``; ``stragglers``: the stragglers' range.
    p : float
        ``geometric``: success probability in ``(0, 1]``.
    shape, scale : float
        ``pareto``: tail index (> 0; below 2 the variance is infinite) and scale (> 0).
    max_delay : int
        ``geometric`` and ``pareto``: cap on the delay.
    stragglers : tuple[int, ...]
        ``stragglers``: partition ids of the slow agents.
    others_high : int
        ``stragglers``: the other agents' delays are ``U{0 .. others_high}``.
    """

    name: str = "none"
    num_agents: int = 1
    seed: int = 0
    delay: int = 0
    low: int = 0
    high: int = 0
    p: float = 0.5
    shape: float = 1.5
    scale: float = 1.0
    max_delay: int = 1000
    stragglers: tuple[int, ...] = field(default_factory=tuple)
    others_high: int = 0

    def __post_init__(self) -> None:
        if self.name not in DELAY_MODELS:
            raise ValueError(f"delay.name={self.name!r}; expected one of {', '.join(DELAY_MODELS)}")
        if self.num_agents < 1:
            raise ValueError(f"num_agents must be >= 1, got {self.num_agents}")
        checks = {
            "constant": [("delay", self.delay >= 0, "an integer >= 0")],
            "uniform": [("low", 0 <= self.low <= self.high, "0 <= low <= high")],
            "geometric": [
                ("p", 0 < self.p <= 1, "a number in (0, 1]"),
                ("max_delay", self.max_delay >= 0, "an integer >= 0"),
            ],
            "pareto": [
                ("shape", self.shape > 0, "a number > 0"),
                ("scale", self.scale > 0, "a number > 0"),
                ("max_delay", self.max_delay >= 0, "an integer >= 0"),
            ],
            "stragglers": [
                ("low", 0 <= self.low <= self.high, "0 <= low <= high"),
                ("others_high", self.others_high >= 0, "an integer >= 0"),
                (
                    "stragglers",
                    all(0 <= i < self.num_agents for i in self.stragglers),
                    f"partition ids in [0, {self.num_agents - 1}]",
                ),
            ],
        }
        for name, ok, allowed in checks.get(self.name, []):
            if not ok:
                raise ValueError(
                    f"delay.{name}={getattr(self, name)!r} is out of range; expected {allowed}"
                )

    @classmethod
    def from_config(cls, delay: Mapping, num_agents: int, seed: int) -> DelayModel:
        """Build from the ``delay`` config group (a plain mapping, e.g. ``conf/delay/*.yaml``)."""
        d = dict(delay)
        name = str(d.get("name", "none"))
        kwargs: dict = {"name": name, "num_agents": int(num_agents), "seed": int(seed)}
        for key in ("delay", "low", "high", "max_delay", "others_high"):
            if d.get(key) is not None:
                kwargs[key] = int(d[key])
        for key in ("p", "shape", "scale"):
            if d.get(key) is not None:
                kwargs[key] = float(d[key])
        if name == "stragglers":
            count = int(d.get("num_stragglers", 0) or 0)
            if d.get("fraction") is not None:
                count = math.floor(float(d["fraction"]) * num_agents)
            kwargs["stragglers"] = straggler_ids(num_agents, d.get("agents"), count)
        return cls(**kwargs)

    def sample(self, agent: int, iteration: int) -> int:
        """Delay ``d_{agent, iteration}`` of the operator ``agent`` computed at ``iteration``."""
        if self.name == "none":
            return 0
        if self.name == "constant":
            return self.delay
        rng = np.random.default_rng([self.seed, _DELAY_STREAM, int(agent), int(iteration)])
        if self.name == "uniform":
            return int(rng.integers(self.low, self.high + 1))
        if self.name == "geometric":
            # numpy's geometric counts trials (support 1, 2, ...); delays count failures.
            return min(int(rng.geometric(self.p)) - 1, self.max_delay)
        if self.name == "pareto":
            return int(min(math.floor(self.scale * rng.pareto(self.shape)), self.max_delay))
        # stragglers
        if agent in self.stragglers:
            return int(rng.integers(self.low, self.high + 1))
        return int(rng.integers(0, self.others_high + 1))

    def describe(self) -> str:
        """One line naming the model and its parameters (for logs and summaries)."""
        params = {
            "none": {},
            "constant": {"delay": self.delay},
            "uniform": {"low": self.low, "high": self.high},
            "geometric": {"p": self.p, "max_delay": self.max_delay},
            "pareto": {"shape": self.shape, "scale": self.scale, "max_delay": self.max_delay},
            "stragglers": {
                "agents": list(self.stragglers),
                "low": self.low,
                "high": self.high,
                "others_high": self.others_high,
            },
        }[self.name]
        return self.name + "".join(f" {k}={v}" for k, v in params.items())


def straggler_ids(
    num_agents: int, agents: Sequence[int] | None, num_stragglers: int
) -> tuple[int, ...]:
    """The straggling agents: ``agents`` if given, else the ``num_stragglers`` highest ids.

    The highest ids by default so that DASA's tie-break (lower partition id first) never favours
    a straggler by accident.
    """
    if agents is not None and len(agents) > 0:
        return tuple(sorted({int(i) for i in agents}))
    if not 0 <= num_stragglers <= num_agents:
        raise ValueError(
            f"delay.num_stragglers={num_stragglers} is out of range; expected [0, {num_agents}]"
        )
    return tuple(range(num_agents - num_stragglers, num_agents))


# --- config rules of the delay group (conf/delay/*.yaml) --------------------------------------


def _delay_is(*names: str):
    return lambda settings: (settings.get("delay") or {}).get("name") in names


def _high_below_low(settings) -> bool:
    d = settings.get("delay") or {}
    low, high = d.get("low"), d.get("high")
    return is_int(low) and is_int(high) and high < low


def _stragglers_out_of_range(settings) -> bool:
    d, n_agents = settings.get("delay") or {}, settings.get("num_clients")
    if d.get("name") != "stragglers" or not is_int(n_agents):
        return False
    if d.get("agents"):
        return any(is_int(i) and i >= n_agents for i in d["agents"])
    if d.get("fraction") is not None:  # floor(fraction N) <= N: num_stragglers is not used
        return False
    n = d.get("num_stragglers")
    return is_int(n) and n > n_agents


RULES = (
    Rule("delay.name", one_of(DELAY_MODELS), options(DELAY_MODELS)),
    Rule("delay.delay", int_at_least(0), "an integer >= 0", when=_delay_is("constant")),
    Rule("delay.low", int_at_least(0), "an integer >= 0", when=_delay_is("uniform", "stragglers")),
    Rule("delay.high", int_at_least(0), "an integer >= 0", when=_delay_is("uniform", "stragglers")),
    Rule(
        "delay.high",
        never,
        "an integer >= delay.low",
        when=lambda s: _delay_is("uniform", "stragglers")(s) and _high_below_low(s),
    ),
    Rule("delay.p", in_interval(0, 1, lo_open=True), "a number in (0, 1]",
         when=_delay_is("geometric")),
    Rule("delay.max_delay", int_at_least(0), "an integer >= 0",
         when=_delay_is("geometric", "pareto")),
    Rule("delay.shape", positive, "a number > 0", when=_delay_is("pareto")),
    Rule("delay.scale", positive, "a number > 0", when=_delay_is("pareto")),
    Rule("delay.num_stragglers", int_at_least(0), "an integer in [0, num_clients]",
         when=_delay_is("stragglers")),
    Rule("delay.agents", int_list(0), "null or a list of partition ids in [0, num_clients)",
         when=_delay_is("stragglers"), optional=True),
    Rule("delay.others_high", int_at_least(0), "an integer >= 0", when=_delay_is("stragglers")),
    Rule("delay.fraction", in_interval(0, 1), "null or a number in [0, 1]",
         when=_delay_is("stragglers"), optional=True),
    Rule(
        "delay.num_stragglers",
        never,
        "an integer in [0, num_clients] (and delay.agents partition ids < num_clients)",
        when=_stragglers_out_of_range,
    ),
)
