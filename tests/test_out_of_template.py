"""The out-of-template users: hand-written tastes, each answered from that user's own shots only."""

from __future__ import annotations

from fspo.eval import out_of_template as oot
from fspo.eval.generate import Generation, ModelPool, open_cache


def test_every_question_gets_its_own_users_four_shots():
    eps = oot.episodes()
    assert len(eps) == 10 and len({e.user_id for e in eps}) == 5
    for ep in eps:
        assert len(ep.shots) == 4 and all(s.user_id == ep.user_id for s in ep.shots)
        assert ep.query.prompt not in {s.prompt for s in ep.shots}


def test_check_flags_what_a_person_would_not_accept(tmp_path, monkeypatch):
    """Fluent on-topic answers count as acceptable; a loop and another item's review do not."""

    def fake_generate(method, layout, spec, episodes, *args, **kwargs):
        item = lambda q: q.removeprefix("Write a review of ").rstrip(".")  # noqa: E731
        answers = {
            "good": lambda q: f"I tried {item(q)} last month; it has one clear strength and one weakness.",
            "loop": lambda q: "the quality of the quality of the quality of the quality of the quality of it",
            "other": lambda q: "The movie Inception is awful and disappointing.",
        }[method]
        gens = [Generation(method, e.user_id, e.query.prompt, answers(e.query.prompt), None, 4, "") for e in episodes]
        return gens, {}

    monkeypatch.setattr(oot, "generate_method", fake_generate)
    monkeypatch.setattr(oot, "embedding_similarity", lambda pairs: None)
    rows = [oot.Row(name, "tiny", "fspo") for name in ("good", "loop", "other")]
    result = oot.check(rows, ModelPool(), open_cache(tmp_path))
    good, loop, other = (result["rows"][n] for n in ("good", "loop", "other"))
    assert good["acceptable"] == 1.0 and good["on_topic"] == 1.0 and good["degenerate"] == 0.0
    assert loop["degenerate"] == 1.0 and loop["acceptable"] == 0.0
    # "Inception" is another item: off topic, except for the one question about Inception itself (a shot here)
    assert other["on_topic"] == 0.0
    text = "\n".join(oot.report_lines(result))
    assert "| good | 100% | 0% | 100% |" in text and "Samples, loop:" in text and "degenerate" in text
