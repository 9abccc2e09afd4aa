"""The package reads bottom-up: imports go to the same package or a lower layer (docs/architecture.md),
layout names live in data/prompts.py only, and only data/runs.py reads the run record."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "fspo"
LAYER = {
    "errors": 0,
    "config": 0,
    "__init__": 0,
    "data": 1,
    "models": 2,
    "llm": 3,
    "train": 4,
    "eval": 5,
    "synth": 5,
    "serve": 5,
    "demo": 6,
    "cli": 6,
    "data_commands": 6,
    "__main__": 6,
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fspo."):
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("fspo."))


def test_imports_go_down_the_layers():
    bad = []
    for path in SRC.rglob("*.py"):
        pkg = path.relative_to(SRC).parts[0].removesuffix(".py")
        for module in _imports(path):
            target = module.split(".")[1]
            same_layer_ok = LAYER[pkg] in (0, 6) and LAYER[target] == LAYER[pkg]  # errors<-config, cli<-__main__
            if target != pkg and LAYER[target] >= LAYER[pkg] and not same_layer_ok:
                bad.append(f"{path.relative_to(SRC)} imports {module}")
    assert not bad, bad


def test_layout_names_and_run_file_live_in_one_place():
    # "oracle" is also a method name (eval/methods.py), so those two count only where a layout is tested
    names = re.compile(r"""["'](zeroshot|prefonly)["']\s*[,)]|(==|!=|in \(|layout=)\s*["'](rat|oracle|fspo)["']""")
    for path in SRC.rglob("*.py"):
        rel = str(path.relative_to(SRC))
        text = path.read_text()
        if rel != "data/prompts.py":
            assert not names.search(text), f"{rel} tests a layout by name"
        if rel != "data/runs.py":
            assert "fspo_run.json" not in text, f"{rel} names the run file"
    for path in [*SRC.glob("eval/*.py"), *SRC.glob("synth/*.py"), *SRC.rglob("serve/**/*.py")]:
        text = path.read_text()
        assert "def fit_" not in text and ".pop(0)" not in text, f"{path.name} fits shots itself"


def test_docs_links_resolve_inside_the_repository():
    root = SRC.parents[1]
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if not target.startswith(("http://", "https://", "mailto:")):
                assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
        assert "DESIGN.md" not in text and "shared/" not in text, f"{doc.name} points outside the repository"


def test_shipped_examples_and_configs_work_from_any_directory(tmp_path, monkeypatch):
    from fspo.config import load_config
    from fspo.data.io import load_data
    from fspo.train.config import TrainConfig

    monkeypatch.chdir(tmp_path)
    assert load_data(TrainConfig().data.path).prefs  # the default data path
    assert load_config(TrainConfig, "configs/gpu_ipo.yaml").loss.name
