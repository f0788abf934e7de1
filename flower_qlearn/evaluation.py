"""Evaluation of a global Q-table against the exact ground truth of the experiment's MDP.

``discounted`` runs: ``q_error = ||Q - Q*||_inf`` and ``normalized_q_error = (1 - gamma) q_error``
(the figure metric of Woo et al.); ``average_reward`` runs: ``gain_error = ||max_a Q - rho*||_inf``,
the estimates ``rho_hat`` (mean, max, min of ``max_a Q``) and ``policy_gain_gap = rho* -
rho(greedy(Q))``. Definitions in docs/ALGORITHMS.md section 0.
"""

from __future__ import annotations

import numpy as np

from .mdp import TabularMDP
from .solvers import greedy_policy, optimal_gain, optimal_q, policy_gain


class Evaluator:
    """Errors of a global Q-table against the exact solution of the experiment's MDP."""

    def __init__(self, mdp: TabularMDP, objective: str) -> None:
        self.mdp = mdp
        self.objective = objective
        if objective == "average_reward":
            self.rho, self.h = optimal_gain(mdp)
            self.q_star = None
        else:
            self.q_star = optimal_q(mdp)

    def __call__(self, q: np.ndarray) -> dict[str, float]:
        if self.objective == "average_reward":
            v = q.max(axis=1)
            return {
                "gain_error": float(np.max(np.abs(v - self.rho))),
                "rho_hat": float(v.mean()),
                "rho_hat_max": float(v.max()),
                "rho_hat_min": float(v.min()),
                "policy_gain_gap": float(self.rho - policy_gain(self.mdp, greedy_policy(q))),
            }
        err = float(np.max(np.abs(q - self.q_star)))
        return {"q_error": err, "normalized_q_error": (1.0 - self.mdp.gamma) * err}

    def truth(self) -> dict:
        if self.objective == "average_reward":
            return {"rho_star": float(self.rho)}
        return {"q_star_max": float(self.q_star.max()), "q_star_min": float(self.q_star.min())}
