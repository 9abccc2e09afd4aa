"""``fspo from-texts``: preference pairs "in this person's voice" from what people wrote.

Many people have no labeled pairs but have written text: replies, posts, emails. Given rows
``(person_id, prompt, text)``, every text becomes one preference of its author: ``chosen`` is the
author's own text, ``rejected`` another person's text for the same prompt, else for the most similar
prompt (MiniLM cosine, or word overlap), or, with ``rejected="base"``, the base model's zero-shot
answer. The output is an ordinary dataset folder (``prefs.jsonl`` + ``users.jsonl``) that
``fspo validate``, ``fspo train`` and ``fspo eval`` read unchanged (docs/data.md, "From a person's
own writing").

Guarantees (tested in tests/test_from_texts.py):
- a record's ``user_id`` is always the author of its ``chosen`` text, so a person's few-shot context
  only ever shows that person's own texts as preferred;
- whole persons are held out (``split: test`` on the user and all their rows); a training record's
  rejected text comes from a training row, so nothing a held-out person wrote (nor any row of a
  held-out prompt) reaches training, not even as the dispreferred side;
- the pairs and splits depend only on the input rows, the options and the seed, not on the rows' order
  (records are written by person, in input order, with the input line in ``meta.line``);
- a bad input row is one ``FILE:LINE: field: message`` error before anything is written.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from fspo.config import Config, opt
from fspo.data.schema import PreferenceRecord, UserProfile, canonical_text, normalize_id, same_answer
from fspo.errors import DataError, FspoError
from fspo.models import device_option, dtype_option

REJECTED_SOURCES = ("others", "base")
SIMILARITIES = ("auto", "embed", "words")
PERSON_KEYS = ("person_id", "user_id")  # user_id: the same column as fspo's own files name it


@dataclass
class FromTextsConfig(Config):
    texts: str = opt(
        "",
        "input rows person_id, prompt, text (+ optional description): .jsonl, .json, .csv, .parquet or a "
        "datasets folder",
        required=True,
    )
    out: str = opt("", "output dataset folder: prefs.jsonl, users.jsonl, from_texts.json", required=True)
    rejected: str = opt(
        "others",
        "others: another person's text for the same prompt, else for the most similar prompt; base: the base "
        "model's zero-shot answer to the prompt (generated locally, slow on a CPU)",
        choices=REJECTED_SOURCES,
    )
    pairs_per_text: int = opt(1, "others: pairs per text, each against a different person's text", ge=1, le=16)
    similarity: str = opt(
        "auto",
        "how the most similar prompt is found: embed (bundled MiniLM), words (word overlap), auto (MiniLM when "
        "installed, else words)",
        choices=SIMILARITIES,
    )
    heldout_persons: float = opt(0.25, "fraction of persons held out: all their rows are split=test", ge=0.0, lt=1.0)
    heldout_prompts: float = opt(
        0.0, "fraction of prompts held out for the training persons (those rows are split=test)", ge=0.0, lt=1.0
    )
    min_texts: int = opt(2, "persons with fewer texts are skipped (counted and named in the output)", ge=1)
    attributes: bool = opt(
        True,
        "write each person's measured attributes (majority of their texts) to users.jsonl, for the attribute judge",
    )
    seed: int = opt(0, "seed of the split and of every choice of rejected text", ge=0)
    base_model: str = opt("smollm2", "rejected=base: the model that answers (smollm2 | tiny | folder)")
    max_new_tokens: int = opt(128, "rejected=base: answer length in tokens", ge=1)
    max_length: int = opt(1024, "rejected=base: tokens per sequence, prompt + answer", ge=16)
    batch_size: int = opt(8, "rejected=base: prompts per generation batch", ge=1)
    device: str = device_option("rejected=base: ")
    dtype: str = dtype_option("rejected=base: ")
    progress: bool = opt(True, "progress output")


@dataclass(frozen=True)
class Text:
    """One input row: ``person`` wrote ``text`` in answer to ``prompt``."""

    person: str
    prompt: str
    text: str
    line: int | None
    description: str = ""

    @property
    def key(self) -> str:
        """The prompt as a reader sees it: rows whose prompts differ only in spacing share one."""
        return canonical_text(self.prompt)


# ----------------------------------------------------------------------------------------- reading


def _string(obj: dict, key: str, path: str, line: int | None, *, required: bool = True) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise DataError(path, line, key, "missing required field")
        return ""
    if not isinstance(value, str):
        raise DataError(path, line, key, f"expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(path, line, key, "contains an unpaired UTF-16 surrogate (invalid Unicode)") from None
    if required and not canonical_text(value):
        raise DataError(path, line, key, "is empty (or only whitespace and invisible characters)")
    return value


def parse_text_row(obj, path: str = "<memory>", line: int | None = None) -> Text:
    """One ``(person_id, prompt, text)`` row (``user_id`` is read as ``person_id``), or DataError."""
    if not isinstance(obj, dict):
        raise DataError(
            path, line, "<row>", f"expected an object with person_id, prompt, text; got {type(obj).__name__}"
        )
    key = next((k for k in PERSON_KEYS if obj.get(k) is not None), PERSON_KEYS[0])
    person = normalize_id(obj.get(key), path, line, key)
    prompt = _string(obj, "prompt", path, line)
    text = _string(obj, "text", path, line)
    description = _string(obj, "description", path, line, required=False)
    return Text(person, prompt, text, line, description)


def read_texts(path: str) -> list[Text]:
    """Every row of ``path`` (JSONL, JSON, CSV, Parquet or a datasets folder); the first bad row
    raises its one-line :class:`DataError`."""
    from fspo.config import shipped_path
    from fspo.data.io import iter_rows

    path = str(shipped_path(path))
    rows = []
    for line, obj in iter_rows(path):
        if isinstance(obj, DataError):
            raise obj
        rows.append(parse_text_row(obj, path, line))
    if not rows:
        raise DataError(path, None, "<file>", "contains no texts")
    return rows


# -------------------------------------------------------------------------------------- similarity

_WORD = re.compile(r"\w+")
_STOP_WORDS = (
    "a an and are as at be but by can could do does for from how i in is it me my of on or should so that the "
    "this to was what when where which who why will with would you your"
)
_STOP = frozenset(_STOP_WORDS.split())


def _words(text: str) -> set[str]:
    words = {w.lower() for w in _WORD.findall(text)}
    return (words - _STOP) or words


class PromptSimilarity:
    """Similarity between the distinct prompts, computed once on first use: MiniLM cosine
    (``embed``), word-set overlap without stop words (``words``), or ``auto`` (MiniLM when it can be
    loaded, else words, and ``method`` says which)."""

    def __init__(self, keys: Sequence[str], method: str = "auto") -> None:
        self.keys = list(keys)
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.method = method
        self._vectors = None
        self._words: list[set[str]] | None = None
        self.note = ""

    def _prepare(self) -> None:
        if self._vectors is not None or self._words is not None:
            return
        if self.method in ("auto", "embed"):
            try:
                from fspo.models.embeddings import embed

                self._vectors = embed(self.keys)
                self.method = "embed"
                return
            except (ImportError, OSError, FspoError) as exc:
                if self.method == "embed":
                    raise FspoError(f"--similarity embed: cannot load the MiniLM model ({exc})") from None
                self.note = f"MiniLM unavailable ({type(exc).__name__}); similar prompts found by word overlap"
        self.method = "words"
        self._words = [_words(k) for k in self.keys]

    def ranked(self, key: str) -> Iterator[tuple[str, float]]:
        """The other prompts, most similar first (ties: prompt text order), with their scores; lazy,
        so a caller that stops at the first usable prompt costs one sort, not a Python loop over all."""
        import numpy as np

        self._prepare()
        i = self.index[key]
        if self._vectors is not None:
            scores = (self._vectors @ self._vectors[i]).double().numpy()
        else:
            mine = self._words[i]
            scores = np.array([len(mine & w) / max(1, len(mine | w)) for w in self._words])
        # self.keys is sorted, so the index breaks ties in text order
        for j in np.lexsort((np.arange(len(self.keys)), -np.round(scores, 6))):
            if j != i:
                yield self.keys[j], float(scores[j])


# ----------------------------------------------------------------------------------------- pairing


@dataclass
class Conversion:
    """What :func:`convert` made: the records, the users, and the counts it prints."""

    records: list[PreferenceRecord]
    users: list[UserProfile]
    stats: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def measured_attributes(texts: Sequence[str]) -> dict[str, str]:
    """Per measurable axis (fspo.data.attributes), the value at least two thirds of ``texts`` express."""
    from fspo.data.attributes import AXES, measure

    out = {}
    for axis in AXES:
        votes = Counter(v for v in (measure(t).value(axis) for t in texts) if v is not None)
        if votes:
            (value, n), *_ = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))
            if 3 * n >= 2 * len(texts):
                out[axis] = value
    return out


def _rng(seed: int, *parts: str) -> random.Random:
    return random.Random("fspo-from-texts:" + json.dumps([seed, *parts], ensure_ascii=False))


def _pick_others(
    row: Text, k: int, pool_by_key: dict[str, list[Text]], similarity: PromptSimilarity, seed: int
) -> list[tuple[Text, str, float | None]]:
    """Up to ``k`` rejected texts by distinct other persons: same prompt first, then the most
    similar prompts; a seeded choice among each prompt's candidates."""
    chosen: list[tuple[Text, str, float | None]] = []
    used = {row.person}

    def take(key: str, kind: str, score: float | None) -> None:
        cands = sorted(
            (t for t in pool_by_key.get(key, ()) if t.person not in used and not same_answer(t.text, row.text)),
            key=lambda t: (t.person, t.text),
        )
        rng = _rng(seed, row.person, row.key, row.text, key)
        rng.shuffle(cands)
        for t in cands:
            if len(chosen) >= k:
                return
            if t.person not in used:
                used.add(t.person)
                chosen.append((t, kind, score))

    take(row.key, "same_prompt", None)
    if len(chosen) < k:
        for key, score in similarity.ranked(row.key):
            if key in pool_by_key:
                take(key, "similar_prompt", score)
            if len(chosen) >= k:
                break
    return chosen


