"""Write ``eval.json`` (everything), ``report.md`` (tables + plots) and the PNG plots.

Plots use matplotlib's Agg backend (no display needed). Files are written atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fspo.data.io import write_text_atomic
from fspo.data.prompts import layout_of


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f}%" if pct else f"{x:.3g}"


def _ci(ci) -> str:
    if not ci or any(v is None or math.isnan(v) for v in ci):
        return ""
    return f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def plot_win_rates(result: dict, path: Path) -> bool:
    rows = [(m, s) for m, s in result["win_rate"].items() if s["n"]]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m, _ in rows]
    rates = [100 * s["win_rate"] for _, s in rows]
    lo = [max(0.0, r - 100 * s["ci"][0]) for r, (_, s) in zip(rates, rows)]
    hi = [max(0.0, 100 * s["ci"][1] - r) for r, (_, s) in zip(rates, rows)]
    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2.5, 3.6), dpi=120)
    ax.bar(names, rates, yerr=[lo, hi], capsize=6, color="#4C72B0", edgecolor="black", linewidth=0.6)
    ax.axhline(50, color="grey", linestyle="--", linewidth=1)
    for i, (r, (_, s)) in enumerate(zip(rates, rows)):  # labels at the foot of the bar: never under a CI cap
        ax.text(i + 0.05, 2, f"{r:.0f}%\nn={s['n']}", ha="left", va="bottom", fontsize=8, color="white")
    ax.set_ylim(0, 102)
    ax.set_ylabel(f"win rate vs {result['config']['baseline']} (%)")
    ax.set_title(
        f"Win rate vs {result['config']['baseline']} ({result['judge']['name']} judge; "
        f"{int(100 * result['win_rate'][names[0]]['ci_level'])}% CI, bootstrap over {rows[0][1]['ci_unit']}s)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_reward_accuracy(result: dict, path: Path) -> bool:
    curves = result.get("reward_accuracy") or {}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["heldout_users", "heldout_questions"]
    splits = sorted(
        {s for c in curves.values() for s in c["splits"]}, key=lambda s: (order.index(s) if s in order else 9, s)
    )
    fig, axes = plt.subplots(1, len(splits), figsize=(5.2 * len(splits), 3.8), dpi=120, squeeze=False)
    for ax, split in zip(axes[0], splits):
        all_x = sorted({int(k) for c in curves.values() if split in c["splits"] for k in c["splits"][split]["points"]})
        for k, (method, c) in enumerate(curves.items()):
            curve = c["splits"].get(split)
            if not curve:
                continue
            xs = sorted(int(x) for x in curve["points"])
            pts = [curve["points"][str(x)] for x in xs]
            ys = [100 * p["accuracy"] for p in pts]
            kind = "h>0" if curve["metric"] == "implicit_reward" else "LL"
            color = f"C{k}"
            if not layout_of(curve["layout"]).shows_shots:  # no shots in the prompt: one number, drawn as a level
                ax.axhline(ys[0], color=color, linestyle=":", linewidth=1.5, label=f"{method} ({kind}, no context)")
                continue
            # max(0, ...): at 0% or 100% the Wilson bound equals the point up to rounding, and
            # matplotlib refuses an error bar of -1e-15.
            lo = [max(0.0, y - 100 * p["ci"][0]) for y, p in zip(ys, pts)]
            hi = [max(0.0, 100 * p["ci"][1] - y) for y, p in zip(ys, pts)]
            offset = 0.08 * (k - (len(curves) - 1) / 2)  # keep overlapping error bars readable
            ax.errorbar(
                [x + offset for x in xs],
                ys,
                yerr=[lo, hi],
                marker="o",
                capsize=3,
                color=color,
                label=f"{method} ({kind}, {curve['reduction']})",
            )
        if all_x:
            ax.set_xticks(all_x)
        ax.axhline(50, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("shots N")
        ax.set_ylabel("reward accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(split.replace("_", " "), fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _quality_cells(q: dict | None) -> str:
    """on-topic | degenerate | acceptable | mean base NLL of a method's ``quality``."""
    if not q:
        return "– | – | – | –"
    nll = q.get("mean_base_nll")
    return " | ".join(
        [
            _fmt(q.get("on_topic")),
            _fmt(q.get("degenerate")),
            _fmt(q.get("acceptable")),
            "–" if nll is None else f"{nll:.2f}",
        ]
    )


