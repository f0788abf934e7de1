"""numpy's ``SeedSequence -> PCG64 -> Generator.random`` in compiled code, bit for bit.

``np.random.default_rng([seed, agent, round])`` is every agent's source of randomness
(:func:`flower_qlearn.agent.round_rng`). Building it in Python costs ~10 us, which dominates a
batched round of a small MDP; these ``@njit`` functions reproduce it exactly on plain ``uint64``
state so a compiled loop can seed and draw without leaving machine code:

- :func:`seed_pcg64` = ``SeedSequence(entropy).generate_state(4, uint64)`` fed to PCG64's seeding
  (``pcg64_set_seed``: ``state = 0; inc = (initseq << 1) | 1; step; state += initstate; step``);
- :func:`next_double` = ``Generator.random()``: one PCG64 ``next64`` (step, then the XSL-RR
  output), ``(x >> 11) * 2**-53``.

The 128-bit state is two ``uint64`` words ``(high, low)``; 128-bit products are built from
32-bit halves. Entropy is a 1-D array of non-negative integers, each below ``2**32`` (numpy
splits larger ones into 32-bit words; that case is not supported here and the Python wrapper
:func:`generator_state` refuses it). The constants are those of numpy's ``bit_generator.pyx``
and ``pcg64.h``.
"""

from __future__ import annotations

import numpy as np

from flower_qlearn.jit import njit

__all__ = ["fill_random", "generator_state", "next_double", "seed_pcg64"]

# SeedSequence (numpy/random/bit_generator.pyx), uint32 arithmetic.
_INIT_A = np.uint32(0x43B0D7E5)
_MULT_A = np.uint32(0x931E8875)
_INIT_B = np.uint32(0x8B51F9DD)
_MULT_B = np.uint32(0x58F38DED)
_MIX_MULT_L = np.uint32(0xCA01F9DD)
_MIX_MULT_R = np.uint32(0x4973F715)
_XSHIFT = np.uint32(16)
_POOL_SIZE = 4

# PCG64 (numpy/random/src/pcg64/pcg64.h): the 128-bit multiplier as (high, low).
_MUL_HI = np.uint64(0x2360ED051FC65DA4)
_MUL_LO = np.uint64(0x4385DF649FCCF645)
_MASK32 = np.uint64(0xFFFFFFFF)
_U32 = np.uint64(32)
_ONE = np.uint64(1)
_TO_DOUBLE = 1.0 / 9007199254740992.0  # 2**-53


@njit(cache=True)
def _hashmix(value, hash_const):
    """One ``hashmix`` of SeedSequence; returns ``(mixed, new_hash_const)`` (uint32)."""
    value = np.uint32(value ^ hash_const)
    hash_const = np.uint32(hash_const * _MULT_A)
    value = np.uint32(value * hash_const)
    value = np.uint32(value ^ (value >> _XSHIFT))
    return value, hash_const


@njit(cache=True)
def _mix(x, y):
    result = np.uint32(np.uint32(_MIX_MULT_L * x) - np.uint32(_MIX_MULT_R * y))
    return np.uint32(result ^ (result >> _XSHIFT))


@njit(cache=True)
def _pool(entropy):
    """SeedSequence's entropy pool (``mix_entropy``) of 32-bit entropy words."""
    mixer = np.zeros(_POOL_SIZE, dtype=np.uint32)
    hash_const = _INIT_A
    n = entropy.shape[0]
    for i in range(_POOL_SIZE):
        word = np.uint32(entropy[i]) if i < n else np.uint32(0)
        mixer[i], hash_const = _hashmix(word, hash_const)
    for i_src in range(_POOL_SIZE):
        for i_dst in range(_POOL_SIZE):
            if i_src != i_dst:
                mixed, hash_const = _hashmix(mixer[i_src], hash_const)
                mixer[i_dst] = _mix(mixer[i_dst], mixed)
    for i_src in range(_POOL_SIZE, n):
        for i_dst in range(_POOL_SIZE):
            mixed, hash_const = _hashmix(np.uint32(entropy[i_src]), hash_const)
            mixer[i_dst] = _mix(mixer[i_dst], mixed)
    return mixer


