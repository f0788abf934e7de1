"""Tests of TabularMDP validation and of every MDP builder, against hand-derived numbers."""

import warnings

import numpy as np
import pytest

from flower_qlearn.mdp import (
    MDP_NAMES,
    TabularMDP,
    from_gymnasium,
    garnet,
    make_mdp,
    perturb,
    riverswim,
    two_state,
)


def _valid_arrays():
    P = np.array(
        [
            [[0.5, 0.5], [1.0, 0.0]],
            [[0.2, 0.8], [0.0, 1.0]],
        ]
    )
    R = np.array([[0.0, 0.5], [1.0, 0.25]])
    return P, R, np.array([1.0, 0.0])


def _assert_valid(mdp: TabularMDP) -> None:
    """Re-check the invariants independently of __post_init__."""
    S, A = mdp.num_states, mdp.num_actions
    assert mdp.P.shape == (S, A, S) and mdp.R.shape == (S, A) and mdp.initial.shape == (S,)
    assert np.all(mdp.P >= 0) and np.allclose(mdp.P.sum(axis=-1), 1.0, atol=1e-12)
    assert np.all((mdp.R >= 0) & (mdp.R <= 1))
    assert np.all(mdp.initial >= 0) and np.isclose(mdp.initial.sum(), 1.0)
    assert 0 <= mdp.gamma < 1


# ---------------------------------------------------------------- TabularMDP validation


def test_valid_mdp_is_stored_as_read_only_copies():
    P, R, initial = _valid_arrays()
    mdp = TabularMDP(P, R, 0.9, initial, name="tiny")
    P[0, 0, 0] = 123.0  # mutating the caller's array must not reach the MDP
    assert mdp.P[0, 0, 0] == 0.5
    assert (mdp.num_states, mdp.num_actions) == (2, 2)
    for array in (mdp.P, mdp.R, mdp.initial):
        assert array.dtype == np.float64 and array.flags.c_contiguous
        assert not array.flags.writeable
    with pytest.raises(ValueError):
        mdp.R[0, 0] = 1.0
    assert "tiny" in repr(mdp) and "num_states=2" in repr(mdp)


def test_equality_and_with_gamma():
    P, R, initial = _valid_arrays()
    mdp = TabularMDP(P, R, 0.9, initial)
    assert mdp == TabularMDP(P.copy(), R.copy(), 0.9, initial.copy())
    other = mdp.with_gamma(0.5)
    assert other.gamma == 0.5 and other != mdp
    assert np.array_equal(other.P, mdp.P) and other.name == mdp.name
    with pytest.raises(ValueError, match="gamma"):
        mdp.with_gamma(1.0)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("P", np.ones((2, 2)), r"P must have shape \(S, A, S\)"),
        ("P", np.ones((2, 2, 3)) / 3, r"P must have shape \(S, A, S\)"),
        ("R", np.zeros((2, 3)), r"R must have shape \(S, A\) = \(2, 2\)"),
        ("initial", np.ones(3) / 3, r"initial must have shape \(S,\) = \(2,\)"),
    ],
)
def test_wrong_shapes_are_rejected(field, value, match):
    P, R, initial = _valid_arrays()
    arrays = {"P": P, "R": R, "initial": initial}
    arrays[field] = value
    with pytest.raises(ValueError, match=match):
        TabularMDP(arrays["P"], arrays["R"], 0.9, arrays["initial"])


def test_negative_probability_names_the_entry():
    P, R, initial = _valid_arrays()
    P[1, 0] = [-0.1, 1.1]  # sums to 1, so only the sign is wrong
    with pytest.raises(ValueError, match=r"P\[1, 0, 0\] = -0\.1 is negative"):
        TabularMDP(P, R, 0.9, initial)


def test_row_not_summing_to_one_names_the_row():
    P, R, initial = _valid_arrays()
    P[1, 0] = [0.17, 0.8]
    with pytest.raises(ValueError, match=r"P\[1, 0\] sums to 0\.97, expected 1 \(tol 1e-9\)"):
        TabularMDP(P, R, 0.9, initial)
    P[1, 0] = [0.2, 0.8 + 1e-12]  # within tolerance: accepted
    TabularMDP(P, R, 0.9, initial)


def test_nan_is_rejected_in_P_and_R():
    P, R, initial = _valid_arrays()
    P[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"P\[0, 1, 1\] is nan"):
        TabularMDP(P, R, 0.9, initial)
    P, R, initial = _valid_arrays()
    R[1, 0] = np.inf
    with pytest.raises(ValueError, match=r"R\[1, 0\] is inf"):
        TabularMDP(P, R, 0.9, initial)


