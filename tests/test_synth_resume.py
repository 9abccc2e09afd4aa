"""kill -9 mid-run, rerun: no committed call repeated and byte-identical files versus an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ARGS = [
    "synth",
    "--domain",
    "roleplay",
    "--users",
    "6",
    "--questions",
    "6",
    "--backend",
    "scripted",
    "--no-embed",
    "--no-plots",
    "--quiet",
]
CHUNK = 4  # the scripted backend's batch size: the cache commits this many calls at once
FILES = ("prefs.jsonl", "users.jsonl", "diagnostics/diagnostics.json")


def run_cli(out: Path, log: Path, sleep: float) -> subprocess.Popen:
    env = {**os.environ, "FSPO_SCRIPTED_SLEEP": str(sleep), "FSPO_SCRIPTED_LOG": str(log)}
    code = "import sys; from fspo.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *ARGS, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_kill9_resume_repeats_no_call_and_matches(tmp_path):
    ref_log = tmp_path / "ref.log"
    ref = run_cli(tmp_path / "ref", ref_log, 0.0)
    assert ref.wait(timeout=120) == 0, ref.stderr.read().decode()
    total = len(lines(ref_log))
    assert total > 100

    log = tmp_path / "calls.log"
    proc = run_cli(tmp_path / "run", log, 0.01)
    deadline = time.time() + 120
    while len(lines(log)) < total // 3:
        assert proc.poll() is None, "run finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    done_before = len(lines(log))
    assert 0 < done_before < total
    assert not (tmp_path / "run" / "prefs.jsonl").exists()

    again = run_cli(tmp_path / "run", log, 0.0)
    assert again.wait(timeout=120) == 0, again.stderr.read().decode()
    calls = lines(log)
    # A kill can land between a chunk's calls returning and the cache committing them: those
    # calls (at most one chunk, the last ones logged before the kill) are sent again. Nothing
    # that was committed may be sent twice.
    repeated = Counter(calls) - Counter(lines(ref_log))
    assert Counter(lines(ref_log)) - Counter(calls) == Counter(), "a call was never made"
    assert sum(repeated.values()) <= CHUNK, f"{sum(repeated.values())} calls repeated after the kill"
    assert set(repeated) <= set(calls[:done_before][-CHUNK:]), "a committed call was sent again"
    for f in FILES:
        assert (tmp_path / "run" / f).read_bytes() == (tmp_path / "ref" / f).read_bytes(), f

    # a third run replays everything from the cache and sends nothing
    third = run_cli(tmp_path / "run", log, 0.0)
    assert third.wait(timeout=120) == 0
    assert len(lines(log)) == len(calls)
