"""Sparse transition kernels: per ``(s, a)``, the successors with nonzero probability.

A :class:`Transitions` holds ``P(. | s, a)`` as padded successor lists: ``next[s, a, :n]`` are
the ``n = length[s, a]`` successors in increasing state order and ``prob[s, a, :n]`` their
probabilities; the ``W - n`` padding slots repeat the last successor with probability 0.
Memory is ``16 S A W`` bytes instead of the dense ``8 S A S``, and sampling scans ``W``
entries instead of ``S``.

Exactness: :meth:`Transitions.cumulative` is the dense ``sampling.cumulative(P)`` restricted
to the stored positions (a cumulative sum over the nonzeros in index order equals the dense
cumulative sum there, since adding ``0.0`` is exact), so inverse-CDF sampling on the short
rows returns the same states as on the dense rows, bit for bit. NumPy only (SciPy lazily).
"""

from __future__ import annotations

import numpy as np

__all__ = ["DENSE_LIMIT", "Transitions"]

#: Largest dense ``(S, A, S)`` table (entries) :meth:`Transitions.to_dense` builds: 800 MB.
DENSE_LIMIT = 10**8

# Tolerance on row sums for cumulative tables (as sampling.cumulative).
_ROW_SUM_ATOL = 1e-6


class Transitions:
    """Padded successor lists of a transition kernel; read-only arrays.

    Parameters
    ----------
    next_states : np.ndarray
        ``(S, A, W)`` integer successors, increasing along the real entries of each row.
    probs : np.ndarray
        ``(S, A, W)`` probabilities, 0 on padding slots.
    num_states : int
        ``S`` (successors must lie in ``[0, S)``).
    copy : bool
        Store copies (default). Builders pass ``False`` for arrays they just made, which
        are then frozen in place (no second copy of a large kernel at build time).

    Raises
    ------
    ValueError
        On mismatched shapes, successors out of range or not increasing, negative or
        non-finite probabilities.
    """

    def __init__(
        self, next_states: np.ndarray, probs: np.ndarray, num_states: int, copy: bool = True
    ) -> None:
        copy_mode = True if copy else None  # None: only when dtype or layout differ
        nxt = np.array(next_states, dtype=np.int64, copy=copy_mode, order="C")
        prob = np.array(probs, dtype=np.float64, copy=copy_mode, order="C")
        if nxt.ndim != 3 or nxt.shape != prob.shape or nxt.shape[2] == 0:
            raise ValueError(
                f"next_states and probs must share a shape (S, A, W) with W >= 1, got "
                f"{nxt.shape} and {prob.shape}"
            )
        if nxt.shape[0] != num_states or nxt.shape[1] == 0:
            raise ValueError(f"next_states must have {num_states} rows of A >= 1 actions")
        if nxt.min() < 0 or nxt.max() >= num_states:
            raise ValueError(f"successors must be states in [0, {num_states})")
        if not np.all(np.isfinite(prob)) or prob.min() < 0:
            raise ValueError("transition probabilities must be finite and non-negative")
        if np.any((nxt[..., 1:] <= nxt[..., :-1]) & (prob[..., 1:] > 0)):
            raise ValueError("successors of each (s, a) must be strictly increasing")
        nxt.flags.writeable = False
        prob.flags.writeable = False
        self.next = nxt
        self.prob = prob
        self._cdf: np.ndarray | None = None

    # ------------------------------------------------------------------ shape

    @property
    def num_states(self) -> int:
        """``S``."""
        return int(self.next.shape[0])

    @property
    def num_actions(self) -> int:
        """``A``."""
        return int(self.next.shape[1])

    @property
    def width(self) -> int:
        """``W``, the longest successor list."""
        return int(self.next.shape[2])

    @property
    def nbytes(self) -> int:
        """Bytes held by the successor and probability arrays."""
        return int(self.next.nbytes + self.prob.nbytes)

    # ------------------------------------------------------------------ conversions

    @classmethod
    def from_dense(cls, P: np.ndarray) -> Transitions:
        """Successor lists of a dense ``(S, A, S)`` kernel (zero entries are dropped)."""
        P = np.asarray(P, dtype=np.float64)
        num_states, num_actions = P.shape[0], P.shape[1]
        flat = P.reshape(num_states * num_actions, P.shape[2])
        rows, cols = np.nonzero(flat)  # row-major: columns increase within each row
        return cls._from_entries(rows, cols, flat[rows, cols], num_states, num_actions)

    @classmethod
    def from_csr(cls, matrix, num_states: int, num_actions: int) -> Transitions:
        """From an ``(S * A, S)`` sparse matrix with row ``s * A + a`` (as :meth:`to_csr`);
        explicit zeros are dropped."""
        matrix = matrix.tocsr()
        matrix.sum_duplicates()  # sorted, distinct columns in each row
        rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
        keep = matrix.data != 0
        return cls._from_entries(
            rows[keep], matrix.indices[keep].astype(np.int64), matrix.data[keep], num_states,
            num_actions,
        )

    @classmethod
    def _from_entries(cls, rows, cols, values, num_states: int, num_actions: int):
        """Padded lists from the nonzeros of the ``(S * A, S)`` matrix, row-major order."""
        num_rows = num_states * num_actions
        lengths = np.bincount(rows, minlength=num_rows)
        width = max(1, int(lengths.max()) if lengths.size else 1)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        slot = np.arange(rows.size) - starts[rows]
        nxt = np.zeros((num_rows, width), dtype=np.int64)
        prob = np.zeros((num_rows, width))
        nxt[rows, slot] = cols
        prob[rows, slot] = values
        # Padding repeats the last real successor (never drawn: probability 0).
        last = nxt[np.arange(num_rows), np.maximum(lengths - 1, 0)]
        pad = np.arange(width)[None, :] >= lengths[:, None]
        nxt = np.where(pad, last[:, None], nxt)
        shape = (num_states, num_actions, width)
        return cls(nxt.reshape(shape), prob.reshape(shape), num_states, copy=False)

    @classmethod
    def from_successors(cls, successors: np.ndarray, probs: np.ndarray, num_states: int):
        """From ``(S, A, W)`` distinct successors in any order (a builder's draw order)."""
        order = np.argsort(successors, axis=-1, kind="stable")
        nxt = np.take_along_axis(successors, order, axis=-1)
        prob = np.take_along_axis(probs, order, axis=-1)
        del order
        return cls(nxt, prob, num_states, copy=False)

    def to_dense(self) -> np.ndarray:
        """The dense ``(S, A, S)`` kernel; refuses beyond :data:`DENSE_LIMIT` entries."""
        S, A = self.num_states, self.num_actions
        if S * A * S > DENSE_LIMIT:
            raise MemoryError(
                f"a dense P of S={S}, A={A} needs {S * A * S * 8 / 2**30:.1f} GiB; use the "
                "sparse mdp.transitions (solvers and samplers do)"
            )
        P = np.zeros((S, A, S))
        # add.at, not put_along_axis: padding repeats a successor (with probability 0).
        s_idx, a_idx = np.indices((S, A))
        np.add.at(P, (s_idx[..., None], a_idx[..., None], self.next), self.prob)
        return P

    def to_csr(self):
        """``scipy.sparse.csr_matrix`` of shape ``(S * A, S)``, row ``s * A + a`` (not cached)."""
        from scipy.sparse import csr_matrix

        S, A, W = self.next.shape
        if W == 1 or bool(np.all(self.prob > 0)):  # no padding: CSR arrays directly
            return csr_matrix(
                (self.prob.reshape(-1), self.next.reshape(-1), np.arange(0, S * A * W + 1, W)),
                shape=(S * A, S),
            )
        return self._summed_csr(np.repeat(np.arange(S * A), W), S * A)

    def state_graph(self):
        """``(S, S)`` CSR matrix ``sum_a P(s' | s, a)``: its nonzeros are the edges ``s -> s'``
        of some action (reachability)."""
        S, A, W = self.next.shape
        return self._summed_csr(np.repeat(np.arange(S), A * W), S)

    def _summed_csr(self, row_of_slot: np.ndarray, num_rows: int):
        """CSR ``(num_rows, S)`` of the stored probabilities, slot ``i`` in row
        ``row_of_slot[i]``; padding dropped, entries of one row and successor summed."""
        from scipy.sparse import csr_matrix

        keep = self.prob.reshape(-1) > 0
        matrix = csr_matrix(
            (self.prob.reshape(-1)[keep], (row_of_slot[keep], self.next.reshape(-1)[keep])),
            shape=(num_rows, self.num_states),
        )
        matrix.sum_duplicates()
        return matrix

    def row_sums(self) -> np.ndarray:
        """``(S, A)`` sums of each distribution."""
        return self.prob.sum(axis=-1)

    def cumulative(self) -> np.ndarray:
        """``(S, A, W)`` cumulative rows, equal to the dense ``cumulative(P)`` at ``next``.

        Cached: computed once per kernel and shared (read-only) by every sampler of it.
        """
        if self._cdf is None:
            cdf = np.cumsum(self.prob, axis=-1)
            totals = cdf[..., -1:]
            if np.any(np.abs(totals - 1.0) > _ROW_SUM_ATOL):
                worst = float(np.max(np.abs(totals - 1.0)))
                raise ValueError(f"rows of P must sum to 1 (largest deviation {worst:.3g})")
            cdf /= totals
            cdf.flags.writeable = False
            self._cdf = cdf
        return self._cdf

    def expect(self, values: np.ndarray) -> np.ndarray:
        """``(S, A)`` expectations ``sum_s' P(s' | s, a) values[s']`` (the dense ``P @ v``)."""
        return np.einsum("saw,saw->sa", self.prob, np.asarray(values)[self.next])

    def same_as(self, other: Transitions) -> bool:
        """Exact equality of the stored lists."""
        return (
            self.next.shape == other.next.shape
            and np.array_equal(self.next, other.next)
            and np.array_equal(self.prob, other.prob)
        )