@pytest.mark.parametrize("bad", [1.5, -0.25])
def test_reward_outside_unit_interval_names_the_entry(bad):
    P, R, initial = _valid_arrays()
    R[1, 0] = bad
    with pytest.raises(ValueError, match=rf"R\[1, 0\] = {bad} is outside \[0, 1\]"):
        TabularMDP(P, R, 0.9, initial)


@pytest.mark.parametrize("gamma", [1.0, -0.1, 1.5, float("nan")])
def test_gamma_outside_range_is_rejected(gamma):
    P, R, initial = _valid_arrays()
    with pytest.raises(ValueError, match=r"gamma = .* must satisfy 0 <= gamma < 1"):
        TabularMDP(P, R, gamma, initial)


@pytest.mark.parametrize(
    ("initial", "match"),
    [
        (np.array([1.2, -0.2]), r"initial\[1\] = -0\.2 is negative"),
        (np.array([0.5, 0.4]), r"initial sums to 0\.9, expected 1 \(tol 1e-9\)"),
        (np.array([np.nan, 1.0]), r"initial\[0\] is nan"),
    ],
)
def test_bad_initial_distribution_is_rejected(initial, match):
    P, R, _ = _valid_arrays()
    with pytest.raises(ValueError, match=match):
        TabularMDP(P, R, 0.9, initial)


# ---------------------------------------------------------------- builders


def test_two_state_matches_the_paper_construction():
    mdp = two_state(num_actions=7, gamma=0.9, seed=3)
    _assert_valid(mdp)
    assert mdp.P.shape == (2, 7, 2) and mdp.gamma == 0.9
    p, q = mdp.P[0, :, 0], mdp.P[1, :, 1]
    assert np.all((p >= 0.4) & (p <= 0.6)) and np.all((q >= 0.4) & (q <= 0.6))
    # The documented draw order: all p first, then all q, from default_rng(seed).
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(p, rng.uniform(0.4, 0.6, 7))
    np.testing.assert_array_equal(q, rng.uniform(0.4, 0.6, 7))
    np.testing.assert_array_equal(mdp.R, np.repeat([[0.0], [1.0]], 7, axis=1))
    np.testing.assert_array_equal(mdp.initial, [0.5, 0.5])
    assert two_state(7, seed=3) == two_state(7, seed=3)
    assert not np.array_equal(two_state(7, seed=4).P, mdp.P)


@pytest.mark.parametrize(("S", "A", "b"), [(10, 3, 1), (10, 3, 3), (7, 2, 7), (100, 10, 3)])
def test_garnet_respects_branching_and_is_seeded(S, A, b):
    mdp = garnet(S, A, b, gamma=0.8, seed=11)
    _assert_valid(mdp)
    assert mdp.P.shape == (S, A, S) and mdp.gamma == 0.8
    assert np.all(np.count_nonzero(mdp.P, axis=-1) == b)
    np.testing.assert_array_equal(mdp.initial, np.full(S, 1 / S))
    assert garnet(S, A, b, gamma=0.8, seed=11) == mdp
    other = garnet(S, A, b, gamma=0.8, seed=12)
    assert not np.array_equal(other.R, mdp.R)
    if b < S:
        assert not np.array_equal(other.P > 0, mdp.P > 0)


def test_garnet_successors_are_spread_over_states():
    # Successor sets are uniform subsets: over many rows every state is a successor.
    mdp = garnet(20, 10, 2, seed=0)
    assert np.all((mdp.P > 0).sum(axis=(0, 1)) > 0)


@pytest.mark.parametrize("branching", [0, 11])
def test_garnet_rejects_bad_branching(branching):
    with pytest.raises(ValueError, match="branching"):
        garnet(10, 2, branching)


def test_riverswim_structure_and_rewards():
    mdp = riverswim(num_states=6, gamma=0.95)
    _assert_valid(mdp)
    assert mdp.P.shape == (6, 2, 6) and mdp.gamma == 0.95
    expected_R = np.zeros((6, 2))
    expected_R[0, 0], expected_R[5, 1] = 0.005, 1.0
    np.testing.assert_allclose(mdp.R, expected_R)
    for s in range(6):  # left is deterministic
        assert mdp.P[s, 0, max(s - 1, 0)] == 1.0
    np.testing.assert_allclose(mdp.P[0, 1, :2], [0.4, 0.6])
    np.testing.assert_allclose(mdp.P[3, 1, 2:5], [0.05, 0.6, 0.35])
    np.testing.assert_allclose(mdp.P[5, 1, 4:], [0.4, 0.6])
    np.testing.assert_array_equal(mdp.initial, np.eye(6)[0])
    assert riverswim(12).num_states == 12
    with pytest.raises(ValueError):
        riverswim(1)


