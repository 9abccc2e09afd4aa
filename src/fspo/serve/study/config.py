"""The study config file (YAML): what participants label and what they compare.

Validated up front with errors naming the file and field, because a typo found after 40
participants have joined cannot be fixed without invalidating their answers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fspo.errors import DataError, FspoError


@dataclass(frozen=True)
class LabelPair:
    """A question and two candidate answers; the participant picks the one they prefer."""

    question: str
    answers: tuple[str, str]


@dataclass(frozen=True)
class CompareItem:
    """A question to answer twice, personalized and baseline; answers may be given pre-generated."""

    question: str
    personalized: str | None = None
    baseline: str | None = None


@dataclass(frozen=True)
class StudyConfig:
    title: str
    label_pairs: tuple[LabelPair, ...]
    compare: tuple[CompareItem, ...]
    labels_per_participant: int
    intro: str = ""
    seed: int = 0
    model: str | None = None
    baseline_model: str | None = None
    max_new_tokens: int = 128
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def needs_model(self) -> bool:
        return any(c.personalized is None or c.baseline is None for c in self.compare)


def _text(obj: dict, key: str, path: str, where: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise DataError(path, None, f"{where}{key}", "missing required field")
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, None, f"{where}{key}", "must be a non-empty string")
    return value.strip()


def parse_config(obj: Any, path: str = "<memory>") -> StudyConfig:
    if not isinstance(obj, dict):
        raise DataError(path, None, "<root>", "expected a mapping")
    title = _text(obj, "title", path, "")
    pairs_raw = obj.get("label_pairs")
    if not isinstance(pairs_raw, list) or not pairs_raw:
        raise DataError(path, None, "label_pairs", "must be a non-empty list")
    pairs = []
    for i, p in enumerate(pairs_raw):
        where = f"label_pairs[{i}]."
        if not isinstance(p, dict):
            raise DataError(path, None, where[:-1], "expected a mapping with question and answers")
        answers = p.get("answers")
        if (
            not isinstance(answers, list)
            or len(answers) != 2
            or not all(isinstance(a, str) and a.strip() for a in answers)
        ):
            raise DataError(path, None, f"{where}answers", "must be a list of exactly two non-empty strings")
        if answers[0].strip() == answers[1].strip():
            raise DataError(path, None, f"{where}answers", "the two answers are identical")
        pairs.append(LabelPair(_text(p, "question", path, where), (answers[0].strip(), answers[1].strip())))
    compare_raw = obj.get("compare")
    if not isinstance(compare_raw, list) or not compare_raw:
        raise DataError(path, None, "compare", "must be a non-empty list")
    compare = []
    for i, c in enumerate(compare_raw):
        where = f"compare[{i}]."
        if isinstance(c, str):
            c = {"question": c}
        if not isinstance(c, dict):
            raise DataError(path, None, where[:-1], "expected a question string or a mapping")
        compare.append(
            CompareItem(
                _text(c, "question", path, where),
                _text(c, "personalized", path, where, required=False),
                _text(c, "baseline", path, where, required=False),
            )
        )
    k = obj.get("labels_per_participant", len(pairs))
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(pairs):
        raise DataError(path, None, "labels_per_participant", f"must be an integer from 1 to {len(pairs)}")
    max_new = obj.get("max_new_tokens", 128)
    if not isinstance(max_new, int) or not 1 <= max_new <= 2048:
        raise DataError(path, None, "max_new_tokens", "must be an integer from 1 to 2048")
    seed = obj.get("seed", 0)
    if not isinstance(seed, int):
        raise DataError(path, None, "seed", "must be an integer")
    known = {
        "title",
        "intro",
        "label_pairs",
        "compare",
        "labels_per_participant",
        "max_new_tokens",
        "seed",
        "model",
        "baseline_model",
    }
    unknown = sorted(set(obj) - known)
    if unknown:
        raise DataError(path, None, unknown[0], f"unknown field (known: {', '.join(sorted(known))})")
    config = StudyConfig(
        title=title,
        intro=_text(obj, "intro", path, "", required=False) or "",
        label_pairs=tuple(pairs),
        compare=tuple(compare),
        labels_per_participant=k,
        seed=seed,
        model=_text(obj, "model", path, "", required=False),
        baseline_model=_text(obj, "baseline_model", path, "", required=False),
        max_new_tokens=max_new,
    )
    if config.needs_model() and not config.model:
        raise DataError(path, None, "model", "required when some compare items have no pre-generated answers")
    return config


def load_config(path: str | Path) -> StudyConfig:
    import yaml

    try:
        obj = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise FspoError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise FspoError(f"{path}: invalid YAML: {exc}") from None
    return parse_config(obj, str(path))


def config_from_json(text: str) -> StudyConfig:
    obj = json.loads(text)
    obj["label_pairs"] = tuple(LabelPair(p["question"], tuple(p["answers"])) for p in obj["label_pairs"])
    obj["compare"] = tuple(CompareItem(**c) for c in obj["compare"])
    return StudyConfig(**obj)
