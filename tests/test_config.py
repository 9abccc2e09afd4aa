"""The one config system: every value checked however it arrives; one-line errors; bare booleans."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

import pytest

from fspo.config import Config, add_config_arguments, config_from_args, iter_leaves, load_config, opt
from fspo.errors import FspoError
from fspo.train.config import LossConfig, OptimConfig, TrainConfig


@dataclass
class Inner(Config):
    rate: float = opt(0.5, "a rate", gt=0.0, le=1.0)
    mode: str = opt("a", "a mode", choices=["a", "b"])


@dataclass
class Outer(Config):
    inner: Inner = field(default_factory=Inner)
    n: int = opt(1, "a count", ge=1)
    flag: bool = opt(False, "a flag")
    names: list[str] = opt(help="names", default_factory=lambda: ["x"])
    curve: list[int] = opt(help="shots", default_factory=lambda: [0, 4])
    pairs: dict[str, str] = opt(help="name=path", default_factory=dict)
    maybe: int | None = opt(None, "optional", ge=0)


BAD = [
    ({"n": 0}, "n: must be >= 1"),
    ({"n": True}, "n: expected int"),
    ({"n": 1.5}, "n: expected int"),
    ({"n": "9" * 40}, "n: expected int"),
    ({"inner": {"rate": "nan"}}, "inner.rate: must be a finite number"),
    ({"inner": {"rate": 2}}, "inner.rate: must be <= 1.0"),
    ({"inner": {"mode": "c"}}, "inner.mode: expected one of a, b"),
    ({"inner": {"mood": "a"}}, "inner.mood: unknown option"),
    ({"inner": 3}, "inner: expected a mapping"),
    ({"flag": "maybe"}, "flag: expected bool"),
    ({"curve": "1,x"}, "curve: expected list of int"),
    ({"pairs": "a=b,c"}, "pairs: expected NAME=VALUE pairs"),
    ({"maybe": -1}, "maybe: must be >= 0"),
    ({"n": None}, "n: must not be null"),
]


@pytest.mark.parametrize("data,message", BAD)
def test_bad_values_are_one_line_errors_from_yaml(tmp_path, data, message):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(FspoError, match=message) as exc:
        load_config(Outer, path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_python_api_is_checked_too():
    with pytest.raises(FspoError, match="n: must be >= 1"):
        Outer(n=0)
    with pytest.raises(FspoError, match="rate: must be a finite number"):
        Inner(rate=math.inf)
    with pytest.raises(FspoError, match="steps: must be >= 1"):
        OptimConfig(steps=0)
    with pytest.raises(FspoError, match="beta: must be > 0"):
        LossConfig(beta=0.0)


def parse(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p, Outer, {"rate": "inner.rate"})
    return config_from_args(Outer, p.parse_args(argv))


def test_cli_flags_aliases_lists_and_bare_booleans(tmp_path):
    cfg = parse(["--flag", "--rate", "0.25", "--curve", "0,2,8", "--pairs", "a=x,b=y", "n=3"])
    assert (cfg.flag, cfg.inner.rate, cfg.curve, cfg.pairs, cfg.n) == (True, 0.25, [0, 2, 8], {"a": "x", "b": "y"}, 3)
    assert parse(["--flag", "false"]).flag is False
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("n: 5\nflag: true\ninner:\n  mode: b\n")
    cfg = parse(["--config", str(yaml_file), "--n", "7"])  # flags override the file, the rest stays
    assert (cfg.n, cfg.flag, cfg.inner.mode) == (7, True, "b")
    with pytest.raises(FspoError, match="n: must be >= 1"):
        parse(["--n", "0"])


def test_help_shows_each_default_once(capsys):
    p = argparse.ArgumentParser()
    add_config_arguments(p, TrainConfig)
    help_text = p.format_help()
    options = " ".join(help_text.split()).split(" --")
    assert all(o.count("(default:") <= 1 for o in options)
    assert help_text.count("(default:") == len(list(iter_leaves(TrainConfig)))
    assert "{adamw, rmsprop, sgd}" in " ".join(help_text.split())


def test_required_options_are_named_whichever_way_they_arrive():
    from fspo.serve.config import ServeConfig

    @dataclass
    class Needs(Config):
        path: str = opt("", "a path", required=True)

    with pytest.raises(FspoError, match="^path: required$"):
        Needs()
    with pytest.raises(FspoError, match="path: required"):
        load_config(Needs, None, {"path": ""})
    assert Needs(path="x").path == "x"
    with pytest.raises(FspoError, match="model: required"):
        ServeConfig()
    p = argparse.ArgumentParser()
    add_config_arguments(p, Needs)
    assert "(required)" in p.format_help() and "(default: )" not in p.format_help()
