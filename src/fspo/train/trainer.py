"""The training loop: SFT, DPO or IPO on few-shot episodes, readable top to bottom.

One stage = one loss. ``sft+ipo`` runs SFT, then IPO with the SFT model as both the starting
point and the frozen reference (the paper's recipe). Built on ``accelerate`` so the same loop
runs on a CPU here and under ``accelerate launch`` (DDP/FSDP) on GPUs.

A run folder is locked while training (a second ``fspo train`` on it fails at once) and carries
a fingerprint of what its weights depend on (:mod:`fspo.train.fingerprint`): a rerun resumes the
same run and refuses another one unless ``--overwrite``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fspo.data.io import load_data, lock_output, write_jsonl, write_text_atomic
from fspo.data.runs import FINAL_DIR, PRESETS, RUN_FILE, RunRecord, read_record
from fspo.data.truncation import TokenizedPair
from fspo.errors import FspoError, loading
from fspo.train import checkpoint as ckpt
from fspo.train.batching import collate_completions, completion_logps, pair_logps, pair_tokens
from fspo.train.config import TrainConfig
from fspo.train.data import PreparedData, prepare_training_data
from fspo.train.fingerprint import Fingerprint, data_digest, flatten, read_fingerprint
from fspo.train.losses import log_ratio_margin, preference_loss, sft_loss, with_nll_terms
from fspo.train.model_card import model_card


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    name = cfg.optim.optimizer
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.optim.weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=cfg.optim.weight_decay)
    return torch.optim.SGD(params, lr=lr, weight_decay=cfg.optim.weight_decay)


def lr_lambda(cfg: TrainConfig, total_steps: int):
    warmup, schedule = cfg.optim.warmup_steps, cfg.optim.schedule

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def batch_indices(
    n_items: int, step: int, micro: int, cfg: TrainConfig, seed: int, rank: int = 0, world: int = 1
) -> list[int]:
    """The pairs process ``rank`` of ``world`` trains on in micro-batch ``micro`` of optimizer step ``step``.

    ``optim.batch_size`` is the per-process micro-batch (TRL's convention), so one optimizer step
    takes batch_size x world x grad_accum pairs. They are consecutive positions of one deterministic
    data order (epoch-wise seeded permutations): step s always sees the same pairs, no pair is
    used twice within a step (while the step's pairs fit in an epoch), and micro-batch m of a run on
    ``world`` processes covers exactly micro-batch m of one process with ``batch_size x world``.
    With one process this is the order fspo always used."""
    bs = cfg.optim.batch_size
    start = ((step * cfg.optim.grad_accum + micro) * world + rank) * bs
    out = []
    for pos in range(start, start + bs):
        epoch, offset = divmod(pos, n_items)
        perm = list(range(n_items))
        random.Random(f"fspo-data:{seed}:{epoch}").shuffle(perm)
        out.append(perm[offset])
    return out


def load_policy(spec: str, cfg: TrainConfig, resume_from: Path | None):
    """The trainable model: from a checkpoint when resuming, else from ``spec``; LoRA wraps it."""
    from fspo.models.registry import load_model

    if resume_from is not None and not cfg.model.lora:
        model, tok = load_model(str(resume_from), cfg.model.dtype, seed=cfg.seed)
    else:
        model, tok = load_model(spec, cfg.model.dtype, seed=cfg.seed)
    if cfg.model.lora:
        from peft import LoraConfig, PeftModel, get_peft_model

        if resume_from is not None:
            model = PeftModel.from_pretrained(model, str(resume_from), is_trainable=True)
        else:
            lora = LoraConfig(
                r=cfg.model.lora_r,
                lora_alpha=cfg.model.lora_alpha,
                lora_dropout=cfg.model.lora_dropout,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.model.lora:
            model.enable_input_require_grads()
    model.config.use_cache = False
    return model, tok


def _packing(cfg: TrainConfig) -> tuple[bool, int]:
    """(shared_prefix, queries_per_tree) for :func:`pair_logps`: trees imply the shared-prefix path."""
    trees = cfg.data.queries_per_tree
    return cfg.optim.shared_prefix or trees > 1, trees


def reference_logps(policy, ref_model, pairs, cfg: TrainConfig, pad_id: int, device):
    """Reference log-probs: a frozen copy, or the policy with its LoRA adapters disabled."""
    with torch.no_grad():
        if ref_model is not None:
            return pair_logps(ref_model, pairs, pad_id, cfg.loss.reduction, device, *_packing(cfg))
        from accelerate.utils import extract_model_from_parallel

        with extract_model_from_parallel(policy).disable_adapter():  # the PeftModel inside a DDP wrapper
            return pair_logps(policy, pairs, pad_id, cfg.loss.reduction, device, *_packing(cfg))


def evaluate(policy, ref_model, pairs: list[TokenizedPair], cfg: TrainConfig, pad_id: int, device, stage: str) -> dict:
    """Held-out accuracy. ``ll_accuracy``: the policy's own log-likelihood ranks chosen first (the
    only meaningful number for an untrained or SFT model); ``reward_accuracy``: the implicit reward
    β·log(π/π_ref) does (preference stages)."""
    if not pairs:
        return {}
    policy.eval()
    ll_correct, rw_correct, margins, nll = 0, 0, [], []
    with torch.no_grad():
        for i in range(0, len(pairs), cfg.optim.batch_size):
            chunk = pairs[i : i + cfg.optim.batch_size]
            pc, pr = pair_logps(policy, chunk, pad_id, cfg.loss.reduction, device, cfg.optim.shared_prefix)
            ll_correct += int((pc > pr).sum())
            nll += (-pc).tolist()
            if stage != "sft":
                rc, rr = reference_logps(policy, ref_model, chunk, cfg, pad_id, device)
                h = log_ratio_margin(pc, pr, rc, rr)
                rw_correct += int((h > 0).sum())
                margins += (cfg.loss.beta * h).tolist()
    policy.train()
    out = {"eval/ll_accuracy": ll_correct / len(pairs), "eval/chosen_nll": sum(nll) / len(nll)}
    if stage != "sft":
        out.update({"eval/reward_accuracy": rw_correct / len(pairs), "eval/margin": sum(margins) / len(margins)})
    return out


def stage_loss(stage, policy, ref_model, pairs, cfg: TrainConfig, pad_id: int, device):
    """Loss, metrics and processed-token count of one micro-batch."""
    if stage == "sft":
        # Chosen completions only by default; the reference code also trains on rejected ones.
        completions = [p.chosen_ids for p in pairs] + ([p.rejected_ids for p in pairs] if cfg.loss.sft_rejected else [])
        prompts = [p.prompt_ids for p in pairs] * (2 if cfg.loss.sft_rejected else 1)
        batch = collate_completions(prompts, completions, pad_id).to(device)
        logps = completion_logps(policy, batch, cfg.loss.reduction)
        loss = sft_loss(logps)
        return loss, {"loss": loss.item(), "nll": -logps.mean().item()}, batch.tokens
    pc, pr = pair_logps(policy, pairs, pad_id, cfg.loss.reduction, device, *_packing(cfg))
    rc, rr = reference_logps(policy, ref_model, pairs, cfg, pad_id, device)
    h = log_ratio_margin(pc, pr, rc, rr)
    losses = preference_loss(stage, h, cfg.loss.beta, cfg.loss.label_smoothing)
    terms = [(cfg.loss.sft_weight, pc)]
    if cfg.loss.description_weight > 0:
        # The whole chosen completion (header, RAT's description, answer): one more forward pass.
        full = collate_completions([p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs], pad_id).to(device)
        full_chosen = completion_logps(policy, full, cfg.loss.reduction)
        terms.append((cfg.loss.description_weight, full_chosen))
    loss = with_nll_terms(losses, terms)
    beta = cfg.loss.beta
    metrics = {
        "loss": loss.item(),
        "rewards/accuracies": (h > 0).float().mean().item(),  # TRL's metric names, so dashboards work
        "rewards/margins": (beta * h).mean().item(),
        "rewards/chosen": (beta * (pc - rc)).mean().item(),
        "rewards/rejected": (beta * (pr - rr)).mean().item(),
        "logps/chosen": pc.mean().item(),
        "logps/rejected": pr.mean().item(),
    }
    tokens = pair_tokens(pairs, *_packing(cfg))
    if cfg.loss.description_weight > 0:
        metrics["nll/full_chosen"] = -full_chosen.mean().item()
        tokens += full.tokens
    return loss, metrics, tokens


def save_checkpoint(
    accelerator, policy, tokenizer, optimizer, scheduler, stage_dir: Path, step: int, cfg: TrainConfig
) -> None:
    """Called by every process: gathering an FSDP model and ``accelerator.save_state`` (the optimizer
    and scheduler prepared with it, and each process's RNG state) need them all. The main process
    writes the model and the step; the folder appears under its final name only when all are done.
    ``optimizer`` and ``scheduler`` are the ones ``accelerator.prepare`` returned (saved through it)."""
    main = accelerator.is_main_process

    def write(tmp: Path) -> None:
        state_dict = accelerator.get_state_dict(policy)  # a collective under FSDP
        if main:
            accelerator.unwrap_model(policy).save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
        accelerator.save_state(str(tmp))  # the model is left out by the pre-hook set in run_stage (not FSDP's)
        if main:
            state = {"step": step, "num_processes": accelerator.num_processes}
            (tmp / ckpt.STATE_FILE).write_text(json.dumps(state))

    ckpt.shared_atomic_dir(accelerator, stage_dir / "checkpoints" / f"step-{step:06d}", write)
    if main:
        ckpt.prune(stage_dir, cfg.keep_checkpoints)


def save_final(accelerator, policy, tokenizer, final_dir: Path, cfg: TrainConfig) -> None:
    """The stage's result as a plain HF model folder (LoRA merged) that ``from_pretrained`` loads.
    Called by every process (gathering an FSDP model needs them all); the main process writes."""
    model, main = accelerator.unwrap_model(policy), accelerator.is_main_process

    def write(tmp: Path) -> None:
        if cfg.model.lora:
            if main:
                model.save_pretrained(tmp / "adapter")
                merged = model.merge_and_unload()
                merged.save_pretrained(tmp)
        else:
            state_dict = accelerator.get_state_dict(policy)  # a collective under FSDP
            if main:
                model.save_pretrained(tmp, state_dict=state_dict)
        if main:
            tokenizer.save_pretrained(tmp)

    ckpt.shared_atomic_dir(accelerator, final_dir, write)


def read_metrics(path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl``. A kill -9 can tear the last line; that line (and any other
    unreadable one) is dropped with a note, not a crash."""
    if not path.exists():
        return []
    rows, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            bad += 1
    if bad:
        print(f"{path}: dropped {bad} unreadable row(s) (a torn last line after a kill?)")
    return rows


def truncate_metrics(path: Path, step: int | None) -> None:
    """Keep the rows up to ``step`` (the checkpoint a run resumes from), so no step is logged twice;
    ``None`` (starting from scratch) drops them all, the step-0 row included."""
    if not path.exists():
        return
    rows = read_metrics(path) if step is not None else []
    write_jsonl(path, [r for r in rows if r["step"] <= step] if step is not None else [])


def tracker_config(stage: str, cfg: TrainConfig) -> dict:
    """The config as tensorboard's hparams (and wandb) take it: dotted keys, scalar values."""
    flat = {"stage": stage, **flatten(asdict(cfg))}
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}


def stage_steps(cfg: TrainConfig, stage: str) -> int:
    two_stage = len(cfg.stages()) > 1
    return (cfg.optim.sft_steps or cfg.optim.steps) if (stage == "sft" and two_stage) else cfg.optim.steps


def tracker_setup(cfg: TrainConfig, stage: str, start_step: int) -> tuple[str, dict, int]:
    """(project name, init kwargs, step offset) for ``report_to``.

    wandb: one run per training command, named after the run folder, with a stable id so every
    stage (and a resumed process) logs into the same run; a later stage's steps continue after
    the earlier stages' (wandb needs increasing steps). tensorboard: one log folder per stage,
    dropping events a killed run logged past its checkpoint."""
    import hashlib

    if cfg.report_to == "wandb":
        out = str(Path(cfg.out).resolve())
        run_id = "fspo-" + hashlib.sha256(out.encode()).hexdigest()[:12]
        offset = sum(stage_steps(cfg, s) for s in cfg.stages()[: cfg.stages().index(stage)])
        return "fspo", {"wandb": {"name": Path(cfg.out).name, "id": run_id, "resume": "allow"}}, offset
    return f"fspo-{stage}", {"tensorboard": {"purge_step": start_step + 1}}, 0


def run_stage(stage: str, cfg: TrainConfig, init_spec: str, ref_spec: str | None, data: PreparedData, stage_dir: Path):
    """Train one stage to ``cfg.optim.steps`` (or ``sft_steps``) optimizer steps; return the final folder."""
    from accelerate import Accelerator

    final_dir = stage_dir / "final"
    if (final_dir / "config.json").exists():
        print(f"[{stage}] already finished: {final_dir}")
        if not cfg.keep_checkpoints_after_finish and _is_main_process():
            ckpt.remove_all(stage_dir)  # killed between writing final/ and deleting them
        return final_dir
    two_stage = len(cfg.stages()) > 1
    steps = stage_steps(cfg, stage)
    lr = (cfg.optim.sft_lr or cfg.optim.lr) if (stage == "sft" and two_stage) else cfg.optim.lr
    log_with = None if cfg.report_to == "none" else cfg.report_to
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        log_with=log_with,
        project_dir=str(stage_dir),
        mixed_precision="no",
        # One scheduler step per optimizer step. By default accelerate steps it once per process
        # (its dataloaders scale the step count), which would run the warm-up and decay too fast.
        step_scheduler_with_optimizer=False,
    )
    # Checkpoints hold the model as a Hugging Face folder (save_pretrained, loaded by load_policy):
    # accelerate's save_state/load_state keep the optimizer, scheduler and RNG states and skip the
    # model. (Under FSDP accelerate saves and loads its own copy of the model regardless.)
    accelerator.register_save_state_pre_hook(lambda models, weights, _dir: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, _dir: models.clear())
    set_seed(cfg.seed)
    resume = ckpt.latest_checkpoint(stage_dir)
    state = ckpt.read_state(resume) if resume else {"step": 0}
    start_step = state["step"]
    damaged = f"delete {resume} to resume from an older checkpoint, or use --overwrite"
    if resume and state.get("num_processes", 1) != accelerator.num_processes:
        raise FspoError(
            f"{resume}: written by {state.get('num_processes', 1)} process(es), resumed with "
            f"{accelerator.num_processes}: the data order and the saved RNG states depend on it; "
            f"resume with {state.get('num_processes', 1)}, or use --overwrite"
        )
    with loading(f"{resume}: cannot resume", damaged) if resume else loading(f"{init_spec}: cannot load the model"):
        policy, tok = load_policy(init_spec, cfg, resume)
    ref_model = None
    if stage != "sft" and not cfg.model.lora:
        from fspo.models.registry import load_model

        with loading(f"{ref_spec or init_spec}: cannot load the reference model"):
            ref_model, _ = load_model(ref_spec or init_spec, cfg.model.dtype, seed=cfg.seed)
        ref_model.requires_grad_(False).eval()
        ref_model.to(accelerator.device)
    optimizer = build_optimizer(policy, cfg, lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps))
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    metrics_path = stage_dir / "metrics.jsonl"
    if resume:
        with loading(f"{resume}: cannot resume", damaged):
            if (resume / "optimizer.pt").exists():  # a checkpoint from an fspo before accelerate's state
                optimizer.load_state_dict(torch.load(resume / "optimizer.pt", weights_only=True))
                scheduler.load_state_dict(torch.load(resume / "scheduler.pt", weights_only=True))
            else:
                accelerator.load_state(str(resume))  # optimizer, scheduler, this process's RNG state
        accelerator.print(f"[{stage}] resuming from {resume} (step {start_step}/{steps})")
    if accelerator.is_main_process:
        # Rows past the checkpoint are logged again; without a checkpoint every row is.
        truncate_metrics(metrics_path, start_step if resume else None)
    project, init_kwargs, step_offset = tracker_setup(cfg, stage, start_step)
    if log_with:
        accelerator.init_trackers(project, config=tracker_config(stage, cfg), init_kwargs=init_kwargs)
    policy.train()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    world, rank = accelerator.num_processes, accelerator.process_index
    if (
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        and accelerator.distributed_type.value != "FSDP"
    ):
        accelerator.print(
            f"[{stage}] note: FSDP was asked for, but accelerate runs {accelerator.distributed_type.value} "
            "(it shards only on GPUs and other accelerators): every process holds the whole model"
        )
    if world > 1:
        accelerator.print(
            f"[{stage}] {world} processes ({accelerator.distributed_type.value}, {accelerator.state.backend}): "
            f"{cfg.optim.batch_size} x {world} x {cfg.optim.grad_accum} = "
            f"{cfg.optim.batch_size * world * cfg.optim.grad_accum} pairs per optimizer step"
        )
    bar = tqdm(
        total=steps,
        initial=start_step,
        desc=f"train {stage}",
        disable=not (cfg.progress and accelerator.is_main_process),
    )
    stage_dir.mkdir(parents=True, exist_ok=True)
    with open(metrics_path, "a", encoding="utf-8") as log:
        if data.eval and start_step == 0 and cfg.eval_every:
            # The starting point. Policy == reference here, so the implicit reward is identically 0:
            # only the log-likelihood comparison is informative.
            start = evaluate(policy, ref_model, data.eval, cfg, pad_id, accelerator.device, "sft")
            row = {"stage": stage, "step": 0, **start}
            if accelerator.is_main_process:
                log.write(json.dumps(row) + "\n")
            accelerator.print(f"[{stage}] step 0: held-out ll_accuracy {row['eval/ll_accuracy']:.3f}")
        for step in range(start_step, steps):
            t0 = time.perf_counter()
            tokens, agg = 0, {}
            for micro in range(cfg.optim.grad_accum):
                # batch_size pairs of this process's own (the step takes batch_size x world x grad_accum)
                # (with trees: batch_size trees of this process's own, their pairs in one list)
                units = data.units
                picked = batch_indices(len(units), step, micro, cfg, cfg.seed, rank, world)
                mine = [data.train[i] for u in picked for i in units[u]]
                last = micro == cfg.optim.grad_accum - 1
                with nullcontext() if last else accelerator.no_sync(policy):
                    loss, m, n_tok = stage_loss(stage, policy, ref_model, mine, cfg, pad_id, accelerator.device)
                    accelerator.backward(loss / cfg.optim.grad_accum)
                tokens += n_tok
                for k, v in m.items():
                    agg[k] = agg.get(k, 0.0) + v / cfg.optim.grad_accum
            if world > 1:  # the logged metrics are means over every process's pairs, tokens their sum
                keys = sorted(agg)
                local = torch.tensor([agg[k] for k in keys] + [tokens], dtype=torch.float64, device=accelerator.device)
                total = accelerator.reduce(local, "sum").tolist()
                agg, tokens = {k: v / world for k, v in zip(keys, total)}, int(total[-1])
            grad_norm = None
            if cfg.optim.max_grad_norm > 0:
                grad_norm = float(accelerator.clip_grad_norm_(policy.parameters(), cfg.optim.max_grad_norm))
            step_lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler then moves on)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - t0
            row = {
                "stage": stage,
                "step": step + 1,
                **agg,
                "lr": step_lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tokens / seconds,
                "step_seconds": seconds,
            }
            done = step + 1
            if data.eval and ((cfg.eval_every and done % cfg.eval_every == 0) or done == steps):
                row.update(evaluate(policy, ref_model, data.eval, cfg, pad_id, accelerator.device, stage))
            if accelerator.is_main_process and (done % cfg.log_every == 0 or done == steps or "eval/chosen_nll" in row):
                log.write(json.dumps(row) + "\n")
                log.flush()
                if log_with:
                    scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
                    if cfg.report_to == "wandb":  # both stages in one run: name the stage in the key
                        scalars = {f"{stage}/{k}": v for k, v in scalars.items()}
                    accelerator.log(scalars, step=step_offset + done)
            bar.set_postfix(
                {k: f"{row[k]:.3g}" for k in ("loss", "rewards/accuracies", "eval/reward_accuracy") if k in row}
            )
            bar.update(1)
            if cfg.save_every and done % cfg.save_every == 0 and done < steps:
                save_checkpoint(accelerator, policy, tok, optimizer, scheduler, stage_dir, done, cfg)
    bar.close()
    save_final(accelerator, policy, tok, final_dir, cfg)
    if accelerator.is_main_process and not cfg.keep_checkpoints_after_finish:
        ckpt.remove_all(stage_dir)  # a finished stage resumes from final/; each checkpoint is ~3x the model
    if log_with:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return final_dir


