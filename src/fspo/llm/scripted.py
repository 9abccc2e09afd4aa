"""A deterministic, rule-based backend so the whole synth pipeline runs in tests in seconds.

It recognizes the synth prompts by their instruction lines and answers sensibly: steered
reviews express the requested sentiment and length, the judge prefers the response sharing
more words with the user's description (ties go to position A, so undecidable pairs show up as
order-inconsistent, as with a real position-biased judge), and refinement names the chosen
response's words. Outputs depend only on the prompt text.

Test hooks: ``FSPO_SCRIPTED_SLEEP`` (seconds per call, to make a run slow enough to kill) and
``FSPO_SCRIPTED_LOG`` (append one line per completed call, to count calls across processes).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Sequence

from fspo.llm.base import GenerationParams, Prompt, apply_stops, prompt_text

_WORD = re.compile(r"[a-z]+")
_STOP = set(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "is",
        "are",
        "was",
        "were",
        "be",
        "it",
        "this",
        "that",
        "they",
        "their",
        "them",
        "he",
        "she",
        "his",
        "her",
        "you",
        "your",
        "i",
        "my",
        "me",
        "we",
        "our",
        "as",
        "at",
        "by",
        "from",
        "but",
        "not",
        "so",
        "very",
        "more",
        "most",
        "than",
        "which",
        "who",
        "what",
        "how",
        "why",
        "when",
        "would",
        "should",
        "could",
        "about",
        "into",
        "has",
        "have",
        "had",
        "do",
        "does",
        "did",
        "will",
        "just",
        "also",
        "user",
        "prefers",
        "prefer",
        "response",
        "answer",
        "question",
    ]
)


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16)


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2}


def _section(text: str, header: str, next_headers: Sequence[str]) -> str:
    start = text.find(header)
    if start == -1:
        return ""
    start += len(header)
    end = min([i for i in (text.find(h, start) for h in next_headers) if i != -1] or [len(text)])
    return text[start:end].strip()


POSITIVE = ["I loved it", "It was wonderful", "A great pleasure", "Truly delightful", "Excellent and charming"]
NEGATIVE = ["I hated it", "It was awful", "A boring mess", "Truly disappointing", "Terrible and dull"]
FILLER = {
    "positive": [
        "The details were lovely and charming from the first moment to the last.",
        "Every single part of it made me happy and I smiled the whole time.",
        "I enjoyed thinking about it for days afterwards with a warm feeling.",
        "Friends who tried it on my advice loved it just as much as I did.",
    ],
    "negative": [
        "The details were sloppy and careless from the first moment to the last.",
        "Every single part of it annoyed me and I frowned the whole time.",
        "I regretted the wasted time for days afterwards with a sour feeling.",
        "Friends who tried it on my advice hated it just as much as I did.",
    ],
    "neutral": [
        "It covers the main steps in a sensible order for a beginner.",
        "It names the tools and the time one would need to get going.",
        "It lists what to do first, what to do next, and what to skip.",
        "It ends with a short plan for the coming week and a way to check progress.",
    ],
}


class ScriptedBackend:
    """Rule-based fake LLM; ``logprobs=True`` also offers ``choice_logprobs`` (derived from the verdict)."""

    def __init__(self, name: str = "scripted", batch_size: int = 4, logprobs: bool = False) -> None:
        self.name = name
        self.batch_size = batch_size
        self.sleep = float(os.environ.get("FSPO_SCRIPTED_SLEEP", "0") or 0)
        self.log_path = os.environ.get("FSPO_SCRIPTED_LOG") or None
        self.calls = 0
        if logprobs:
            self.choice_logprobs = self._choice_logprobs

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[str]:
        out = []
        for p in prompts:
            if self.sleep:
                time.sleep(self.sleep)
            out.append(apply_stops(self.respond(prompt_text(p)), params.stop))
        for p in prompts:  # logged once the batch is done, right before the cache commits it
            self._log(prompt_text(p))
        return out

    def _log(self, text: str) -> None:
        self.calls += 1
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(hashlib.sha256(text.encode()).hexdigest() + "\n")

    def _choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str], prefix: str = "") -> list:
        out = []
        for p in prompts:
            text = prompt_text(p)
            verdict = self.judge(text)
            self._log(text)
            out.append([-0.1 if c.strip() == verdict[-1:] else -2.5 for c in choices])
        return out

    # --- rules -----------------------------------------------------------------------------------
    def respond(self, text: str) -> str:
        if "Verdict: A" in text and "Response B" in text:
            return self.judge(text)
        if "Describe this person" in text:
            return self.persona(text)
        if "implied fact" in text:
            return self.fact(text)
        if m := re.search(r"List (\d+) distinct views", text):
            return "\n".join(f"{i + 1}. {v}" for i, v in enumerate(self.views(text, int(m.group(1)))))
        if m := re.search(r"Write (\d+) new questions", text):
            return self.questions(text, int(m.group(1)))
        if "Steering:" in text or "From this view:" in text:
            return self.steered(text)
        return "OK."

    def persona(self, text: str) -> str:
        attrs = re.findall(r"^- ([\w ]+): (.+)$", text, flags=re.M)
        likes = ", ".join(v.strip() for _, v in attrs) or "many things"
        jobs = ["teacher", "nurse", "engineer", "student", "retired chef", "librarian", "farmer", "designer"]
        return f"A {jobs[_h(text) % len(jobs)]} who cares about {likes}. They decide quickly and know what they like."

    def views(self, text: str, k: int) -> list[str]:
        angles = ["cost", "speed", "tradition", "health", "fun", "safety", "community", "craft", "science"]
        start = _h(text) % len(angles)
        return [f"Focus on {angles[(start + i) % len(angles)]} first" for i in range(k)]

    def questions(self, text: str, n: int) -> str:
        topic = _section(text, "Topic:", ["\n"]) or "everyday life"
        verbs = ["start with", "get better at", "save money on", "enjoy", "learn about", "plan", "choose", "avoid"]
        things = ["cooking", "gardening", "travel", "running", "reading", "music", "coffee", "painting", "hiking"]
        base = _h(text)
        lines = []
        for i in range(n):
            verb = verbs[(base + i) % len(verbs)]
            thing = things[(base // 7 + 3 * i) % len(things)]
            lines.append(f"{i + 1}. How should I {verb} {thing} ({topic})?")
        return "\n".join(lines)

    def steered(self, text: str) -> str:
        seed = _h(text)
        steer = dict(re.findall(r"^- (\w+): (\w+)", text, flags=re.M))
        view = _section(text, "From this view:", ["\n"])
        if steer.get("sentiment") == "negative":
            head = NEGATIVE[seed % len(NEGATIVE)]
        elif steer.get("sentiment") == "positive" or not view:
            head = POSITIVE[seed % len(POSITIVE)]
        else:
            head = f"{view}, and the rest follows"
        if steer.get("reading_level") == "advanced":
            head += ", notwithstanding considerable methodological sophistication"
        sentences = [head + "."]
        if steer.get("length") == "verbose" or (view and steer.get("length") != "concise"):
            filler = FILLER[steer.get("sentiment", "neutral")]
            sentences += [filler[(seed + i) % len(filler)] for i in range(3)]
        return " ".join(sentences)

    def judge(self, text: str) -> str:
        if _h(text) % 23 == 0:
            return "Both have merits; I cannot decide."
        desc = _content_words(_section(text, "User description:", ["Question:"]))
        a = _section(text, "Response A:", ["Response B:"])
        b = _section(text, "Response B:", ["Decide", "Which"])
        score_a, score_b = len(desc & _content_words(a)), len(desc & _content_words(b))
        for word, sign in (("positive", 1), ("negative", -1)):
            if word in desc:
                score_a += sign * _polarity(a)
                score_b += sign * _polarity(b)
        for word, short in (("concise", True), ("verbose", False)):
            if word in desc:
                score_a += (len(a.split()) < len(b.split())) == short and len(a.split()) != len(b.split())
                score_b += (len(b.split()) < len(a.split())) == short and len(a.split()) != len(b.split())
        return "Verdict: B" if score_b > score_a else "Verdict: A"

    def fact(self, text: str) -> str:
        chosen = _section(text, "Preferred response:", ["Other response:"])
        words = sorted(_content_words(chosen), key=lambda w: (_h(w), w))[:3]
        return f"They value {', '.join(words) or 'clarity'} in an answer."


def _polarity(text: str) -> int:
    low = text.lower()
    return sum(p.lower() in low for p in POSITIVE) - sum(n.lower() in low for n in NEGATIVE)
