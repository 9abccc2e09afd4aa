from fspo.data.episodes import Episode
from fspo.data.schema import PreferenceRecord
from fspo.data.truncation import EpisodeTokenizer, TruncationReport


def _episode(n_shots: int, answer_words: int = 3) -> Episode:
    shots = tuple(PreferenceRecord("u", f"Question {i}?", "good " * 20, "bad " * 20) for i in range(n_shots))
    return Episode("u", shots, PreferenceRecord("u", "The query?", "yes " * answer_words, "no " * answer_words))


def test_fits_without_dropping(tiny):
    _, tok = tiny
    enc = EpisodeTokenizer(tok, 10_000)
    pair = enc.tokenize(_episode(3))
    assert pair.n_shots == 3 and pair.chosen_ids[-1] == tok.eos_token_id
    assert tok.decode(pair.prompt_ids).endswith("## Question \nThe query?\n")


def test_drops_oldest_shots_first_and_keeps_query(tiny):
    _, tok = tiny
    full = EpisodeTokenizer(tok, 10_000).tokenize(_episode(4))
    budget = full.length - 5  # a little too long: one shot must go
    report = TruncationReport()
    pair = EpisodeTokenizer(tok, budget).tokenize(_episode(4), report)
    text = tok.decode(pair.prompt_ids)
    assert pair.n_shots == 3 and pair.length <= budget
    assert "Question 0?" not in text and "Question 3?" in text  # the oldest went
    assert text.endswith("## Question \nThe query?\n") and pair.chosen_ids == full.chosen_ids
    assert report.shots_dropped == 1 and report.shots_kept == {3: 1}


def test_skips_episode_that_cannot_fit(tiny):
    _, tok = tiny
    report = TruncationReport()
    enc = EpisodeTokenizer(tok, 60)
    assert enc.tokenize(_episode(2, answer_words=40), report) is None
    assert report.skipped_too_long == 1 and report.kept == 0
    pairs, rep = enc.tokenize_all([_episode(2, answer_words=40), _episode(0, answer_words=1)])
    assert len(pairs) == 1 and rep.skipped_too_long == 1
    assert "skipped (too long even with 0 shots): 1" in rep.lines()[0]
