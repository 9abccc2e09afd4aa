"""Shared fixtures: small synthetic users and the tiny model (built in code, milliseconds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fspo.data.schema import PreferenceRecord


def make_records(n_users: int = 3, per_user: int = 6, split: str = "train") -> list[PreferenceRecord]:
    return [
        PreferenceRecord(
            user_id=f"u{u}",
            prompt=f"Question {q} for everyone?",
            chosen=f"User {u} likes answer {q}.",
            rejected=f"User {u} dislikes answer {q}.",
            split=split,
        )
        for u in range(n_users)
        for q in range(per_user)
    ]


def write_dataset(folder: Path, n_train: int = 3, n_test: int = 2, per_user: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    prefs, users = [], []
    for u in range(n_train + n_test):
        split = "train" if u < n_train else "test"
        users.append(
            {"user_id": f"u{u}", "description": f"User {u} likes short answers.", "attributes": {}, "split": split}
        )
        for q in range(per_user):
            prefs.append(
                {
                    "user_id": f"u{u}",
                    "prompt": f"Question {q}?",
                    "chosen": f"Short {u}.",
                    "rejected": f"A much longer answer from user {u} about {q}.",
                    "split": split,
                }
            )
    (folder / "prefs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prefs))
    (folder / "users.jsonl").write_text("".join(json.dumps(u) + "\n" for u in users))
    return folder


@pytest.fixture
def records() -> list[PreferenceRecord]:
    return make_records()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny():
    from fspo.models.registry import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished SFT-then-IPO run of the tiny model on examples/reviews (2 shots), trained once."""
    from fspo.cli import main

    out = tmp_path_factory.mktemp("run") / "tiny_ipo"
    rc = main(
        ["train", "--model", "tiny", "--data", "examples/reviews", "--loss", "sft+ipo", "--shots", "2",
         "--steps", "1", "optim.sft_steps=1", "data.eval_episodes=0", "data.max_length=256",
         "--out", str(out), "--progress", "false"]
    )  # fmt: skip
    assert rc == 0
    return out


# Under CI a test skipped for a missing dependency (TRL, Playwright/Chromium, a model wheel,
# hypothesis, tensorboard...) fails instead: install.sh --dev installs them all, so a skip there
# means a broken install, not an optional extra.
MISSING_DEPENDENCY = ("could not import", "not installed", "No module named")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() != "true" or not report.skipped:
        return
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    if any(text in reason for text in MISSING_DEPENDENCY):
        report.outcome = "failed"
        report.longrepr = f"CI=true: a dependency the dev install provides is missing: {reason}"