def _acceptability_lines(result: dict) -> list[str]:
    cal = result["judge"].get("acceptability")
    if not cal:
        return []
    nll = (
        f"base-model NLL > {cal['nll_max']:.2f} nats/token ({cal['nll_rule']} over {cal['nll_from']} base and "
        "reference answers)"
        if cal.get("nll_max") is not None
        else "no base-model NLL"
    )
    return [
        "",
        "Acceptability gate (both judges): an answer that is empty, repeats the question, leaks the prompt template "
        "or copies a shot, is degenerate or is off-topic loses to an acceptable one, and two such answers tie. "
        f"Degenerate: repeated 4-grams > {cal['repeat_4gram_max']:g}, distinct-2 < {cal['distinct_2_min']:g} "
        f"(answers of at least {cal['min_words_for_ngrams']} words), or {nll}. On-topic: a review names its item; "
        f"other answers have MiniLM similarity to the question ≥ {cal['similarity_min']:.2f}. "
        "Mean base NLL: the base model's mean per-token NLL of the answer given only the question.",
    ]


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _sample_lines(result: dict) -> list[str]:
    """Three sample answers per method, grouped by query (every method answers the same queries)."""
    by_query: dict[tuple, list[tuple[str, dict]]] = {}
    for method, row in result["methods"].items():
        for s in (row.get("quality") or {}).get("samples", []):
            by_query.setdefault((s["user_id"], s["question"]), []).append((method, s))
    if not by_query:
        return []
    lines = ["", "## Sample answers", "", "The same evenly spread queries for every method; flags in brackets.", ""]
    for (user, question), rows in by_query.items():
        lines += [f"**{user}: {_one_line(question)}**", ""]
        for method, s in rows:
            flags = f" [{', '.join(s['flags'])}]" if s["flags"] else ""
            lines.append(f"- {method}{flags}: {_one_line(s['answer']) or '(empty)'}")
        lines.append("")
    return lines


def _description_lines(result: dict) -> list[str]:
    """RAT rows: how often the user description the model wrote states the user's true attributes."""
    lines = []
    for method, row in result["methods"].items():
        da = row.get("description_accuracy")
        if not da:
            continue
        axes = ", ".join(f"{a} {_fmt(v)}" for a, v in da["axes"].items())
        lines.append(
            f"- **{method}** description accuracy: {_fmt(da['users'])} of {da['n_users']} users (every description "
            f"states all their attribute values); {_fmt(da['descriptions'])} of {da['n_descriptions']} descriptions; "
            f"per axis: {axes}; {da['missing']} descriptions empty"
        )
    if lines:
        lines = ["", "**RAT user descriptions** (docs/evaluation.md, description accuracy)", "", *lines]
    return lines


def _voice_lines(result: dict) -> list[str]:
    """Voice: each row's MiniLM similarity to the person's real (held-out chosen) text, its difference to
    the baseline, and sample answers next to the real text (fspo.eval.voice)."""
    voice = result.get("voice")
    if not voice or not voice.get("methods"):
        return []
    base = voice["baseline"]
    level = int(100 * voice.get("ci_level", 0.95))
    lines = [
        "## Voice: answers vs the person's own text",
        "",
        "Mean MiniLM cosine similarity of each answer to the person's held-out real text (the query's chosen "
        f"answer; for `fspo from-texts` data, what they wrote), and the paired difference to {base} on the same "
        f"queries ({level}% bootstrap CI over users). Reference: the query's rejected text scores "
        f"{_fmt(voice.get('reference_rejected'), pct=False)} (another person's answer, or the dispreferred one).",
        "",
        f"| method | similarity to real text | Δ vs {base} [{level}% CI] | closer than {base} | n |",
        "|---|---|---|---|---|",
    ]
    for method, row in voice["methods"].items():
        if "delta" in row:
            lo, hi = row["delta_ci"]
            ci = "" if any(v is None or math.isnan(v) for v in (lo, hi)) else f" [{lo:+.3f}, {hi:+.3f}]"
            delta, closer = f"{row['delta']:+.3f}{ci}", _fmt(row["closer_than_baseline"])
        else:
            delta, closer = "(baseline)", ""
        lines.append(f"| {method} | {_fmt(row['mean'], pct=False)} | {delta} | {closer} | {row['n']} |")
    lines += (
        ["", "Sample answers next to the person's real text (similarity in brackets):", ""]
        if voice.get("samples")
        else [""]
    )
    for s in voice.get("samples", []):
        lines += [f"**{s['user_id']}: {_one_line(s['question'])}**", "", f"- real text: {_one_line(s['real'])}"]
        for method, a in s["answers"].items():
            lines.append(f"- {method} ({a['similarity']:.2f}): {_one_line(a['answer']) or '(empty)'}")
        lines.append("")
    return lines


