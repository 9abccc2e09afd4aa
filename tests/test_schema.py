import pytest

from fspo.data.schema import parse_preference, parse_user
from fspo.errors import DataError


def test_canonical_row():
    rec = parse_preference({"user_id": "u1", "prompt": "q", "chosen": "a", "rejected": "b"}, "f.jsonl", 3)
    assert (rec.user_id, rec.chosen, rec.rejected, rec.split) == ("u1", "a", "b", "train")


@pytest.mark.parametrize(
    "row,field",
    [
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "user_id"),
        ({"user_id": "u", "chosen": "a", "rejected": "b"}, "prompt"),
        ({"user_id": "u", "prompt": "q", "chosen": "", "rejected": "b"}, "chosen"),
        ({"user_id": "u", "prompt": "q", "chosen": 3, "rejected": "b"}, "chosen"),
        ({"user_id": "u", "prompt": "q", "chosen": "a", "rejected": "a"}, "rejected"),
        ({"user_id": "u", "prompt": "q", "chosen": "a", "rejected": "b", "split": "holdout"}, "split"),
        ({"user_id": "u", "prompt": "q", "response_a": "a", "response_b": "b", "label": 7}, "label"),
    ],
)
def test_errors_name_file_line_field(row, field):
    with pytest.raises(DataError) as exc:
        parse_preference(row, "data/prefs.jsonl", 12)
    assert str(exc.value).startswith(f"data/prefs.jsonl:12: {field}: ")


@pytest.mark.parametrize("label,chosen", [(0, "A"), ("a", "A"), (1, "B"), ("b", "B")])
def test_pairwise_rows_are_oriented(label, chosen):
    row = {"user_id": "u", "prompt": "q", "response_a": "A", "response_b": "B", "label": label}
    rec = parse_preference(row)
    assert rec.chosen == chosen and rec.rejected == ({"A", "B"} - {chosen}).pop()


def test_reference_dataset_rows():
    elix = {"scorer_level": "child", "prompt": "q", "response_x": "x", "response_y": "y", "label": 1}
    rec = parse_preference(elix)
    assert (rec.user_id, rec.chosen, rec.rejected) == ("child", "y", "x")
    roleplay = {"level": "uuid-1", "x": "q", "yw": "w", "yl": "l"}
    rec = parse_preference(roleplay)
    assert (rec.user_id, rec.prompt, rec.chosen, rec.rejected) == ("uuid-1", "q", "w", "l")


def test_user_profile():
    user = parse_user({"user_id": "u1", "description": "d", "attributes": {"length": "concise", "age": 40}})
    assert user.attributes == {"length": "concise", "age": "40"}
    with pytest.raises(DataError, match="users.jsonl:2: attributes.x: "):
        parse_user({"user_id": "u1", "attributes": {"x": [1]}}, "users.jsonl", 2)


# issue 14: validate must refuse what would silently change or break training


def _row(**fields):
    return {"user_id": "u1", "prompt": "q", "chosen": "a", "rejected": "b", **fields}


