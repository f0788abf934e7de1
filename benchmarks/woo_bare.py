"""A bare compiled script for the Woo et al. heterogeneity sweep: numpy + numba, no package.

Why: issue 11 asks that ``flower-qlearn -m +experiment=woo_heterogeneity`` run within 3x the
wall time of the plainest script a researcher would write for the same computation. This is
that script, written from the experiment's definition (docs/ALGORITHMS.md sections 2-4) and
numpy's documented algorithms, importing nothing of ``flower_qlearn``:

- two_state MDP (m actions): ``r(1, a) = 1``, ``P(0|0, a) = p_a``, ``P(1|1, a) = q_a``,
  ``p, q ~ U[0.4, 0.6]`` from ``default_rng(mdp_seed)`` (all p first); uniform start;
- behaviors: ``uniform`` (1/m) or ``disjoint`` (agent k plays action k mod m);
- agent k, round r: ``default_rng([seed, k, r])`` (SeedSequence -> PCG64, re-implemented in
  numba below), ``tau`` steps of asynchronous Q-learning along its Markov chain (action then
  next state by inverse CDF, two uniforms per step); its first state from
  ``default_rng([seed, k, 0]).choice``;
- equal averaging (mean) or importance averaging (weights ``(1 - eta)^(-N_k(s, a))`` in log
  space, normalized per entry), vectorized over all seeds in numpy;
- ``q_error = max |Q - Q*|`` with ``Q*`` by policy iteration with exact solves.

Usage: ``python benchmarks/woo_bare.py [--seeds N] [--rounds R] [--out curves.npz]``. Prints
the wall time; ``--out`` saves the q_error curves ``(strategy, behavior, seed, round)``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit

M, K, TAU, ETA, GAMMA, MDP_SEED = 10, 20, 50, 0.05, 0.9, 0
STRATEGIES, BEHAVIORS = ("equal", "importance"), ("disjoint", "uniform")

# ----------------------------------------------------------------- SeedSequence + PCG64 in numba
U32 = np.uint64(0xFFFFFFFF)


@njit(cache=True)
def _h(v, c):  # SeedSequence hashmix on uint32 values kept in uint64
    v = (v ^ c) & U32
    c = (c * np.uint64(0x931E8875)) & U32
    v = (v * c) & U32
    return (v ^ (v >> np.uint64(16))) & U32, c


@njit(cache=True)
def _m(x, y):
    r = (np.uint64(0xCA01F9DD) * x - np.uint64(0x4973F715) * y) & U32
    return (r ^ (r >> np.uint64(16))) & U32


@njit(cache=True)
def _mulmod128(ah, al, bh, bl):
    a0, a1, b0, b1 = al & U32, al >> np.uint64(32), bl & U32, bl >> np.uint64(32)
    t = a0 * b0
    u = a1 * b0 + (t >> np.uint64(32))
    v = a0 * b1 + (u & U32)
    hi = a1 * b1 + (u >> np.uint64(32)) + (v >> np.uint64(32))
    lo = (v << np.uint64(32)) | (t & U32)
    return hi + ah * bl + al * bh, lo


@njit(cache=True)
def _lcg(sh, sl, ih, il):
    hi, lo = _mulmod128(sh, sl, np.uint64(0x2360ED051FC65DA4), np.uint64(0x4385DF649FCCF645))
    lo2 = lo + il
    return hi + ih + (np.uint64(1) if lo2 < lo else np.uint64(0)), lo2


@njit(cache=True)
def pcg_from_entropy(e0, e1, e2):
    """(state_hi, state_lo, inc_hi, inc_lo) of default_rng([e0, e1, e2]) (each < 2**32)."""
    ent = (np.uint64(e0), np.uint64(e1), np.uint64(e2))
    pool = np.zeros(4, dtype=np.uint64)
    c = np.uint64(0x43B0D7E5)
    for i in range(4):
        pool[i], c = _h(ent[i] if i < 3 else np.uint64(0), c)
    for i in range(4):
        for j in range(4):
            if i != j:
                x, c = _h(pool[i], c)
                pool[j] = _m(pool[j], x)
    words = np.zeros(8, dtype=np.uint64)
    c = np.uint64(0x8B51F9DD)
    for i in range(8):
        v = (pool[i % 4] ^ c) & U32
        c = (c * np.uint64(0x58F38DED)) & U32
        v = (v * c) & U32
        words[i] = (v ^ (v >> np.uint64(16))) & U32
    w = [words[2 * i] | (words[2 * i + 1] << np.uint64(32)) for i in range(4)]
    ih = (w[2] << np.uint64(1)) | (w[3] >> np.uint64(63))
    il = (w[3] << np.uint64(1)) | np.uint64(1)
    sh, sl = _lcg(np.uint64(0), np.uint64(0), ih, il)
    lo = sl + w[1]
    sh = sh + w[0] + (np.uint64(1) if lo < sl else np.uint64(0))
    sh, sl = _lcg(sh, lo, ih, il)
    return sh, sl, ih, il


@njit(cache=True)
def _double(sh, sl, ih, il):
    sh, sl = _lcg(sh, sl, ih, il)
    x = sh ^ sl
    rot = sh >> np.uint64(58)
    out = (x >> rot) | (x << ((np.uint64(64) - rot) & np.uint64(63)))
    return np.float64(out >> np.uint64(11)) * (1.0 / 9007199254740992.0), sh, sl


# ----------------------------------------------------------------- local steps of all agents


@njit(cache=True)
def local_round(qg, local, counts, states, seeds, pi_cdf, p_cdf, reward, r):
    """Round r of every agent of every job: local tables and visit counts, in place."""
    n_jobs, n_agents = states.shape
    n_actions = qg.shape[2]
    u = np.empty((TAU, 2))
    keep = 1.0 - ETA
    for j in range(n_jobs):
        for k in range(n_agents):
            sh, sl, ih, il = pcg_from_entropy(seeds[j], k, r)
            for t in range(TAU):
                u[t, 0], sh, sl = _double(sh, sl, ih, il)
                u[t, 1], sh, sl = _double(sh, sl, ih, il)
            q = local[k, j]
            q[:, :] = qg[j]
            c = counts[k, j]
            c[:, :] = 0
            s = states[j, k]
            pi = pi_cdf[j, k]
            for t in range(TAU):
                a = 0
                for b in range(n_actions):
                    a += pi[s, b] <= u[t, 0]
                s2 = 0
                for x in range(p_cdf.shape[2]):
                    s2 += p_cdf[s, a, x] <= u[t, 1]
                best = q[s2, 0]
                for b in range(1, n_actions):
                    if q[s2, b] > best:
                        best = q[s2, b]
                q[s, a] = keep * q[s, a] + ETA * (reward[s, a] + GAMMA * best)
                c[s, a] += 1
                s = s2
            states[j, k] = s


# ----------------------------------------------------------------- MDP, Q*, aggregation


def two_state():
    rng = np.random.default_rng(MDP_SEED)
    p, q = rng.uniform(0.4, 0.6, size=M), rng.uniform(0.4, 0.6, size=M)
    P = np.empty((2, M, 2))
    P[0, :, 0], P[0, :, 1], P[1, :, 1], P[1, :, 0] = p, 1 - p, q, 1 - q
    R = np.zeros((2, M))
    R[1] = 1.0
    return P, R


def q_star(P, R):
    """Policy iteration with exact solves of (I - gamma P_pi) V = r_pi."""
    rows = np.arange(P.shape[0])
    pol = R.argmax(axis=1)
    while True:
        v = np.linalg.solve(np.eye(P.shape[0]) - GAMMA * P[rows, pol], R[rows, pol])
        q = R + GAMMA * (P @ v)
        best = q.max(axis=1)
        better = best > q[rows, pol] + 1e-13 * max(1.0, float(np.abs(best).max()))
        if not better.any():
            return q
        pol = np.where(better, q.argmax(axis=1), pol)


def aggregate(strategy, local, counts):
    """New global tables from (K, J*S, A) local tables (all jobs at once)."""
    if strategy == "equal":
        return local.mean(axis=0)
    excess = counts - counts.max(axis=0, keepdims=True)
    w = np.exp(excess.astype(np.float64) * -np.log1p(-ETA))
    w = w / w.sum(axis=0, keepdims=True)
    return np.sum(w * local, axis=0)


def behavior_cdf(behavior, k):
    pi = np.full((2, M), 1.0 / M) if behavior == "uniform" else np.zeros((2, M))
    if behavior == "disjoint":
        pi[:, k % M] = 1.0
    cdf = np.cumsum(pi, axis=-1)
    return cdf / cdf[..., -1:]


def run(strategy, behavior, seeds, rounds, P, R, qs):
    """q_error curves (len(seeds), rounds) of one strategy x behavior for all seeds at once."""
    n = len(seeds)
    p_cdf = np.cumsum(P, axis=-1)
    p_cdf /= p_cdf[..., -1:]
    pi_cdf = np.stack([np.stack([behavior_cdf(behavior, k) for k in range(K)])] * n)
    states = np.array([[int(np.random.default_rng([s, k, 0]).choice(2, p=[0.5, 0.5]))
                        for k in range(K)] for s in seeds], dtype=np.int64)
    qg = np.zeros((n, 2, M))
    local = np.empty((K, n, 2, M))
    counts = np.empty((K, n, 2, M), dtype=np.int64)
    curves = np.empty((n, rounds))
    seeds = np.asarray(seeds, dtype=np.int64)
    for r in range(1, rounds + 1):
        local_round(qg, local, counts, states, seeds, pi_cdf, p_cdf, R, r)
        qg = aggregate(strategy, local.reshape(K, n * 2, M), counts.reshape(K, n * 2, M))
        qg = qg.reshape(n, 2, M)
        curves[:, r - 1] = np.abs(qg - qs).max(axis=(1, 2))
    return curves


def main(argv=None) -> np.ndarray:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100, help="seeds 0..N-1 (default 100)")
    ap.add_argument("--rounds", type=int, default=600, help="rounds (default 600)")
    ap.add_argument("--out", default=None, help="save the q_error curves here (.npz)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    P, R = two_state()
    qs = q_star(P, R)
    curves = np.stack([
        np.stack([run(st, be, list(range(args.seeds)), args.rounds, P, R, qs)
                  for be in BEHAVIORS])
        for st in STRATEGIES
    ])
    wall = time.perf_counter() - start
    print(f"woo_bare: {curves.shape[0] * curves.shape[1] * curves.shape[2]} jobs x "
          f"{args.rounds} rounds in {wall:.2f}s")
    if args.out:
        np.savez(args.out, q_error=curves, wall_s=wall)
    return curves


if __name__ == "__main__":
    main()