def render_markdown(result: dict) -> str:
    cfg = result["config"]
    base = cfg["baseline"]
    lines = [
        "# fspo eval",
        "",
        f"Data: `{cfg['data']}`; held-out users evaluated: {len(result['users'])} "
        f"({', '.join(result['users'][:12])}{' …' if len(result['users']) > 12 else ''}); "
        f"queries: {result['n_queries']}; shots: {cfg['shots']}; seed: {cfg['seed']}.",
        f"Judge: **{result['judge']['name']}**. Baseline: **{base}**. "
        f"Win rate = (wins + ½ ties) / n; {int(100 * cfg['ci_level'])}% percentile bootstrap CI "
        f"({cfg['n_boot']} resamples over {cfg['bootstrap_unit']}s); two-sided sign test on wins vs losses.",
        "",
        "| method | model | n | win rate vs " + base + " [95% CI] | W / T / L | sign-test p | flip rate"
        f" | attribute match | reward acc. (N={cfg['shots']}) | on-topic | degenerate | acceptable | mean base NLL |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, row in result["methods"].items():
        wr = result["win_rate"].get(method)
        ra = (result.get("reward_accuracy") or {}).get(method, {}).get("splits", {}).get("heldout_users")
        ra_txt = "–"
        if ra:
            pt = ra["points"].get(str(cfg["shots"]))
            if pt:
                ra_txt = f"{_fmt(pt['accuracy'])} ({'h' if ra['metric'] == 'implicit_reward' else 'LL'})"
        am = row.get("attribute_match")
        am_txt = _fmt(am["all"]) if am else "–"
        q_txt = _quality_cells(row.get("quality"))
        if wr is None:
            lines.append(
                f"| {method} | `{row['model']}` | {row['n']} | (baseline) | | | | {am_txt} | {ra_txt} | {q_txt} |"
            )
            continue
        lines.append(
            f"| {method} | `{row['model']}` | {wr['n']} | {_fmt(wr['win_rate'])}{_ci(wr['ci'])} | "
            f"{wr['wins']} / {wr['ties']} / {wr['losses']} | {wr['sign_test_p']:.3g} | {_fmt(wr['flip_rate'])} | "
            f"{am_txt} | {ra_txt} | {q_txt} |"
        )
    lines += _acceptability_lines(result)
    lines += _description_lines(result)
    lines += ["", "![win rate](win_rate.png)", ""]
    if result.get("reward_accuracy"):
        lines += ["## Reward accuracy vs shots", ""]
        lines += [
            "h>0: implicit reward of a trained model against its reference; LL: log-likelihood comparison of an "
            "untrained model. Wilson 95% intervals (episodes treated as independent; they share users).",
            "",
        ]
        for split in ("heldout_users", "heldout_questions"):
            curves = {m: c["splits"][split] for m, c in result["reward_accuracy"].items() if split in c["splits"]}
            if not curves:
                continue
            shots = sorted({int(k) for c in curves.values() for k in c["points"]})
            lines += [f"**{split.replace('_', ' ')}**", ""]
            lines += ["| method | metric | " + " | ".join(f"N={n}" for n in shots) + " |"]
            lines += ["|---|---|" + "---|" * len(shots)]
            for m, c in curves.items():
                cells = [
                    f"{_fmt(c['points'][str(n)]['accuracy'])} (n={c['points'][str(n)]['n']})"
                    if str(n) in c["points"]
                    else "–"
                    for n in shots
                ]
                lines.append(f"| {m} | {c['metric']}, {c['reduction']} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["![reward accuracy vs shots](reward_accuracy_vs_shots.png)", ""]
    lines += _voice_lines(result)
    lines += ["## Per-user win rates", ""]
    for method, wr in result["win_rate"].items():
        cells = ", ".join(f"{u}: {_fmt(s['win_rate'])} ({s['n']})" for u, s in wr["per_user"].items())
        lines.append(f"- **{method}**: {cells}")
    lines += _sample_lines(result)
    judge = result["judge"]
    if judge.get("kinds"):
        lines += ["", "## Judge consistency", ""]
        for method, kinds in judge["kinds"].items():
            lines.append(f"- {method}: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    lines += ["", f"Wall time: {result['timing']['total_s']:.1f} s.", ""]
    return "\n".join(lines)


def write_report(result: dict, out: str | Path) -> dict[str, str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"eval.json": str(out / "eval.json"), "report.md": str(out / "report.md")}
    if plot_win_rates(result, out / "win_rate.png"):
        files["win_rate.png"] = str(out / "win_rate.png")
    if plot_reward_accuracy(result, out / "reward_accuracy_vs_shots.png"):
        files["reward_accuracy_vs_shots.png"] = str(out / "reward_accuracy_vs_shots.png")
    result["files"] = sorted(files)
    write_text_atomic(out / "eval.json", json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    write_text_atomic(out / "report.md", render_markdown(result))
    return files