def split_rows(texts: Sequence[Text], cfg: FromTextsConfig) -> tuple[list[str], set[str]]:
    """(held-out persons, held-out prompt keys): seeded, independent of row order."""
    from fspo.data.splits import split_questions, split_users

    persons = sorted({t.person for t in texts})
    _, held_persons = split_users(persons, cfg.heldout_persons, cfg.seed)
    held_prompts: set[str] = set()
    if cfg.heldout_prompts > 0:
        _, held_prompts = split_questions({t.key for t in texts}, cfg.heldout_prompts, cfg.seed)
    return held_persons, held_prompts


def convert(
    texts: Sequence[Text],
    cfg: FromTextsConfig,
    base_answers: Callable[[list[str]], list[str]] | None = None,
) -> Conversion:
    """Pair every text with a rejected one (see the module doc). ``base_answers`` answers a list of
    prompts (``rejected="base"``; built from ``cfg.base_model`` when None)."""
    notes: list[str] = []
    by_person: dict[str, list[Text]] = {}
    for t in texts:
        by_person.setdefault(t.person, []).append(t)
    few = sorted(p for p, rows in by_person.items() if len(rows) < cfg.min_texts)
    if few:
        shown = ", ".join(few[:10]) + (f" and {len(few) - 10} more" if len(few) > 10 else "")
        notes.append(f"skipped {len(few)} persons with fewer than {cfg.min_texts} texts: {shown}")
    kept = [t for t in texts if t.person not in set(few)]
    persons = sorted({t.person for t in kept})
    if len(persons) < 2:
        raise FspoError(
            f"{cfg.texts}: {len(persons)} persons with at least {cfg.min_texts} texts; pairs need at least 2 persons "
            "(a rejected text is another person's)"
        )
    held_persons, held_prompts = split_rows(kept, cfg)
    held = set(held_persons)

    def split_of(t: Text) -> str:
        return "test" if t.person in held or t.key in held_prompts else "train"

    train_persons = [p for p in persons if p not in held]
    if not any(split_of(t) == "train" for t in kept):
        raise FspoError("no training rows left: lower --heldout-persons / --heldout-prompts")
    # Training records take their rejected text from training rows only; test records from any row.
    pools: dict[str, dict[str, list[Text]]] = {"train": {}, "test": {}}
    for t in kept:
        pools["test"].setdefault(t.key, []).append(t)
        if split_of(t) == "train":
            pools["train"].setdefault(t.key, []).append(t)
    similarity = PromptSimilarity(sorted({t.key for t in kept}), cfg.similarity)

    base: dict[str, str] = {}
    if cfg.rejected == "base":
        keys = sorted({t.key for t in kept})
        prompt_of = {t.key: t.prompt for t in kept}
        answer = base_answers or _base_answerer(cfg)
        base = dict(zip(keys, answer([prompt_of[k] for k in keys])))

    records: list[PreferenceRecord] = []
    kinds: Counter = Counter()
    unpaired = 0
    order = sorted(kept, key=lambda t: (t.person, t.line if t.line is not None else 0, t.key, t.text))
    for t in order:
        split = split_of(t)
        meta_base = {"source": "from-texts", "line": t.line}
        if cfg.rejected == "base":
            answer = base.get(t.key, "")
            if canonical_text(answer) and not same_answer(answer, t.text):
                kinds["base"] += 1
                meta = meta_base | {"rejected": "base", "rejected_model": cfg.base_model}
                records.append(PreferenceRecord(t.person, t.prompt, t.text, answer, split, meta))
                continue
            kinds["base_fallback"] += 1  # an empty or identical base answer: another person's text instead
        picks = _pick_others(t, 1 if cfg.rejected == "base" else cfg.pairs_per_text, pools[split], similarity, cfg.seed)
        if not picks:
            unpaired += 1
            continue
        for other, kind, score in picks:
            kinds[kind] += 1
            meta = meta_base | {"rejected": kind, "rejected_person": other.person}
            if kind == "similar_prompt":
                meta |= {
                    "rejected_prompt": other.prompt,
                    "prompt_similarity": round(score, 4),
                    "similarity": similarity.method,
                }
            records.append(PreferenceRecord(t.person, t.prompt, t.text, other.text, split, meta))
    if similarity.note:
        notes.append(similarity.note)
    if unpaired:
        notes.append(f"{unpaired} texts had no other person's text to contrast with and were left out")
    if kinds["base_fallback"]:
        notes.append(
            f"{kinds['base_fallback']} base answers were empty or equal to the text: another person's text used"
        )

    users = []
    for p in persons:
        rows = by_person[p]
        description = next((t.description for t in rows if t.description.strip()), "")
        attributes = measured_attributes([t.text for t in rows]) if cfg.attributes else {}
        users.append(UserProfile(p, description, attributes, "test" if p in held else "train"))
    stats = {
        "texts": len(texts),
        "persons": len(by_person),
        "skipped_persons": few,
        "pairs": len(records),
        "train_pairs": sum(r.split == "train" for r in records),
        "test_pairs": sum(r.split == "test" for r in records),
        "rejected": {k: v for k, v in sorted(kinds.items()) if v},
        "unpaired_texts": unpaired,
        "train_persons": train_persons,
        "heldout_persons": held_persons,
        "heldout_prompts": sorted(held_prompts),
        "similarity": similarity.method if kinds["similar_prompt"] else None,
    }
    return Conversion(records, users, stats, notes)