def test_perturb_level_zero_is_the_original_and_positive_levels_differ():
    base = garnet(8, 3, 2, seed=1)
    assert perturb(base, 0.0, seed=5) == base
    noisy = perturb(base, 0.3, seed=5)
    _assert_valid(noisy)
    assert noisy == perturb(base, 0.3, seed=5)
    assert noisy != perturb(base, 0.3, seed=6)
    assert not np.allclose(noisy.P, base.P) and not np.allclose(noisy.R, base.R)
    # P' = 0.7 P + 0.3 Q with Q stochastic, so P' >= 0.7 P entrywise and |R' - R| <= 0.15.
    assert np.all(noisy.P >= 0.7 * base.P - 1e-12)
    assert np.all(np.abs(noisy.R - base.R) <= 0.15 + 1e-12)
    assert noisy.gamma == base.gamma and np.array_equal(noisy.initial, base.initial)
    assert np.all(perturb(base, 1.0, seed=0).P > 0)
    for level in (-0.1, 1.5):
        with pytest.raises(ValueError, match="level"):
            perturb(base, level, seed=0)


# ---------------------------------------------------------------- gymnasium toy-text

FROZEN_LAKE_4X4_HOLES = (5, 7, 11, 12)


@pytest.mark.parametrize(
    ("name", "size"), [("frozenlake", (16, 4)), ("taxi", (500, 6)), ("cliffwalking", (48, 4))]
)
@pytest.mark.parametrize("terminal", ["absorbing", "reset"])
def test_gymnasium_sizes_and_validity(name, size, terminal):
    mdp = make_mdp(name, gamma=0.95, terminal=terminal)
    _assert_valid(mdp)
    assert (mdp.num_states, mdp.num_actions) == size
    assert mdp.R.max() <= 1.0 and mdp.R.min() >= 0.0


def test_frozenlake_terminal_modes():
    absorbing = from_gymnasium("FrozenLake-v1", gamma=0.9, terminal="absorbing")
    reset = from_gymnasium("FrozenLake-v1", gamma=0.9, terminal="reset")
    start = np.eye(16)[0]
    np.testing.assert_array_equal(absorbing.initial, start)
    # Slippery RIGHT in state 14: 1/3 to the goal 15 (reward 1, done), 1/3 stays at 14
    # (bottom wall), 1/3 up to 10. Rewards {0, 1} are unchanged by the rescaling.
    np.testing.assert_allclose(absorbing.P[14, 2, [10, 14, 15]], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(reset.P[14, 2], (np.eye(16)[10] + np.eye(16)[14] + start) / 3)
    assert absorbing.R[14, 2] == pytest.approx(1 / 3) and reset.R[14, 2] == pytest.approx(1 / 3)
    for terminal_state in (15, *FROZEN_LAKE_4X4_HOLES):
        np.testing.assert_array_equal(absorbing.P[terminal_state, :, terminal_state], 1.0)
        np.testing.assert_array_equal(absorbing.R[terminal_state], 0.0)
        np.testing.assert_array_equal(reset.P[terminal_state], np.tile(start, (4, 1)))
    # Non-slippery: RIGHT from 14 reaches the goal surely.
    exact = make_mdp("frozenlake", gamma=0.9, terminal="reset", is_slippery=False)
    np.testing.assert_array_equal(exact.P[14, 2], start)
    assert exact.R[14, 2] == 1.0
    big = make_mdp("frozenlake", gamma=0.9, map_name="8x8")
    assert (big.num_states, big.num_actions) == (64, 4)


def test_taxi_dropoff_and_rescaling():
    import gymnasium

    absorbing = make_mdp("taxi", gamma=0.9, terminal="absorbing")
    reset = make_mdp("taxi", gamma=0.9, terminal="reset")
    env = gymnasium.make("Taxi-v4")  # version of the installed Gymnasium
    encode, initial = env.unwrapped.encode, env.unwrapped.initial_state_distrib
    np.testing.assert_allclose(absorbing.initial, initial)
    # Passenger in the taxi (index 4) at location R=(0, 0), destination R: dropoff (5)
    # ends the episode with raw reward +20. Raw rewards {-10, -1, 20} and 0 -> (r + 10) / 30.
    carrying, delivered = encode(0, 0, 4, 0), encode(0, 0, 0, 0)
    assert absorbing.R[carrying, 5] == pytest.approx(1.0)
    assert absorbing.P[carrying, 5, delivered] == 1.0
    np.testing.assert_array_equal(absorbing.P[delivered, :, delivered], 1.0)
    np.testing.assert_allclose(absorbing.R[delivered], 10 / 30)
    np.testing.assert_allclose(reset.P[carrying, 5], initial)
    assert reset.R[carrying, 5] == pytest.approx(1.0)
    # Illegal pickup (-10) and a plain move (-1) elsewhere.
    empty = encode(2, 2, 0, 1)
    assert reset.R[empty, 4] == pytest.approx(0.0)
    assert reset.R[empty, 0] == pytest.approx(9 / 30)
    env.close()


def test_cliffwalking_goal_and_cliff():
    absorbing = make_mdp("cliffwalking", gamma=0.9, terminal="absorbing")
    reset = make_mdp("cliffwalking", gamma=0.9, terminal="reset")
    start, goal = 36, 47
    np.testing.assert_array_equal(absorbing.initial, np.eye(48)[start])
    # Raw rewards {-1, -100} and 0 -> (r + 100) / 100. DOWN (2) from 35 enters the goal.
    assert absorbing.P[35, 2, goal] == 1.0 and absorbing.R[35, 2] == pytest.approx(0.99)
    np.testing.assert_array_equal(absorbing.P[goal, :, goal], 1.0)
    np.testing.assert_array_equal(absorbing.R[goal], 1.0)
    np.testing.assert_array_equal(reset.P[35, 2], np.eye(48)[start])
    # RIGHT (1) from the start falls off the cliff: back to start, -100, not terminal.
    for mdp in (absorbing, reset):
        assert mdp.P[start, 1, start] == 1.0 and mdp.R[start, 1] == 0.0


def test_from_gymnasium_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"terminal must be one of \('absorbing', 'reset'\)"):
        from_gymnasium("FrozenLake-v1", terminal="truncate")
    with pytest.raises(ValueError, match="fickle_passenger"):
        from_gymnasium("Taxi", fickle_passenger=True)
    with pytest.raises(ValueError, match="unknown Gymnasium environment"):
        from_gymnasium("NoSuchEnv-v0")