@njit(cache=True)
def _generate_state64(pool, n_words64):
    """``SeedSequence.generate_state(n_words64, np.uint64)`` from the pool."""
    out = np.empty(n_words64, dtype=np.uint64)
    hash_const = _INIT_B
    for i in range(2 * n_words64):
        value = np.uint32(pool[i % _POOL_SIZE] ^ hash_const)
        hash_const = np.uint32(hash_const * _MULT_B)
        value = np.uint32(value * hash_const)
        value = np.uint32(value ^ (value >> _XSHIFT))
        if i % 2 == 0:  # little endian: the even uint32 word is the low half
            out[i // 2] = np.uint64(value)
        else:
            out[i // 2] |= np.uint64(value) << _U32
    return out


@njit(cache=True)
def _mul64(a, b):
    """Full 64 x 64 -> 128-bit product ``(high, low)`` of two uint64."""
    a_lo, a_hi = a & _MASK32, a >> _U32
    b_lo, b_hi = b & _MASK32, b >> _U32
    lo_lo = a_lo * b_lo
    hi_lo = a_hi * b_lo
    lo_hi = a_lo * b_hi
    hi_hi = a_hi * b_hi
    cross = (lo_lo >> _U32) + (hi_lo & _MASK32) + lo_hi
    high = hi_hi + (hi_lo >> _U32) + (cross >> _U32)
    low = (cross << _U32) | (lo_lo & _MASK32)
    return high, low


@njit(cache=True)
def _step(state, inc):
    """PCG64's LCG step in place: ``state = state * MULT + inc`` (mod 2**128)."""
    high, low = _mul64(state[1], _MUL_LO)
    high = high + state[0] * _MUL_LO + state[1] * _MUL_HI
    low2 = low + inc[1]
    carry = _ONE if low2 < low else np.uint64(0)
    state[0] = high + inc[0] + carry
    state[1] = low2


@njit(cache=True)
def seed_pcg64(entropy, state, inc):
    """Seed PCG64 as ``np.random.PCG64(np.random.SeedSequence(entropy))`` does, in place.

    Parameters
    ----------
    entropy : np.ndarray
        1-D integer array, every entry in ``[0, 2**32)`` (e.g. ``[seed, agent, round]``).
    state, inc : np.ndarray
        ``(2,)`` uint64 arrays ``(high, low)``, overwritten with PCG64's state and increment.
    """
    words = _generate_state64(_pool(entropy), 4)
    inc[0] = (words[2] << _ONE) | (words[3] >> np.uint64(63))
    inc[1] = (words[3] << _ONE) | _ONE
    state[0] = np.uint64(0)
    state[1] = np.uint64(0)
    _step(state, inc)
    low = state[1] + words[1]
    carry = _ONE if low < state[1] else np.uint64(0)
    state[0] = state[0] + words[0] + carry
    state[1] = low
    _step(state, inc)


@njit(cache=True)
def next_double(state, inc):
    """``Generator.random()``: the next double in ``[0, 1)`` of a PCG64 state, in place."""
    _step(state, inc)
    high, low = state[0], state[1]
    rot = high >> np.uint64(58)
    x = high ^ low
    out = (x >> rot) | (x << ((np.uint64(64) - rot) & np.uint64(63)))
    return np.float64(out >> np.uint64(11)) * _TO_DOUBLE


@njit(cache=True)
def fill_random(state, inc, out):
    """Fill ``out`` (any shape, C order) with the next doubles, as ``Generator.random(shape)``."""
    flat = out.reshape(-1)
    for i in range(flat.shape[0]):
        flat[i] = next_double(state, inc)


def generator_state(entropy) -> tuple[np.ndarray, np.ndarray]:
    """``(state, inc)`` of ``np.random.default_rng(entropy)``'s PCG64, computed by the port.

    ``entropy`` is a sequence of ints in ``[0, 2**32)``. For tests and for seeding from Python.
    """
    words = np.asarray(list(entropy), dtype=np.int64)
    if words.ndim != 1 or np.any(words < 0) or np.any(words >= 2**32):
        raise ValueError("entropy must be a 1-D sequence of integers in [0, 2**32)")
    state = np.zeros(2, dtype=np.uint64)
    inc = np.zeros(2, dtype=np.uint64)
    seed_pcg64(words, state, inc)
    return state, inc
