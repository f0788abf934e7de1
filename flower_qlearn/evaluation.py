"""Evaluation of a global Q-table against the exact ground truth of the experiment's MDP.

``discounted`` runs: ``q_error = ||Q - Q*||_inf`` and ``normalized_q_error = (1 - gamma) q_error``
(the figure metric of Woo et al.); ``average_reward`` runs: ``gain_error = ||max_a Q - rho*||_inf``,
the estimates ``rho_hat`` (mean, max, min of ``max_a Q``) and ``policy_gain_gap = rho* -
rho(greedy(Q))``; ``td`` runs (DASA ``operator=td_linear``): ``theta_error = ||theta -
theta*||_2^2`` against the TD fixed point of :mod:`flower_qlearn.td`, which the run's plan
hands over as ``ground_truth`` (it depends on the features, not on the MDP alone). Definitions
in docs/ALGORITHMS.md section 0 and 6.
"""

from __future__ import annotations

import numpy as np

from .mdp import TabularMDP
from .solvers import greedy_policy, optimal_gain, optimal_q, policy_gain

#: Evaluation objectives (a plan's ``objective``).
OBJECTIVES = ("discounted", "average_reward", "td")


class Evaluator:
    """Errors of a global Q-table (or TD iterate) against the exact solution of the experiment.

    ``ground_truth`` is required for ``td``: the :class:`~flower_qlearn.td.TDProblem`.
    """

    def __init__(self, mdp: TabularMDP, objective: str, ground_truth=None) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r}; expected one of {', '.join(OBJECTIVES)}")
        self.mdp = mdp
        self.objective = objective
        self.q_star = None
        if objective == "td":
            if ground_truth is None:
                raise ValueError("objective 'td' needs its ground truth (a TDProblem)")
            self.td = ground_truth
        elif objective == "average_reward":
            self.rho, self.h = optimal_gain(mdp)
            self.q_star = None
        else:
            self.q_star = optimal_q(mdp)

    def __call__(self, q: np.ndarray) -> dict[str, float]:
        if self.objective == "td":
            diff = np.ravel(q) - self.td.theta_star
            return {"theta_error": float(diff @ diff)}
        if self.objective == "average_reward":
            v = q.max(axis=1)
            return {
                "gain_error": float(np.max(np.abs(v - self.rho))),
                "rho_hat": float(v.mean()),
                "rho_hat_max": float(v.max()),
                "rho_hat_min": float(v.min()),
                "policy_gain_gap": float(self.rho - policy_gain(self.mdp, greedy_policy(q))),
            }
        return self._discounted(float(np.max(np.abs(q - self.q_star))))

    def many(self, qs: np.ndarray) -> list[dict[str, float]]:
        """``[self(q) for q in qs]`` for a stack of tables (the batched engine's jobs of one
        MDP), the discounted errors in one array operation (the same numbers: max is exact)."""
        if self.objective != "discounted":
            return [self(q) for q in qs]
        errs = np.max(np.abs(qs - self.q_star), axis=tuple(range(1, np.ndim(qs))))
        return [self._discounted(float(err)) for err in errs]

    def _discounted(self, err: float) -> dict[str, float]:
        return {"q_error": err, "normalized_q_error": (1.0 - self.mdp.gamma) * err}

    def truth(self) -> dict:
        if self.objective == "td":
            return {
                "theta_star_norm": float(np.linalg.norm(self.td.theta_star)),
                "omega": self.td.omega,
                "num_features": int(self.td.theta_star.size),
            }
        if self.objective == "average_reward":
            return {"rho_star": float(self.rho)}
        return {"q_star_max": float(self.q_star.max()), "q_star_min": float(self.q_star.min())}
