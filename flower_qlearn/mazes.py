"""Random grid mazes, and the heterogeneous family of environments built from them.

Wang, Yang, Su, "On the Convergence Rates of Federated Q-Learning across Heterogeneous
Environments" (arXiv 2409.03897, TMLR 2025), section 6: ``K = 20`` agents, each on its own
independently drawn 5x5 maze ``<S, A, P_k, R, gamma>`` (25 cells, actions left, up, right,
down; a common reward ``R``, a kernel ``P_k`` per agent). The paper's exact maze generator was
not recovered; :func:`random_maze` is our reconstruction (``docs/beyond_the_papers.md``):

- cells ``0 .. n^2 - 1`` row by row; the start is cell 0 (top left), the goal the last cell;
- every other cell is a wall with probability ``wall_density`` (drawn again until the goal is
  reachable from the start, so each maze is solvable);
- an action moves to the neighbouring cell in its direction with probability ``1 - slip`` and
  in a uniformly random direction otherwise; a move into a wall or off the grid stays put;
- the goal pays ``R = 1`` for every action and sends the agent back to the start (the task
  repeats forever, a recurrent chain); every other reward is 0. So ``R`` does not depend on
  the walls: the mazes of a family share ``R`` and differ only in ``P_k``, as in the paper.

The family (agent ``k`` on its own maze) and its global objective are in
:mod:`flower_qlearn.families`.

Pure NumPy, no Flower (the core).
"""

from __future__ import annotations

import numpy as np

from .mdp import TabularMDP

#: Actions in the paper's order.
ACTIONS = ("left", "up", "right", "down")
_MOVES = ((0, -1), (-1, 0), (0, 1), (1, 0))  # (row, column) offsets of ACTIONS
#: Attempts to draw a solvable wall layout before giving up (each is a fresh draw).
MAX_LAYOUT_DRAWS = 1000


def maze_size(num_states: int) -> int:
    """Side ``n`` of a square maze with ``num_states = n^2`` cells (``ValueError`` otherwise)."""
    n = int(round(np.sqrt(num_states)))
    if n < 2 or n * n != num_states:
        raise ValueError(f"a maze needs num_states = n^2 with n >= 2, got {num_states}")
    return n


def _reachable(walls: np.ndarray, start: int) -> np.ndarray:
    """Cells reachable from ``start`` through non-wall cells (breadth-first)."""
    n = walls.shape[0]
    seen = np.zeros(n * n, dtype=bool)
    seen[start] = True
    frontier = [start]
    while frontier:
        cell = frontier.pop()
        row, col = divmod(cell, n)
        for dr, dc in _MOVES:
            r, c = row + dr, col + dc
            if 0 <= r < n and 0 <= c < n and not walls[r, c] and not seen[r * n + c]:
                seen[r * n + c] = True
                frontier.append(r * n + c)
    return seen


def wall_layout(size: int, wall_density: float, rng: np.random.Generator) -> np.ndarray:
    """A random ``(size, size)`` boolean wall map whose goal is reachable from the start."""
    if not 0.0 <= wall_density < 1.0:
        raise ValueError(f"wall_density must be in [0, 1), got {wall_density}")
    goal = size * size - 1
    for _ in range(MAX_LAYOUT_DRAWS):
        walls = rng.random((size, size)) < wall_density
        walls.flat[0] = walls.flat[goal] = False
        if _reachable(walls, 0)[goal]:
            return walls
    raise ValueError(f"no solvable {size}x{size} maze in {MAX_LAYOUT_DRAWS} draws at "
                     f"wall_density={wall_density}")


def maze_kernel(walls: np.ndarray, slip: float) -> np.ndarray:
    """Transition kernel ``(n^2, 4, n^2)`` of a wall map (the goal's rows reset to the start)."""
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip must be in [0, 1], got {slip}")
    n = walls.shape[0]
    num_states = n * n
    target = np.empty((num_states, len(_MOVES)), dtype=np.int64)  # where a clean move lands
    for cell in range(num_states):
        row, col = divmod(cell, n)
        for a, (dr, dc) in enumerate(_MOVES):
            r, c = row + dr, col + dc
            blocked = not (0 <= r < n and 0 <= c < n) or walls[r, c]
            target[cell, a] = cell if blocked else r * n + c
    moves = np.zeros((num_states, len(_MOVES), num_states))
    np.put_along_axis(moves, target[..., None], 1.0, axis=-1)
    P = (1.0 - slip) * moves + slip * moves.mean(axis=1, keepdims=True)
    P[num_states - 1] = 0.0
    P[num_states - 1, :, 0] = 1.0  # the goal: back to the start, whatever the action
    return P


def random_maze(
    num_states: int = 25,
    wall_density: float = 0.2,
    slip: float = 0.1,
    gamma: float = 0.99,
    seed: int = 0,
) -> TabularMDP:
    """A random square maze (see the module docstring), deterministic for a given ``seed``.

    Parameters
    ----------
    num_states : int
        ``n^2`` cells (25: the paper's 5x5 maze).
    wall_density : float
        Probability in ``[0, 1)`` that a cell other than the start and the goal is a wall.
    slip : float
        Probability in ``[0, 1]`` that an action moves in a uniformly random direction.
    gamma : float
        Discount factor.
    seed : int
        Seed of ``np.random.default_rng`` for the wall layout.
    """
    size = maze_size(num_states)
    walls = wall_layout(size, wall_density, np.random.default_rng(seed))
    R = np.zeros((num_states, len(ACTIONS)))
    R[num_states - 1] = 1.0
    initial = np.zeros(num_states)
    initial[0] = 1.0
    name = f"maze({size}x{size},walls={wall_density:g},slip={slip:g},seed={seed})"
    return TabularMDP(maze_kernel(walls, slip), R, gamma, initial, name=name)
