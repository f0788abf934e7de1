"""Markov chains of fixed policies: recurrent classes, gains, stationary distributions, reach.

The exact ground truth of :mod:`flower_qlearn.solvers` (average reward) and
:mod:`flower_qlearn.td` (TD fixed points) rests on these. A chain is a row-stochastic
``(S, S)`` matrix, dense (``np.ndarray``) or sparse (``scipy.sparse`` CSR, as the solvers build
it from :class:`~flower_qlearn.transitions.Transitions` above ``DENSE_MAX_STATES`` states):

- dense chains are solved by direct linear solves, exactly as before this module existed;
- sparse chains never build an ``(S, S)`` dense array. Gains come from iterating the lazy
  chain ``(I + P) / 2`` with a certificate at every step (``min d <= g <= max d``, see
  :func:`gain_vector`); the stationary distribution by power iteration on the lazy chain to
  float64 rounding; reachability by the strongly connected components' condensation.

NumPy and SciPy only (SciPy imported by the functions that need it).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "gain_vector",
    "reachable_max",
    "recurrent_classes",
    "stationary_distribution",
]

#: Iteration budget of the sparse gain and stationary computations (a guard: well-mixing
#: chains need tens of iterations; the budget bounds a pathological one's run time).
MAX_ITERATIONS = 1_000_000

#: Certified half-width of the sparse gains (``|g - g_true| <= GAIN_TOL``).
GAIN_TOL = 1e-12


def _is_sparse(chain) -> bool:
    return not isinstance(chain, np.ndarray)


def _components(graph):
    """Strongly connected components of the transition graph: ``(count, labels, csr graph)``."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    graph = csr_matrix(graph > 0) if not _is_sparse(graph) else (graph > 0).tocsr()
    count, labels = connected_components(graph, directed=True, connection="strong")
    return count, labels, graph


def recurrent_classes(chain) -> list[np.ndarray]:
    """Closed communicating classes of a Markov chain (its recurrent classes), as index arrays.

    A strongly connected component of the transition graph is recurrent iff no edge leaves it.
    """
    count, labels, graph = _components(chain)
    rows, cols = graph.nonzero()
    leaves = np.zeros(count, dtype=bool)
    leaves[labels[rows][labels[rows] != labels[cols]]] = True
    # Group the states by component in one sort (not one scan of S per class).
    order = np.argsort(labels, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(labels, minlength=count))[:-1])
    return [groups[c] for c in range(count) if not leaves[c]]


def gain_vector(chain, reward: np.ndarray, tol: float = GAIN_TOL) -> np.ndarray:
    """Per-state average reward ``g = P* r`` of a Markov reward process (any class structure).

    ``P*`` is the Cesaro limit of ``P^n``: each recurrent class ``C`` has its stationary
    distribution ``mu_C`` and gain ``g_C = mu_C r``; a transient state's gain is the average
    of ``g_C`` weighted by its absorption probabilities.

    Dense chains: ``mu_C`` and the absorption probabilities ``(I - Q) B = P[T, C]`` by linear
    solves (exact to rounding). Sparse chains, certified to ``tol``:

    - on each class, ``d_0 = r``, ``d_{n+1} = (d_n + P d_n) / 2``. ``mu_C`` is stationary for
      the lazy chain too, so ``g_C = mu_C d_n`` and ``min_C d_n <= g_C <= max_C d_n`` at every
      ``n``; the lazy chain is aperiodic, so the span shrinks geometrically; the midpoint is
      returned once ``span <= tol`` (error at most ``tol / 2``).
    - on the transient states ``T``, with ``Q = P[T, T]``, ``b = P[T, R] g_R``:
      ``x_{k+1} = Q x_k + b`` (``x_0 = 0``) and ``m_k = Q^k 1``; then
      ``g_T = x_k + Q^k g_T`` with ``Q^k g_T`` in ``[m_k g_min, m_k g_max]``: the midpoint is
      returned once ``m_k (g_max - g_min) <= tol``: with the classes' own error, at most
      ``tol`` in all.
    """
    if _is_sparse(chain):
        return _sparse_gain_vector(chain.tocsr(), np.asarray(reward, dtype=np.float64), tol)
    S = chain.shape[0]
    gain = np.zeros(S)
    recurrent = np.zeros(S, dtype=bool)
    class_gains = []
    classes = recurrent_classes(chain)
    for members in classes:
        block = chain[np.ix_(members, members)]
        # mu (I - P_C) = 0 with sum(mu) = 1: replace one (redundant) balance equation.
        system = (np.eye(members.size) - block).T
        system[-1] = 1.0
        rhs = np.zeros(members.size)
        rhs[-1] = 1.0
        mu = np.linalg.solve(system, rhs)
        class_gains.append(float(mu @ reward[members]))
        gain[members] = class_gains[-1]
        recurrent[members] = True
    transient = np.flatnonzero(~recurrent)
    if transient.size:
        into = np.stack([chain[np.ix_(transient, c)].sum(axis=1) for c in classes], axis=1)
        lhs = np.eye(transient.size) - chain[np.ix_(transient, transient)]
        absorption = np.linalg.solve(lhs, into)  # (T, number of classes)
        gain[transient] = absorption @ np.array(class_gains)
    return gain


def _not_converged(what: str, gap: float) -> RuntimeError:
    return RuntimeError(
        f"{what} did not converge in {MAX_ITERATIONS} iterations (certified gap {gap:.3g}): "
        "the chain mixes too slowly for the sparse solver"
    )