def _base_answerer(cfg: FromTextsConfig) -> Callable[[list[str]], list[str]]:
    """Zero-shot answers of ``cfg.base_model``, prompted exactly as eval's ``base`` row prompts."""

    def answer(prompts: list[str]) -> list[str]:
        from fspo.data.prompts import ZEROSHOT, parse_generation
        from fspo.data.truncation import fit_generation_prompt
        from fspo.llm.base import GenerationParams
        from fspo.llm.local import LocalBackend

        backend = LocalBackend.from_spec(
            cfg.base_model, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size, progress=cfg.progress
        )
        texts = []
        for p in prompts:
            fitted = fit_generation_prompt(backend.tokenizer, [], p, ZEROSHOT, cfg.max_length - cfg.max_new_tokens)
            if fitted is None:
                raise FspoError(f"a prompt does not fit --max-length {cfg.max_length}: {p[:60]!r}")
            texts.append(fitted.text)
        params = GenerationParams(max_new_tokens=cfg.max_new_tokens, temperature=0.0, seed=cfg.seed)
        return [parse_generation(raw, ZEROSHOT)[0] for raw in backend.generate(texts, params)]

    return answer


# ----------------------------------------------------------------------------------------- command


def run_from_texts(cfg: FromTextsConfig, base_answers: Callable[[list[str]], list[str]] | None = None) -> Conversion:
    """Read, convert and write ``cfg.out`` (locked; every file atomic; nothing written on an error)."""
    from fspo.data.io import check_output_folder, lock_output, write_jsonl, write_text_atomic
    from fspo.data.schema import parse_preference, parse_user

    check_output_folder(cfg.out)
    texts = read_texts(cfg.texts)
    conv = convert(texts, cfg, base_answers)
    for n, rec in enumerate(conv.records, start=1):  # what load_data will check, before writing
        parse_preference(rec.to_dict(), f"{cfg.out}/prefs.jsonl", n)
    for n, user in enumerate(conv.users, start=1):
        parse_user(user.to_dict(), f"{cfg.out}/users.jsonl", n)
    summary = {"config": {k: v for k, v in cfg.__dict__.items()}, **conv.stats, "notes": conv.notes}
    with lock_output(cfg.out) as out:
        write_jsonl(out / "users.jsonl", conv.users)
        write_jsonl(out / "prefs.jsonl", conv.records)
        write_text_atomic(out / "from_texts.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return conv
