"""Issue 14: malformed inputs give one-line errors naming file, line and field (never a traceback);
validate agrees with training; output folders are locked; atomic writes keep the usual file mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fspo.cli import main
from fspo.data.io import atomic_dir, load_data, lock_output, open_atomic, write_jsonl
from fspo.errors import DataError, FspoError

ROW = {"user_id": "u1", "prompt": "q1", "chosen": "a", "rejected": "b"}
LINE = json.dumps(ROW).encode()


def validate(capsys, *paths) -> tuple[int, list[str], str]:
    rc = main(["validate", *map(str, paths)])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


def refused(capsys, path: Path, expected: str) -> None:
    """``validate`` prints exactly ``expected`` (exit 2) and loading raises it as a DataError."""
    rc, out, err = validate(capsys, path)
    assert (rc, out) == (2, [expected]), err
    with pytest.raises(DataError) as exc:
        load_data(path)
    assert str(exc.value) == expected


# ------------------------------------------------------------------------------------- encodings


def test_invalid_utf8_names_line_and_column(tmp_path, capsys):
    f = tmp_path / "prefs.jsonl"
    f.write_bytes(LINE + b'\n{"user_id": "\xc3\x28"}\n')
    refused(capsys, f, f"{f}:2: <encoding>: not UTF-8: byte 0xc3 at column 14")


@pytest.mark.parametrize(
    "codec,message",
    [
        ("utf-16", "the file is UTF-16; fspo reads UTF-8 (save it as UTF-8)"),
        ("utf-16-be", "contains NUL bytes (UTF-16 without a BOM, or not text?)"),
        ("utf-32", "the file is UTF-32; fspo reads UTF-8 (save it as UTF-8)"),
    ],
)
@pytest.mark.parametrize("name", ["prefs.jsonl", "prefs.json"])
def test_utf16_and_utf32_are_refused(tmp_path, capsys, codec, message, name):
    f = tmp_path / name
    f.write_text(json.dumps(ROW if name.endswith("l") else [ROW]) + "\n", encoding=codec)
    refused(capsys, f, f"{f}:1: <encoding>: {message}")


@pytest.mark.parametrize("name,text", [("prefs.jsonl", json.dumps(ROW)), ("prefs.json", json.dumps([ROW]))])
def test_utf8_bom_is_accepted(tmp_path, capsys, name, text):
    f = tmp_path / name
    f.write_bytes(b"\xef\xbb\xbf" + text.encode() + b"\n")
    assert validate(capsys, f)[:2] == (0, [])
    assert load_data(f).prefs[0].user_id == "u1"


def test_json_file_holding_json_lines_is_read(tmp_path):
    f = tmp_path / "rows.json"  # what datasets' to_json writes
    f.write_text(json.dumps(ROW) + "\n" + json.dumps(dict(ROW, prompt="q2")) + "\n")
    assert [r.prompt for r in load_data(f).prefs] == ["q1", "q2"]


# ---------------------------------------------------------------------------------- JSON content


def test_deeply_nested_json(tmp_path, capsys):
    f = tmp_path / "prefs.jsonl"
    f.write_text(LINE.decode() + "\n" + "[" * 100_000 + "\n")
    refused(capsys, f, f"{f}:2: <json>: invalid JSON: nested too deeply")
    g = tmp_path / "deep.json"
    g.write_text("[" * 100_000)
    refused(capsys, g, f"{g}: <json>: invalid JSON: nested too deeply")


def test_5000_digit_integer(tmp_path, capsys):
    f = tmp_path / "prefs.jsonl"
    f.write_text(json.dumps(ROW) + "\n" + json.dumps(ROW).replace('"u1"', "7" * 5000) + "\n")
    refused(capsys, f, f"{f}:2: user_id: an integer with 5000 digits is too long for an id")
    g = tmp_path / "meta.jsonl"
    g.write_text(json.dumps(dict(ROW, meta={"n": 0})).replace("0}", "9" * 5000 + "}") + "\n")
    refused(capsys, g, f"{g}:1: meta.n: <an integer with 5000 digits> is not a JSON value")


def test_duplicate_keys_are_refused(tmp_path, capsys):
    f = tmp_path / "prefs.jsonl"
    f.write_text('{"user_id": "u1", "prompt": "q", "chosen": "a", "rejected": "b", "chosen": "b"}\n')
    refused(capsys, f, f"{f}:1: chosen: duplicate key in one object")
    g = tmp_path / "users.jsonl"
    g.write_text('{"user_id": "u1", "attributes": {"length": "short", "length": "long"}}\n')
    assert validate(capsys, g)[:2] == (2, [f"{g}:1: length: duplicate key in one object"])


def test_nan_and_infinity(tmp_path, capsys):
    f = tmp_path / "prefs.jsonl"
    f.write_text('{"user_id": NaN, "prompt": "q", "chosen": "a", "rejected": "b"}\n')
    refused(capsys, f, f"{f}:1: user_id: expected a string or integer, got float")
    f.write_text('{"user_id": "u", "prompt": "q", "chosen": "a", "rejected": "b", "meta": {"p": -Infinity}}\n')
    refused(capsys, f, f"{f}:1: meta.p: -inf is not a finite number")
    f.write_text('{"user_id": "u", "prompt": "q", "chosen": "a", "rejected": "b", "meta": {"p": 1e999}}\n')
    refused(capsys, f, f"{f}:1: meta.p: inf is not a finite number")


def test_error_lines_stay_one_line(tmp_path, capsys):
    f = tmp_path / "a\nb\x1b[2J.jsonl"
    f.write_text(json.dumps(dict(ROW, split="\x1b[31mtrain\n")) + "\n")
    rc, out, _ = validate(capsys, f)
    assert rc == 2 and len(out) == 1 and "\x1b" not in out[0]
    assert out[0].startswith(str(tmp_path) + "/a\\nb\\x1b[2J.jsonl:1: split: must be one of")


def test_many_problems_are_capped(tmp_path, capsys):
    f = tmp_path / "prefs.jsonl"
    f.write_text("{\n" * 250)
    rc, out, _ = validate(capsys, f)
    assert rc == 2 and len(out) == 101 and out[-1] == f"{f}: 150 more problems not shown"


# ------------------------------------------------------------------------------ files and folders


@pytest.mark.parametrize("content", [b"", b"just some text\n", LINE])
def test_text_or_empty_file_named_parquet(tmp_path, capsys, content):
    f = tmp_path / "prefs.parquet"
    f.write_bytes(content)
    rc, out, _ = validate(capsys, f)
    assert rc == 2 and len(out) == 1 and out[0].startswith(f"{f}: <parquet>: not a readable Parquet file: ")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_data(f)


def test_folder_that_is_not_a_dataset(tmp_path, capsys):
    d = tmp_path / "junk"
    d.mkdir()
    (d / "dataset_info.json").write_text("{not json")
    (d / "state.json").write_text("[]")
    rc, out, _ = validate(capsys, d)
    assert rc == 2 and len(out) == 1 and out[0].startswith(f"{d}: <folder>: not a Hugging Face datasets folder")
    with pytest.raises(DataError):
        load_data(d)


def test_fifo_is_not_read(tmp_path, capsys):
    fifo = tmp_path / "prefs.jsonl"
    os.mkfifo(fifo)  # reading it would block forever
    refused(capsys, fifo, f"{fifo}: <file>: not a regular file")


def _drop_file_powers() -> None:
    """In the child, before exec: drop root's right to ignore file modes (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH), so ``chmod 0`` means unreadable even when the tests run as root."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _as_other_user() -> dict:
    """subprocess arguments that make file modes apply to the command, even for root."""
    return {"preexec_fn": _drop_file_powers} if os.getuid() == 0 else {}