@pytest.mark.parametrize(
    "row,field,message",
    [
        (_row(response_a="A", response_b="B", label=True, chosen=None, rejected=None), "label", "got True"),
        ({"user_id": "u", "prompt": "q", "response_a": "A", "response_b": "B", "label": True}, "label", "got True"),
        ({"user_id": "u", "prompt": "q", "response_a": "A", "response_b": "B", "label": False}, "label", "got False"),
        ({"user_id": "u", "prompt": "q", "response_a": "A", "response_b": "B", "label": 1.0}, "label", "got 1.0"),
        (_row(user_id=float("nan")), "user_id", "expected a string or integer, got float"),
        (_row(user_id=True), "user_id", "expected a string or integer, got bool"),
        (_row(user_id="\u200b\u200d"), "user_id", "is empty"),
        (_row(user_id="   "), "user_id", "is empty"),
        (_row(prompt="\u200b \ufeff"), "prompt", "is empty"),
        (_row(user_id="\x1b[31mred"), "user_id", "control or invisible character '\\x1b'"),
        (_row(user_id="a\u200bb"), "user_id", "control or invisible character '\\u200b'"),
        (_row(user_id="a\nb"), "user_id", "control or invisible character '\\n'"),
        (_row(user_id="."), "user_id", "'.' is not a user id"),
        (_row(user_id=" .. "), "user_id", "'..' is not a user id"),
        (_row(chosen="caf\u00e9", rejected="cafe\u0301"), "rejected", "reads the same as chosen"),
        (_row(chosen="hello world", rejected="hello\u200b world"), "rejected", "reads the same as chosen"),
        (_row(chosen="hello  world\n", rejected=" hello world"), "rejected", "reads the same as chosen"),
        (_row(prompt="q\ud800"), "prompt", "unpaired UTF-16 surrogate"),
        (_row(meta={"score": float("nan")}), "meta.score", "nan is not a finite number"),
        (_row(meta={"x": [1, float("inf")]}), "meta.x[1]", "inf is not a finite number"),
        (_row(meta=[]), "meta", "expected an object, got list"),
        (_row(meta={"a": {"\udc80": 1}}), "meta.a", "unpaired UTF-16 surrogate"),
        (_row(meta={1: "x"}), "meta", "key 1 is not a string"),
        (_row(meta={"raw": b"bytes"}), "meta.raw", "bytes is not a JSON value"),
        (_row(split=["train"]), "split", "must be one of"),
        ({"scorer_level": True, "prompt": "q", "response_x": "x", "response_y": "y", "label": 0}, "scorer_level", ""),
    ],
)
def test_refused_rows_name_the_field(row, field, message):
    row = {k: v for k, v in row.items() if v is not None}
    with pytest.raises(DataError) as exc:
        parse_preference(row, "p.jsonl", 4)
    assert str(exc.value).startswith(f"p.jsonl:4: {field}: ") and message in str(exc.value)
    assert "\n" not in str(exc.value) and "\x1b" not in str(exc.value)


def test_meta_nested_too_deeply_is_refused():
    meta: dict = {}
    inner = meta
    for _ in range(40):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(DataError, match="nested deeper than 32 levels"):
        parse_preference(_row(meta=meta))


def test_ids_are_normalized():
    nfd = "Ame\u0301lie"
    assert parse_preference(_row(user_id=f"  {nfd} \t")).user_id == "Am\u00e9lie"
    assert parse_preference(_row(user_id=17)).user_id == "17"
    assert parse_user({"user_id": nfd + " "}).user_id == "Am\u00e9lie"
    with pytest.raises(DataError, match="more than 64 digits"):
        parse_preference(_row(user_id=10**70))


def test_pair_that_differs_visibly_is_kept():
    rec = parse_preference(_row(chosen="Hello world.", rejected="Hello, world."))
    assert (rec.chosen, rec.rejected) == ("Hello world.", "Hello, world.")
    assert parse_preference(_row(prompt="caf\u00e9 \u200b")).prompt == "caf\u00e9 \u200b"  # text is kept as written


def test_user_rows_are_checked_like_preferences():
    for bad, field in [
        ({"user_id": ".."}, "user_id"),
        ({"user_id": "u", "attributes": {"a": float("nan")}}, "attributes.a"),
    ]:
        with pytest.raises(DataError, match=f"^users.jsonl:3: {field}: "):
            parse_user(bad, "users.jsonl", 3)
    assert parse_user({"user_id": "u", "description": None}).description == ""


@pytest.mark.parametrize(
    "given,want", [("eval", "validation"), ("valid", "validation"), ("dev", "validation"), ("validation", "validation")]
)
def test_hub_split_names_are_read_as_validation(given, want):
    from fspo.data.schema import parse_preference

    row = {"user_id": "u", "prompt": "q", "chosen": "a", "rejected": "b", "split": given}
    assert parse_preference(row).split == want


def test_trl_conversational_rows_are_read():
    from fspo.data.schema import parse_preference

    row = {
        "user_id": "u",
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Review Dune."}],
        "chosen": [{"role": "assistant", "content": "Dune is superb."}],
        "rejected": [{"role": "assistant", "content": "Dune is dull."}],
    }
    rec = parse_preference(row)
    assert (rec.prompt, rec.chosen, rec.rejected) == ("Review Dune.", "Dune is superb.", "Dune is dull.")
    for bad in (
        [],
        [{"role": "user", "content": 3}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
    ):
        with pytest.raises(DataError, match="prompt"):
            parse_preference(row | {"prompt": bad})
