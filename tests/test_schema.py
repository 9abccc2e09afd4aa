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
        ({"user_id": "u", "prompt": "q", "chosen": "a", "rejected": "b", "split": "dev"}, "split"),
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