def _cli_as_other_user(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from fspo.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, **_as_other_user()
    )


def test_unreadable_file_and_folder(tmp_path):
    f = tmp_path / "prefs.jsonl"
    f.write_bytes(LINE + b"\n")
    f.chmod(0)
    d = tmp_path / "data"
    d.mkdir()
    (d / "prefs.jsonl").write_bytes(LINE + b"\n")
    d.chmod(0)
    run = _cli_as_other_user("validate", str(f), str(d))
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stdout.splitlines() == [
        f"{f}: <file>: cannot read: Permission denied",
        f"{d}: <file>: cannot read: Permission denied",
    ]
    code = "from fspo.data.io import load_data\nfor p in {!r}:\n try: load_data(p)\n except Exception as e: print(type(e).__name__, e)"
    run = subprocess.run(
        [sys.executable, "-c", code.format([str(f), str(d)])], capture_output=True, text=True, **_as_other_user()
    )
    assert run.stdout.splitlines() == [
        f"DataError {f}: <file>: cannot read: Permission denied",
        f"DataError {d}/prefs.jsonl: <file>: cannot read: Permission denied",
    ], run.stderr


# ----------------------------------------------------------------- validate agrees with training


def _dataset(folder: Path, prefs: list[dict], users: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prefs))
    (folder / "users.jsonl").write_text("".join(json.dumps(u) + "\n" for u in users))
    return folder


