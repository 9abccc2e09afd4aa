"""Property-based fuzzing of ``fspo validate`` and ``load_data`` (issue 14): whatever the bytes, the
result is "ok" (exit 0) or one-line problems with exit 2 (a FspoError when loading), never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fspo.cli import main  # noqa: E402
from fspo.data.io import load_data  # noqa: E402
from fspo.errors import FspoError  # noqa: E402

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ("user_id", "prompt", "chosen", "rejected", "split", "meta", "label", "response_a", "response_b")
KEYS += ("description", "attributes", "scorer_level", "x", "yw", "yl")

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included
    | st.text(st.characters(codec=None), max_size=12)  # controls, zero-width, surrogates
    | st.sampled_from(["u1", "u1 ", "u\u0301", ".", "..", "train", "test", "a", "b", "\u200b", "\x1b[31m"])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
rows = st.dictionaries(st.sampled_from(KEYS), values, max_size=8) | values
huge = st.sampled_from(["7" * 5000, "[" * 3000, "1e999", "NaN", '"\\ud800"', '{"a": 1, "a": 2}'])


def _line(value) -> str:
    return json.dumps(value, allow_nan=True)


def check(files: dict[str, bytes]) -> None:
    """validate the folder and each file, then load the folder: only ok or one-line errors."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, content in files.items():
            (folder / name).write_bytes(content)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["validate", str(folder), *(str(folder / name) for name in files)])  # nothing else raises
        lines = out.getvalue().splitlines()
        assert (rc, bool(lines)) in ((0, False), (2, True)), (rc, lines, err.getvalue())
        assert all(line.startswith(str(folder)) for line in lines), lines
        with contextlib.suppress(FspoError):
            load_data(folder)


@FAST
@given(st.binary(max_size=300), st.sampled_from(["prefs.jsonl", "prefs.json", "prefs.parquet", "users.jsonl"]))
def test_arbitrary_bytes(content, name):
    check({name: content})


@FAST
@given(st.lists(rows | huge.map(lambda s: ("raw", s)), max_size=5), st.lists(rows, max_size=3))
def test_arbitrary_json_lines(pref_rows, user_rows):
    def encode(rows_) -> bytes:
        text = "".join((r[1] if isinstance(r, tuple) and r[:1] == ("raw",) else _line(r)) + "\n" for r in rows_)
        return text.encode("utf-8", "surrogatepass")

    check({"prefs.jsonl": encode(pref_rows), "users.jsonl": encode(user_rows)})


@FAST
@given(values)
def test_arbitrary_whole_json_file(value):
    check({"prefs.json": _line(value).encode("utf-8", "surrogatepass")})


@FAST
@given(
    st.lists(
        st.fixed_dictionaries({k: values for k in ("user_id", "prompt", "chosen", "rejected")}), min_size=1, max_size=3
    )
)
def test_rows_with_every_field_present(pref_rows):
    check({"prefs.jsonl": "".join(_line(r) + "\n" for r in pref_rows).encode("utf-8", "surrogatepass")})
