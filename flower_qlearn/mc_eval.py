"""Monte-Carlo evaluation of the greedy policy in the real Gymnasium environment.

For the toy-text MDPs (FrozenLake, Taxi, CliffWalking) a user judges a policy by what it does
in the environment itself, not by a sup-norm error on a table: :class:`PolicyEvaluator` plays
``mc_episodes`` episodes of the greedy policy of the global Q-table in ``gymnasium.make(...)``
(episodes cut at ``mc_max_steps``), every ``mc_every`` rounds, and reports the mean undiscounted
raw return with its Student-t 95% half-width, next to the same quantity computed exactly from
the tabular model (:func:`exact_return`). On FrozenLake the raw return is 1 exactly when the
goal is reached, so it is the success rate and the metrics are named so.

The exact value: ``E[sum_{t<H} r_t] = sum_{t<H} mu^T P_pi^t r_pi`` on the absorbing tabular
model, its rescaled rewards mapped back to raw ones (``r = r' span + r_min``,
:func:`flower_qlearn.gym_mdp.reward_scale`); an absorbing terminal state pays raw 0 forever,
which is what the environment pays after an episode ends. Gymnasium is imported lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .mdp import TabularMDP

#: MDPs with a real Gymnasium environment to play (``mdp.name``), and the name of their metric.
MC_METRICS = {"frozenlake": "success_rate", "taxi": "return", "cliffwalking": "return"}


def gym_spec(mdp_settings: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(id, kwargs)`` of the Gymnasium environment behind the ``mdp`` settings."""
    from .mdp_catalog import _GYM_IDS

    name = mdp_settings["name"]
    if name not in MC_METRICS:
        raise ValueError(f"no Gymnasium environment for mdp {name!r}; expected one of "
                         f"{', '.join(MC_METRICS)}")
    kwargs: dict[str, Any] = {}
    if name == "frozenlake":
        kwargs = {"map_name": mdp_settings.get("map_name", "4x4"),
                  "is_slippery": bool(mdp_settings.get("is_slippery", True))}
    return _GYM_IDS[name], kwargs


def exact_return(
    mdp: TabularMDP, policy: np.ndarray, r_min: float, span: float, horizon: int
) -> float:
    """Expected undiscounted raw return of ``policy`` over ``horizon`` steps from ``mdp.initial``.

    ``sum_{t<H} mu^T P_pi^t (R_pi span + r_min)`` on the absorbing model (absorbing states pay
    raw 0, as a finished episode does).
    """
    states = np.arange(mdp.num_states)
    P_pi = mdp.P[states, policy]
    r_pi = mdp.R[states, policy] * span + r_min
    dist, total = np.asarray(mdp.initial, dtype=np.float64), 0.0
    for _ in range(int(horizon)):
        total += float(dist @ r_pi)
        dist = dist @ P_pi
    return total


def episode_returns(env: Any, policy: np.ndarray, episodes: int, seed: int) -> np.ndarray:
    """Undiscounted returns of ``episodes`` episodes of ``policy`` in the Gymnasium ``env``.

    The first ``reset`` is seeded with ``seed``, the later ones continue its random numbers;
    an episode ends when the environment terminates or truncates it.
    """
    returns = np.empty(int(episodes))
    for i in range(int(episodes)):
        state, _ = env.reset(seed=int(seed) if i == 0 else None)
        total, done = 0.0, False
        while not done:
            state, reward, terminated, truncated, _ = env.step(int(policy[int(state)]))
            total += float(reward)
            done = terminated or truncated
        returns[i] = total
    return returns


def ci_half_width(values: np.ndarray, level: float = 0.95) -> float:
    """Student-t ``level`` half-width of the mean of ``values`` (inf for fewer than 2)."""
    from .stats import t_quantile  # lazy: the config rules import this module (MC_METRICS)

    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float("inf")
    q = float(t_quantile(0.5 + level / 2.0, values.size - 1))
    return q * float(values.std(ddof=1)) / float(np.sqrt(values.size))


class PolicyEvaluator:
    """Per-round Monte-Carlo metrics of the greedy policy (every ``every`` rounds).

    Parameters
    ----------
    mdp_settings : Mapping
        The run's ``mdp`` settings (a Gymnasium MDP with ``terminal=absorbing``).
    mdp : TabularMDP
        The exact tabular model of the same environment.
    episodes, every, max_steps : int
        Episodes per evaluation, the period in rounds, the episode cut ``H``.
    seed : int
        The run seed: round ``r``'s episodes start from ``SeedSequence([seed, r])``.
    """

    def __init__(self, mdp_settings: Mapping[str, Any], mdp: TabularMDP, episodes: int,
                 every: int, max_steps: int, seed: int) -> None:
        import gymnasium

        from .gym_mdp import _resolve_env_id, reward_scale

        env_id, kwargs = gym_spec(mdp_settings)
        env_id = _resolve_env_id(env_id, gymnasium.registry)
        self.env = gymnasium.make(env_id, max_episode_steps=int(max_steps), **kwargs)
        table = self.env.unwrapped.P
        self.r_min, self.span = reward_scale(
            [o[2] for s in table for a in table[s] for o in table[s][a]]
        )
        self.mdp, self.metric = mdp, MC_METRICS[mdp_settings["name"]]
        self.episodes, self.every, self.max_steps = int(episodes), int(every), int(max_steps)
        self.seed = int(seed)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], mdp: TabularMDP) -> PolicyEvaluator | None:
        """The evaluator of a run's settings, or None when ``mc_episodes`` is 0 (the default)."""
        episodes = int(settings.get("mc_episodes", 0) or 0)
        if episodes == 0:
            return None
        return cls(settings["mdp"], mdp, episodes, int(settings["mc_every"]),
                   int(settings["mc_max_steps"]), int(settings["seed"]))

    def __call__(self, server_round: int, q: np.ndarray) -> dict[str, float]:
        """``mc_<metric>``, ``mc_<metric>_ci`` and ``exact_<metric>`` on evaluated rounds."""
        from .solvers import greedy_policy

        if server_round % self.every:
            return {}
        policy = greedy_policy(q)
        seed = int(np.random.SeedSequence([self.seed, int(server_round)]).generate_state(1)[0])
        returns = episode_returns(self.env, policy, self.episodes, seed)
        exact = exact_return(self.mdp, policy, self.r_min, self.span, self.max_steps)
        return {
            f"mc_{self.metric}": float(returns.mean()),
            f"mc_{self.metric}_ci": ci_half_width(returns),
            f"exact_{self.metric}": exact,
        }