def run_metrics(stage_dirs: dict[str, str]) -> dict[str, float]:
    """Each stage's last logged value of every metric (``ipo/eval/reward_accuracy``...), for the record."""
    out: dict[str, float] = {}
    for stage, final in stage_dirs.items():
        for row in read_metrics(Path(final).parent / "metrics.jsonl"):
            for key, value in row.items():
                if key in ("stage", "tokens_per_s", "step_seconds") or isinstance(value, bool):
                    continue
                if isinstance(value, (int, float)) and math.isfinite(value):
                    out[f"{stage}/{key}"] = value
    return out


def write_run_record(
    cfg: TrainConfig,
    out: Path,
    stage_dirs: dict[str, str],
    data: PreparedData,
    fingerprint: str | None = None,
    command: str | None = None,
) -> RunRecord:
    """The run record, into the run folder and into ``final/`` with a model card (so the model
    folder works alone). ``command``: how training was started, for the card."""
    from fspo import __version__

    stages = {stage: str(Path(path).relative_to(out)) for stage, path in stage_dirs.items()}
    if len(stages) > 1 and "sft" in stages:
        reference = stages["sft"]  # after SFT, the SFT model is the reference
    else:
        reference = cfg.model.ref or cfg.model.name
        if Path(reference).is_dir():
            reference = str(Path(reference).resolve())
    base = str(Path(cfg.model.name).resolve()) if Path(cfg.model.name).is_dir() else cfg.model.name
    record = RunRecord(
        base_model=base,
        layout=cfg.data.layout,
        n_shots=cfg.data.shots,
        max_length=cfg.data.max_length,
        chat_template=cfg.data.chat_template,
        reduction=cfg.loss.reduction,
        loss=cfg.loss.name,
        beta=cfg.loss.beta,
        reference=reference,
        stages=stages,
        heldout_users=tuple(data.heldout_users),
        fingerprint=fingerprint,
        config=asdict(cfg),
        data_summary=tuple(data.lines()),
        metrics=run_metrics(stage_dirs),
        fspo_version=__version__,
    )
    record.write(out)
    record.relocated(FINAL_DIR).write(out / FINAL_DIR)
    command = command or "fspo.train.trainer.train(TrainConfig(...)) with the config in the run record"
    write_text_atomic(out / FINAL_DIR / "README.md", model_card(record, command))
    return record