def test_validate_refuses_what_training_refuses(tmp_path, capsys):
    prefs = [dict(ROW, user_id="u1"), dict(ROW, user_id="ghost"), dict(ROW, user_id="held", split="train")]
    d = _dataset(tmp_path / "data", prefs, [{"user_id": "u1"}, {"user_id": "held", "split": "test"}])
    (d / "prefs.jsonl").write_text("\n" + (d / "prefs.jsonl").read_text())  # a blank first line: lines shift
    p, u = d / "prefs.jsonl", d / "users.jsonl"
    expected = [
        f"{p}:3: user_id: user 'ghost' is not in {u}",
        f"{p}:4: split: user 'held' is held out (test) in {u} but this row is train",
    ]
    for args in ([d], [p], [p, u], [u, p]):
        rc, out, _ = validate(capsys, *args)
        assert (rc, out) == (2, expected), args
    with pytest.raises(DataError) as exc:
        load_data(d)
    assert str(exc.value) == expected[0]  # the same rule and the same line


def test_normalized_ids_name_one_user(tmp_path, capsys):
    prefs = [dict(ROW, user_id="Ame\u0301lie "), dict(ROW, user_id="Am\u00e9lie", prompt="q2")]
    d = _dataset(tmp_path / "data", prefs, [{"user_id": "Am\u00e9lie"}])
    assert validate(capsys, d)[:2] == (0, [])
    assert {r.user_id for r in load_data(d).prefs} == {"Am\u00e9lie"}
    (d / "users.jsonl").write_text(
        json.dumps({"user_id": "Am\u00e9lie"}) + "\n" + json.dumps({"user_id": "Ame\u0301lie"})
    )
    assert validate(capsys, d / "users.jsonl")[:2] == (2, [f"{d / 'users.jsonl'}:2: user_id: duplicate user 'Amélie'"])


def test_users_file_is_decided_by_exact_name_or_content(tmp_path, capsys):
    bad_prefs = tmp_path / "my_users_prefs.jsonl"  # "users" in the name used to skip the preference checks
    bad_prefs.write_text(json.dumps({"user_id": "u1", "prompt": "q", "chosen": "a"}) + "\n")
    assert validate(capsys, bad_prefs)[:2] == (2, [f"{bad_prefs}:1: rejected: missing required field"])
    people = tmp_path / "people.jsonl"
    people.write_text(json.dumps({"user_id": "u1", "description": "likes cats"}) + "\n")
    assert validate(capsys, people)[:2] == (0, [])
    users = tmp_path / "users.jsonl"
    users.write_text(json.dumps({"user_id": "u1"}) + "\n")
    assert validate(capsys, users)[:2] == (0, [])


# ------------------------------------------------------------------------------- export command


