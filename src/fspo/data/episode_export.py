"""FSPO episodes as TRL preference rows, so TRL's ``DPOTrainer`` (or any DPO trainer) trains FSPO.

Each row is one rendered episode: ``prompt`` is the FSPO prompt with the user's N shots and the
query question, ``chosen``/``rejected`` are the two completions exactly as fspo trains on them
(the layout's response header, RAT's description, then the answer), and ``user_id`` names the
user. The episodes are the ones ``fspo train`` samples (same seed, resampling and held-out users),
and with a tokenizer the shots are fitted to the same token budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fspo.data.episodes import build_episodes
from fspo.data.io import PreferenceData, atomic_dir, open_atomic, write_jsonl
from fspo.data.prompts import layout_of, render_episode
from fspo.data.splits import heldout_records, heldout_user_ids, training_records
from fspo.data.truncation import EpisodeTokenizer
from fspo.errors import FspoError

FORMATS = ("jsonl", "parquet", "datasets")


def episode_rows(
    data: PreferenceData,
    split: str = "train",
    shots: int = 4,
    layout: str = "fspo",
    seed: int = 0,
    resamples: int | None = None,
    heldout_fraction: float = 0.0,
    tokenizer=None,
    max_length: int | None = None,
) -> Iterator[dict]:
    """Rendered episodes of the training users (``split="train"``) or of the held-out users
    (``"test"``); never both in one export."""
    descriptions = {u.user_id: u.description for u in data.users.values() if u.description}
    spec = layout_of(layout)
    if spec.needs_description and not descriptions:
        raise FspoError(f"{data.source}: the {spec.name} layout needs user descriptions (users.jsonl)")
    _, heldout = heldout_user_ids(data, heldout_fraction, seed)
    rows = training_records(data.prefs, heldout) if split == "train" else heldout_records(data, heldout)
    episodes, _ = build_episodes(rows, shots, resamples if split == "train" else 1, seed, "shrink")
    enc = EpisodeTokenizer(tokenizer, max_length, spec, descriptions=descriptions) if tokenizer else None
    for ep in episodes:
        if enc is not None:
            pair = enc.tokenize(ep)
            if pair is None:
                continue  # too long even without shots: fspo train skips it too
            kept = ep.shots[len(ep.shots) - pair.n_shots :]
            rendered = enc.render(kept, ep.query)
        else:
            description = descriptions.get(ep.user_id)
            if spec.needs_description and not description:
                raise FspoError(f"user {ep.user_id!r} has no description, needed by the {spec.name} layout")
            kept = ep.shots if spec.shows_shots else ()
            rendered = render_episode(kept, ep.query, spec, description)
        yield {
            "prompt": rendered.prompt,
            "chosen": rendered.chosen,
            "rejected": rendered.rejected,
            "user_id": ep.user_id,
            "n_shots": len(kept),
        }


def write_rows(rows: list[dict], out: str | Path, fmt: str | None = None) -> str:
    """Write ``rows`` as JSONL, Parquet, or a ``datasets`` folder (``save_to_disk``), atomically.
    The format comes from ``fmt`` or the file name (``.jsonl``, ``.parquet``, else a folder)."""
    out = Path(out)
    fmt = fmt or {".jsonl": "jsonl", ".parquet": "parquet"}.get(out.suffix, "datasets")
    if fmt not in FORMATS:
        raise FspoError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "jsonl":
        write_jsonl(out, rows)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with open_atomic(out, binary=True) as f:
            pq.write_table(pa.Table.from_pylist(rows), f)
    else:
        from datasets import Dataset

        atomic_dir(out, lambda tmp: Dataset.from_list(rows).save_to_disk(str(tmp)))
    return fmt