def _is_main_process() -> bool:
    """Rank 0 (or no distributed launch): the one process that writes the run folder."""
    return int(os.environ.get("RANK", "0")) == 0


def _wait_for_everyone() -> None:
    """A barrier across ``accelerate launch`` processes (nothing to wait for in one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()


def check_run_folder(out: Path, fp: Fingerprint, cfg: TrainConfig) -> str:
    """Decide what a run in ``out`` becomes: ``"new"``, ``"continue"`` (the same run: resume it, or
    it is finished), or ``"overwrite"``. Reads only; a different run is refused, naming what changed."""
    for option, spec in (("model.name", cfg.model.name), ("model.ref", cfg.model.ref)):
        if spec and spec not in PRESETS and Path(spec).is_dir() and Path(spec).resolve().is_relative_to(out.resolve()):
            raise FspoError(f"{option} {spec} is inside --out {out}; train into another folder")
    found = ckpt.run_entries(out)
    if cfg.overwrite:
        return "overwrite" if found else "new"
    old = read_fingerprint(out)
    if old is not None:
        diffs = fp.differences(old)
    elif found:
        try:
            record = read_record(out)
        except FspoError as exc:
            raise FspoError(f"{exc}; use --overwrite to start over") from None
        if record is None:
            raise FspoError(
                f"{out}: holds {', '.join(found)} but no fingerprint (a run from an older fspo, or not a run); "
                "use --overwrite to delete them and start over"
            )
        diffs = fp.legacy_differences(record.config, asdict(cfg))
        if not diffs:
            print(f"{out}: a run from before fingerprints; its data and base model cannot be checked")
    else:
        return "new"
    if diffs:
        shown = ", ".join(diffs[:6]) + (f", and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise FspoError(f"{out}: trained with a different configuration ({shown}); use --overwrite to start over")
    return "continue"


def train(cfg: TrainConfig, command: str | None = None) -> Path:
    """Run every stage of ``cfg.loss.name``; return the run folder (its ``final/`` is the model).

    The folder is locked for the whole run and its fingerprint is written before anything else.
    A data or model error leaves no folder behind (nor anything in an existing one)."""
    out = Path(cfg.out)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main = _is_main_process()
    missing = [p for p in (out, *out.parents) if not p.exists()]  # folders this run would create
    try:
        _train(cfg, out, main, command)
    except BaseException:
        # lock_output removes an --out it created if nothing was written; then its empty parents go too.
        if main and missing and not out.exists():
            for parent in missing[1:]:
                try:
                    parent.rmdir()
                except OSError:
                    break
        raise
    if main:
        print(f"model: {out / 'final'}")
    return out


def _stage_dir(out: Path, cfg: TrainConfig, stage: str) -> Path:
    """A two-stage run keeps each stage in its own folder; a one-stage run is its folder."""
    return out / stage if len(cfg.stages()) > 1 else out


def _finished(out: Path, cfg: TrainConfig) -> bool:
    """Every stage wrote its final model and the run its record."""
    finals = [_stage_dir(out, cfg, s) / FINAL_DIR for s in cfg.stages()] + [out / FINAL_DIR]
    return all((f / "config.json").exists() for f in finals) and (out / RUN_FILE).exists()


def _train(cfg: TrainConfig, out: Path, main: bool, command: str | None) -> None:
    from fspo.models.registry import load_tokenizer

    with lock_output(out) if main else nullcontext(out):
        with loading(f"{cfg.model.name}: cannot load the tokenizer"):
            tok = load_tokenizer(cfg.model.name)
        records = load_data(cfg.data.path)
        fp = Fingerprint.of(cfg, data_digest(records.prefs, records.users))
        plan = check_run_folder(out, fp, cfg)
        if plan == "continue" and _finished(out, cfg):
            # the same run, finished: nothing to tokenize or train (on 240 users that took minutes)
            if main:
                fp.write(out)  # a run from before fingerprints gets one
                # the record follows the rerun's run options and data path, as after training
                record = replace(read_record(out), config=asdict(cfg), fingerprint=fp.digest)
                record.write(out)
                record.relocated(FINAL_DIR).write(out / FINAL_DIR)
                for stage in cfg.stages():
                    print(f"[{stage}] already finished: {_stage_dir(out, cfg, stage) / FINAL_DIR}")
            return
        data = prepare_training_data(cfg.data, tok, cfg.seed, records)
        for line in data.lines() if main else []:
            print(line)
        _wait_for_everyone()  # every process has looked at the folder before the main one changes it
        if main:
            if plan == "overwrite":
                removed = ckpt.remove_run(out)
                print(f"{out}: --overwrite: deleted the previous run ({', '.join(removed)})")
            fp.write(out)
            write_jsonl(out / "heldout_users.jsonl", [{"user_id": u} for u in data.heldout_users])
        _wait_for_everyone()
        init, ref = cfg.model.name, cfg.model.ref
        stage_dirs = {}
        for stage in cfg.stages():
            final = run_stage(stage, cfg, init, ref, data, _stage_dir(out, cfg, stage))
            stage_dirs[stage] = str(final)
            init = str(final)
            ref = None  # after SFT, the SFT model is both the start and the reference
        if main:
            if len(cfg.stages()) > 1:
                ckpt.link_tree(Path(stage_dirs[cfg.stages()[-1]]), out / "final")
            write_run_record(cfg, out, stage_dirs, data, fp.digest, command)