def test_from_gymnasium_resolves_versions():
    import gymnasium

    # Taxi-v3 is superseded by v4 in recent Gymnasium (same dry dynamics): warn and use it.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = from_gymnasium("Taxi-v3", gamma=0.9)
    if "Taxi-v3" not in gymnasium.registry:
        assert any("not registered" in str(w.message) for w in caught)
    assert old == from_gymnasium("Taxi", gamma=0.9)


# ---------------------------------------------------------------- dispatcher


def test_make_mdp_dispatches_to_builders():
    assert make_mdp("two_state", gamma=0.9, num_actions=4, seed=2) == two_state(4, 0.9, 2)
    assert make_mdp("garnet", gamma=0.8, num_states=9, num_actions=3, branching=2, seed=1) == (
        garnet(9, 3, 2, 0.8, 1)
    )
    assert make_mdp("riverswim", gamma=0.9, num_states=8) == riverswim(8, 0.9)
    assert make_mdp("two_state", gamma=0.9).num_actions == 10
    assert make_mdp("frozenlake", gamma=0.9, num_states=16, num_actions=4).num_states == 16
    assert set(MDP_NAMES) == {"two_state", "garnet", "riverswim", "frozenlake", "taxi"} | {
        "cliffwalking", "maze"
    }
    from flower_qlearn.mazes import random_maze  # the maze builder: tests/test_mazes.py

    assert make_mdp("maze", gamma=0.9, seed=3) == random_maze(25, 0.2, 0.1, 0.9, seed=3)


def test_make_mdp_errors():
    with pytest.raises(ValueError, match="expected one of .*two_state.*cliffwalking"):
        make_mdp("chain", gamma=0.9)
    with pytest.raises(ValueError, match="num_states=500"):
        make_mdp("taxi", gamma=0.9, num_states=100)
    with pytest.raises(ValueError, match="num_actions=4"):
        make_mdp("cliffwalking", gamma=0.9, num_actions=6)
    with pytest.raises(ValueError, match="num_states=2"):
        make_mdp("two_state", gamma=0.9, num_states=3)
    with pytest.raises(ValueError, match="num_actions=2"):
        make_mdp("riverswim", gamma=0.9, num_actions=3)
    with pytest.raises(ValueError, match="garnet needs num_states and num_actions"):
        make_mdp("garnet", gamma=0.9, num_states=5)
