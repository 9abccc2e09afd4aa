"""Win-rate statistics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fspo.eval.winrate import (
    Outcome,
    _percentile,
    bootstrap_ci,
    counts,
    flip_rate,
    per_user,
    score_from_preference,
    sign_test,
    summarize,
    wilson_interval,
    win_rate,
)


def test_win_rate_counts_ties_as_half():
    assert win_rate([1, 0.5, 0, 1]) == pytest.approx(0.625)
    assert counts([1, 0.5, 0, 1]) == (2, 1, 1)
    assert math.isnan(win_rate([]))


def test_score_from_preference():
    assert [score_from_preference(p) for p in (1, 0, -1)] == [1.0, 0.5, 0.0]


def test_outcome_rejects_other_scores():
    with pytest.raises(ValueError):
        Outcome("u", 0.7)


def test_sign_test_hand_computed():
    # 8 wins, 2 losses: two-sided p = 2 * P(X >= 8 | n=10) = 2 * (45 + 10 + 1) / 1024
    assert sign_test(8, 2) == pytest.approx(112 / 1024)
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(3, 3) == pytest.approx(1.0)
    assert sign_test(0, 0) == 1.0


def test_wilson_interval_hand_computed():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4)
    assert hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0


def test_percentile_matches_numpy():
    values = sorted([0.1, 0.4, 0.35, 0.9, 0.2, 0.55])
    for q in (0.0, 0.025, 0.5, 0.975, 1.0):
        assert _percentile(values, q) == pytest.approx(float(np.percentile(values, 100 * q)))


def test_bootstrap_degenerate_and_seeded():
    wins = [Outcome("u1", 1.0), Outcome("u2", 1.0)]
    assert bootstrap_ci(wins) == (1.0, 1.0)
    one_user = [Outcome("u1", 1.0), Outcome("u1", 0.0)]
    assert bootstrap_ci(one_user, unit="user") == (0.5, 0.5)  # one cluster: a point
    lo, hi = bootstrap_ci(one_user, unit="query")
    assert lo == 0.0 and hi == 1.0
    mixed = [Outcome(f"u{i % 3}", [1.0, 0.5, 0.0][i % 3]) for i in range(30)]
    assert bootstrap_ci(mixed, seed=3) == bootstrap_ci(mixed, seed=3)


def test_user_bootstrap_two_opposite_users():
    # users' rates 1 and 0, equal sizes: resampled rates are 0, 0.5, 1 with prob 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% percentiles are 0 and 1 (a query bootstrap would be far narrower).
    outs = [Outcome("a", 1.0)] * 10 + [Outcome("b", 0.0)] * 10
    assert bootstrap_ci(outs, n_boot=4000, unit="user") == (0.0, 1.0)
    qlo, qhi = bootstrap_ci(outs, n_boot=4000, unit="query")
    assert 0.2 < qlo < 0.5 < qhi < 0.8


def test_per_user_flip_rate_and_summary():
    outs = [Outcome("a", 1.0), Outcome("a", 0.5, flipped=True), Outcome("b", 0.0), Outcome("b", 0.0)]
    pu = per_user(outs)
    assert pu["a"] == {"n": 2, "wins": 1, "ties": 1, "losses": 0, "win_rate": 0.75}
    assert pu["b"]["win_rate"] == 0.0
    assert flip_rate(outs) == 0.25
    s = summarize(outs, n_boot=200)
    assert (s["n"], s["users"], s["wins"], s["ties"], s["losses"]) == (4, 2, 1, 1, 2)
    assert s["win_rate"] == pytest.approx(1.5 / 4)
    assert s["sign_test_p"] == pytest.approx(1.0)  # 1 win vs 2 losses
    assert s["ci"][0] <= s["win_rate"] <= s["ci"][1]