def test_export_to_a_folder_is_one_line(dataset, tmp_path, capsys):
    assert main(["export", str(dataset), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"fspo export: error: {tmp_path}: cannot write: ")


# ------------------------------------------------------------------------------- the folder lock


def test_lock_conflicts_within_one_process(tmp_path):
    mine = rf"out: another fspo process is writing here \(pid {os.getpid()}\)$"
    with lock_output(tmp_path / "out") as out, pytest.raises(FspoError, match=mine), lock_output(out):
        pass
    with lock_output(tmp_path / "out"):  # released
        pass


def test_lock_held_by_another_process_until_it_dies(tmp_path):
    out = tmp_path / "out"
    code = (
        f"from fspo.data.io import lock_output\nwith lock_output({str(out)!r}):\n print('locked', flush=True)\n input()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        theirs = rf"another fspo process is writing here \(pid {holder.pid}\)"
        with pytest.raises(FspoError, match=theirs), lock_output(out):
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with lock_output(out):  # the kernel released it with the process
        pass


def test_lock_refuses_a_file_and_cleans_up_a_folder_it_created(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FspoError, match="file: exists and is not a folder"), lock_output(tmp_path / "file"):
        pass
    with pytest.raises(RuntimeError), lock_output(tmp_path / "new"):
        raise RuntimeError("a config error before anything is written")
    assert not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError), lock_output(tmp_path):  # it existed before: kept
        raise RuntimeError
    assert (tmp_path / "file").exists()


# ------------------------------------------------------------------------------------------ synth

SYNTH = ["synth", "--domain", "roleplay", "--users", "4", "--questions", "4", "--backend", "scripted", "--quiet"]


def _synth_proc(out: Path, sleep: float) -> subprocess.Popen:
    env = {**os.environ, "FSPO_SCRIPTED_SLEEP": str(sleep)}
    code = "import sys; from fspo.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *SYNTH, "--no-embed", "--no-plots", "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_synth_runs_on_one_out(tmp_path):
    out = tmp_path / "out"
    first = _synth_proc(out, 0.05)
    deadline = time.time() + 60
    while not (out / ".fspo.lock").exists() or (out / ".fspo.lock").read_text().strip() != str(first.pid):
        assert first.poll() is None and time.time() < deadline, first.stderr.read()
        time.sleep(0.05)
    second = _synth_proc(out, 0.0)
    assert second.wait(timeout=120) == 2
    err = second.stderr.read()
    assert err == f"fspo synth: error: {out}: another fspo process is writing here (pid {first.pid})\n"
    assert first.poll() is None, "the first run ended before the second one tried: make it slower"
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert load_data(out).prefs


def test_synth_refuses_while_the_folder_is_locked(tmp_path, capsys):
    with lock_output(tmp_path / "out"):
        assert main([*SYNTH, "--no-embed", "--no-plots", "--out", str(tmp_path / "out")]) == 2
    assert "another fspo process is writing here" in capsys.readouterr().err
    assert not (tmp_path / "out" / "prefs.jsonl").exists()


@pytest.fixture
def no_model(monkeypatch):
    """Fail if synth gets as far as loading a model (its checks must come first)."""

    def refuse(args):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("fspo.synth.command.make_backends", refuse)


@pytest.mark.parametrize("fraction", ["1.0", "1.5", "-0.1", "nan"])
def test_synth_heldout_fraction_out_of_range(tmp_path, capsys, fraction, no_model):
    assert main([*SYNTH, "--out", str(tmp_path / "out"), "--heldout-users", fraction]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fspo synth: error: --heldout_users: must be") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_synth_out_is_a_file(tmp_path, capsys, no_model):
    (tmp_path / "f").write_text("x")
    assert main([*SYNTH, "--no-embed", "--out", str(tmp_path / "f")]) == 2
    assert capsys.readouterr().err == f"fspo synth: error: {tmp_path / 'f'}: exists and is not a folder\n"
    assert main([*SYNTH, "--no-embed", "--out", str(tmp_path / "f" / "sub")]) == 2
    assert capsys.readouterr().err == (
        f"fspo synth: error: {tmp_path / 'f' / 'sub'}: cannot create the output folder: {tmp_path / 'f'} is not a folder\n"
    )


def test_synth_out_unwritable(tmp_path):
    tmp_path.chmod(0o555)
    for out, action in [(tmp_path / "out", "cannot create the output folder"), (tmp_path, "cannot write here")]:
        run = _cli_as_other_user(*SYNTH, "--no-embed", "--out", str(out))
        assert run.returncode == 2 and run.stderr == f"fspo synth: error: {out}: {action}: Permission denied\n"


def test_synth_pngs_are_written_atomically(tmp_path, monkeypatch):
    import matplotlib.figure

    from fspo.synth.diagnostics import write_diagnostics

    out = tmp_path / "out"
    assert main([*SYNTH, "--no-embed", "--out", str(out)]) == 0
    diag_dir = out / "diagnostics"
    diag = json.loads((diag_dir / "diagnostics.json").read_text())
    pngs = {p.name: p.read_bytes() for p in diag_dir.glob("*.png")}
    assert pngs and all(b.startswith(b"\x89PNG") for b in pngs.values())

    def killed_mid_write(self, fname, **kwargs):
        if hasattr(fname, "write"):
            fname.write(b"\x89PNG half")
        else:
            Path(fname).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        write_diagnostics(diag_dir, diag, [0.5, 0.7], diag["disagreement"]["users"])
    assert {p.name: p.read_bytes() for p in diag_dir.glob("*.png")} == pngs
    assert not [p for p in diag_dir.iterdir() if p.name.startswith(".")]


# -------------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        write_jsonl(tmp_path / "a.jsonl", [{"a": 1}])
        with open_atomic(tmp_path / "b.png", binary=True) as fh:
            fh.write(b"png")
        atomic_dir(tmp_path / "d", lambda d: (d / "x").write_text("x"))
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "plain").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "a.jsonl").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "b.png").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "d").stat().st_mode & 0o777 == dir_mode
