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


def test_preference_view_moves_the_completions_common_start_into_the_prompt():
    from fspo.data.truncation import TokenizedPair

    pair = TokenizedPair((1, 2), (7, 8, 9, 0), (7, 8, 5, 6, 0), 4, "u")
    view = pair.preference_view()
    assert (view.prompt_ids, view.chosen_ids, view.rejected_ids) == ((1, 2, 7, 8), (9, 0), (5, 6, 0))
    assert view.preference_view() == view  # idempotent
    same = TokenizedPair((1,), (7, 0), (7, 0), 0, "u").preference_view()
    assert same.chosen_ids == (0,) and same.rejected_ids == (0,)  # never empty


def test_mean_margin_ignores_the_shared_header(tiny):
    """Under mean reduction the layout's header (identical on both sides) must not move the margin:
    otherwise IPO can fake a margin by changing the header's log-probs on pairs of unequal length."""
    import torch

    from fspo.train.batching import collate_pairs, completion_logps, pair_logps, split_pair_logps

    model, tok = tiny
    enc = EpisodeTokenizer(tok, 512)
    query = PreferenceRecord("u", "Review the film.", "Short and great.", "A long, dull and tedious review of it.")
    pair = enc.tokenize(Episode("u", (), query))
    assert pair.preference_view().prompt_ids != pair.prompt_ids  # the header moved into the prompt
    pad = tok.eos_token_id

    def every_completion_token(p):
        return split_pair_logps(completion_logps(model, collate_pairs([p], pad), "mean"))

    with torch.no_grad():
        for shared_prefix in (False, True):
            scored = pair_logps(model, [pair], pad, "mean", "cpu", shared_prefix)
            only_differing = every_completion_token(pair.preference_view())
            assert torch.allclose(scored[0], only_differing[0]) and torch.allclose(scored[1], only_differing[1])
        assert not torch.allclose(scored[0], every_completion_token(pair)[0])


def _bos_tokenizer():
    """The tiny tokenizer made to add a BOS token in front of plain text, as Llama 3's does."""
    from tokenizers.processors import TemplateProcessing

    from fspo.models.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.bos_token = "<|endoftext|>"
    bos = tok.convert_tokens_to_ids("<|endoftext|>")
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)]
    )
    assert tok("a b")["input_ids"][0] == bos  # the tokenizer really adds BOS
    return tok, bos


def test_training_eval_and_serving_prompts_share_ids_with_a_bos_tokenizer(tiny):
    """One shot-fitting function and one encode policy: a served prompt's ids are a prefix of the
    training ids of the same episode (one BOS, same shots kept), with and without a chat template."""
    from fspo.data.runs import ResolvedModel
    from fspo.data.truncation import encode_prompt, fit_generation_prompt
    from fspo.serve.personalize import Engine

    tok, bos = _bos_tokenizer()
    for chat in (False, True):
        ep = _episode(6)
        enc = EpisodeTokenizer(tok, 700, chat_template=chat)
        pair = enc.tokenize(ep)
        assert pair is not None and 0 < pair.n_shots < 6  # the budget forced shots out
        trained = list(pair.prompt_ids + pair.chosen_ids)
        assert trained[0] == bos and trained[1] != bos
        budget = 700 - len(pair.chosen_ids)
        engine = Engine(tiny[0], tok, ResolvedModel("tiny", n_shots=6, max_length=700, chat_template=chat))
        served = engine.render(list(ep.shots), ep.query.prompt, max_new_tokens=len(pair.chosen_ids))
        evaluated = fit_generation_prompt(tok, ep.shots, ep.query.prompt, "fspo", budget, chat)
        assert served.ids == list(evaluated.ids) == trained[: len(served.ids)]
        assert served.shots_used == evaluated.n_shots == pair.n_shots
        assert list(encode_prompt(tok, served.text)) == served.ids


def test_fit_shots_keeps_the_newest_shots_and_never_cuts_the_question(tiny):
    from fspo.data.truncation import fit_shots

    tok = tiny[1]
    render = lambda kept: " ".join(kept) + " | the question"  # noqa: E731
    got = fit_shots(tok, ["old " * 50, "mid " * 50, "new"], render, 40)
    assert got is not None and got.n_shots == 1 and got.text.startswith("new")
    assert fit_shots(tok, ["a"], lambda kept: "q " * 100, 10) is None
