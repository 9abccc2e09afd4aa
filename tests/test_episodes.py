from collections import Counter

import pytest
from conftest import make_records

from fspo.data.episodes import build_episodes, default_resamples, shuffled
from fspo.data.schema import PreferenceRecord


def test_deterministic_given_seed(records):
    a, _ = build_episodes(records, n_shots=3, seed=7)
    b, _ = build_episodes(list(reversed(records)), n_shots=3, seed=7)
    c, _ = build_episodes(records, n_shots=3, seed=8)
    key = lambda eps: [(e.query.prompt, e.user_id, tuple(s.prompt for s in e.shots)) for e in eps]  # noqa: E731
    assert key(a) == key(build_episodes(records, n_shots=3, seed=7)[0])
    assert sorted(key(a)) == sorted(key(b))  # input order does not matter
    assert key(a) != key(c)


def test_shots_come_from_the_same_user_and_never_hold_the_query_question(records):
    episodes, _ = build_episodes(records, n_shots=4, seed=0)
    for ep in episodes:
        assert all(s.user_id == ep.user_id == ep.query.user_id for s in ep.shots)
        assert ep.query.prompt not in {s.prompt for s in ep.shots}
        assert len(ep.shots) == 4 and len(set(ep.shots)) == 4


def test_query_question_repeated_by_same_user_is_excluded_from_shots():
    rows = make_records(1, 5)
    dup = PreferenceRecord("u0", rows[0].prompt, "other chosen", "other rejected")
    episodes, _ = build_episodes(rows + [dup], n_shots=3, seed=0)
    for ep in episodes:
        assert ep.query.prompt not in {s.prompt for s in ep.shots}


def test_every_row_is_query_in_k_contexts_no_wasted_rows(records):
    episodes, summary = build_episodes(records, n_shots=2, seed=0)
    k = default_resamples(2)
    assert k == 6
    counts = Counter((e.user_id, e.query.prompt) for e in episodes)
    assert len(counts) == len(records) and set(counts.values()) == {k}
    assert summary.episodes == len(records) * k


def test_short_users_shrink_or_skip():
    rows = make_records(1, 6) + [r for r in make_records(2, 3) if r.user_id == "u1"]
    eps, summary = build_episodes(rows, n_shots=4, seed=0, short_users="shrink")
    assert (summary.users_full, summary.users_shrunk, summary.users_skipped) == (1, 1, 0)
    assert {len(e.shots) for e in eps if e.user_id == "u1"} == {2}
    eps, summary = build_episodes(rows, n_shots=4, seed=0, short_users="skip")
    assert (summary.users_full, summary.users_shrunk, summary.users_skipped) == (1, 0, 1)
    assert {e.user_id for e in eps} == {"u0"}
    assert "1 skipped" in " ".join(summary.lines())


def test_single_preference_user_is_skipped_even_when_shrinking():
    rows = make_records(1, 4) + [PreferenceRecord("lonely", "q", "a", "b")]
    eps, summary = build_episodes(rows, n_shots=2, seed=0)
    assert "lonely" not in {e.user_id for e in eps} and summary.users_skipped == 1


def test_zero_shot_and_validation(records):
    eps, _ = build_episodes(records, n_shots=0, resamples=1)
    assert all(e.n_shots == 0 for e in eps) and len(eps) == len(records)
    with pytest.raises(ValueError):
        build_episodes(records, short_users="drop")


def test_shuffled_is_a_seeded_permutation(records):
    eps, _ = build_episodes(records, n_shots=1, resamples=1)
    assert shuffled(eps, 1) == shuffled(eps, 1) and sorted(map(id, shuffled(eps, 1))) == sorted(map(id, eps))