def _sparse_gain_vector(chain, reward: np.ndarray, tol: float) -> np.ndarray:
    S = chain.shape[0]
    classes = recurrent_classes(chain)
    gain = np.zeros(S)
    members = np.concatenate(classes)  # recurrent states, grouped by class
    sizes = np.array([c.size for c in classes])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    block = chain[members][:, members]  # block diagonal: classes are closed
    d = reward[members].copy()
    for _ in range(MAX_ITERATIONS):
        low, high = np.minimum.reduceat(d, starts), np.maximum.reduceat(d, starts)
        if float((high - low).max()) <= tol:
            break
        d = 0.5 * d + 0.5 * (block @ d)
    else:
        raise _not_converged("gain of a recurrent class", float((high - low).max()))
    class_gain = 0.5 * (low + high)
    gain[members] = np.repeat(class_gain, sizes)
    recurrent = np.zeros(S, dtype=bool)
    recurrent[members] = True
    transient = np.flatnonzero(~recurrent)
    if transient.size == 0:
        return gain
    rows = chain[transient]
    Q = rows[:, transient]
    b = rows[:, members] @ gain[members]
    g_min, g_max = float(class_gain.min()), float(class_gain.max())
    x, m = np.zeros(transient.size), np.ones(transient.size)
    for _ in range(MAX_ITERATIONS):
        if float(m.max()) * (g_max - g_min) <= tol:
            break
        x, m = Q @ x + b, Q @ m
    else:
        raise _not_converged("absorption of the transient states", float(m.max()))
    gain[transient] = x + m * (0.5 * (g_min + g_max))
    return gain


def stationary_distribution(chain) -> np.ndarray:
    """The unique stationary distribution ``mu = mu P`` of a row-stochastic ``(S, S)`` chain.

    Dense: the balance equations with ``sum mu = 1`` appended (least squares on the stacked,
    consistent system). Sparse: power iteration on the recurrent class (transient states have
    mass 0) with the lazy chain ``(I + P) / 2`` (aperiodic, same stationary distribution),
    from the uniform distribution, until a step moves ``mu`` by float64 rounding noise in l1
    (or stops shrinking just above it). Raises ValueError if it is not unique (several
    closed classes).
    """
    if _is_sparse(chain):
        return _sparse_stationary(chain.tocsr())
    chain = np.asarray(chain, dtype=np.float64)
    n = chain.shape[0]
    system = np.vstack([chain.T - np.eye(n), np.ones((1, n))])
    if np.linalg.matrix_rank(system) < n:
        raise ValueError("the behavior chain has more than one stationary distribution")
    rhs = np.zeros(n + 1)
    rhs[-1] = 1.0
    mu = np.linalg.lstsq(system, rhs, rcond=None)[0]
    mu = np.clip(mu, 0.0, None)  # rounding: -1e-17 on a state of tiny mass
    return mu / mu.sum()


def _sparse_stationary(chain) -> np.ndarray:
    classes = recurrent_classes(chain)
    if len(classes) > 1:
        raise ValueError("the behavior chain has more than one stationary distribution")
    members = classes[0]  # transient states have no stationary mass
    transposed = chain[members][:, members].T.tocsr()
    mu = np.full(members.size, 1.0 / members.size)
    floor = 4 * np.finfo(np.float64).eps  # l1 rounding noise of one step
    change = np.inf
    for _ in range(MAX_ITERATIONS):
        new = 0.5 * mu + 0.5 * (transposed @ mu)
        new /= new.sum()
        previous, change = change, float(np.abs(new - mu).sum())
        mu = new
        # Until the steps reach rounding noise (or stop shrinking just above it).
        if change <= floor or (change >= previous and change <= 1e3 * floor):
            out = np.zeros(chain.shape[0])
            out[members] = mu
            return out
    raise _not_converged("stationary distribution", change)


def reachable_max(graph, values: np.ndarray) -> np.ndarray:
    """``out[s] = max { values[s'] : s' reachable from s }`` (``s`` itself included).

    ``graph`` is any ``(S, S)`` matrix whose nonzeros are the edges. Computed on the
    condensation of the strongly connected components, sinks first (no ``(S, S)`` reach
    matrix): a component's maximum is its own states' and its successors'.
    """
    count, labels, graph = _components(graph)
    best = np.full(count, -np.inf)
    np.maximum.at(best, labels, np.asarray(values, dtype=np.float64))
    rows, cols = graph.nonzero()
    src, dst = labels[rows], labels[cols]
    keep = src != dst
    edges = np.unique(src[keep] * np.int64(count) + dst[keep])
    src, dst = edges // count, edges % count
    remaining = np.bincount(src, minlength=count)  # out-edges still unresolved
    by_dst = np.argsort(dst, kind="stable")
    pred, pred_start = src[by_dst], np.searchsorted(dst[by_dst], np.arange(count + 1))
    frontier = np.flatnonzero(remaining == 0)  # final: every successor is resolved
    while frontier.size:
        lengths = pred_start[frontier + 1] - pred_start[frontier]
        total = int(lengths.sum())
        if total == 0:
            break
        offsets = np.repeat(pred_start[frontier] - np.cumsum(lengths) + lengths, lengths)
        slots = offsets + np.arange(total)
        parents, children = pred[slots], np.repeat(frontier, lengths)
        np.maximum.at(best, parents, best[children])
        remaining -= np.bincount(parents, minlength=count)
        touched = np.unique(parents)
        frontier = touched[remaining[touched] == 0]
    return best[labels]
