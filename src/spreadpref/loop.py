"""The SPA loop: seed DPO, then rounds of generate -> judge -> train, resumable at every stage.

Run directory::

    config.yaml  manifest.json  summary.json
    seed/                    DPO of pi_init on the seed pairs -> pi_0 (model/, log_history.json)
    round-1/prompts.jsonl    this round's fresh prompts
    round-1/generations.jsonl  K samples per prompt from pi_0 (token ids, text, finish reason)
    round-1/judged.jsonl     per sample: log-probs under pi_0 and the judge reference, score
    round-1/pairs.jsonl      chosen/rejected with margin, p and the reference log-probs for training
    round-1/train/           DPO of pi_0 on round 1's pairs with self-refinement -> pi_1 (model/)
    round-2/...

Each stage's fingerprint chains the configuration it depends on with its predecessor's, so adding
rounds never invalidates finished ones, and changing, say, the temperature refuses to mix runs.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spreadpref import distributed
from spreadpref.config import Config
from spreadpref.data import load_prompts, load_training_preferences
from spreadpref.errors import SpreadprefError
from spreadpref.io import atomic_write_json, read_jsonl, remove_stale_temporaries, write_jsonl
from spreadpref.manifest import Manifest
from spreadpref.models import load_model, load_tokenizer, resolve_device, resolve_model_path
from spreadpref.progress import console, format_cell
from spreadpref.schedule import round_sizes, schedule_prompts
from spreadpref.tokenize import TokenizedPair, tokenize_pairs
from spreadpref.train import COSMETIC_TRAIN_KEYS, peak_rss_gb, train_fingerprint, train_on_pairs

SEED_STAGE = "seed"


@dataclass
class RunResult:
    output_dir: Path
    final_model: Path
    summary: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_fingerprints(config: Config, sizes: list[int]) -> dict[str, str]:
    """One fingerprint per stage, in order; each includes the one before it."""
    dump = config.model_dump(mode="json")
    train = {k: v for k, v in dump["train"].items() if k not in COSMETIC_TRAIN_KEYS}
    prints = {SEED_STAGE: train_fingerprint(config)}
    previous = prints[SEED_STAGE]
    loop = dump["loop"]
    for i in range(1, len(sizes) + 1):
        name = f"round-{i}"
        generate = _hash(previous, dump["generation"], dump["data"]["prompts"], sizes[:i], dump["data"]["max_length"])
        judge = _hash(generate, dump["judge"], dump["train"]["beta"])
        refine = dict(dump["refine"], lam=config.refine.lam(i))
        trained = _hash(judge, train, refine, loop["epochs_per_round"], loop["learning_rate"])
        prints.update({f"{name}/generate": generate, f"{name}/judge": judge, f"{name}/train": trained})
        previous = trained
    return prints


def run(config: Config, force: bool = False) -> RunResult:
    """Run SPA end to end (or the rest of it): seed stage, then ``config.loop.rounds`` rounds."""
    root = Path(config.output_dir)
    manifest = Manifest(root)
    pool, pool_report = load_prompts(config.data.prompts, config.data.columns, skip_invalid=config.data.skip_invalid,
                                     system_prompt=config.data.system_prompt)
    sizes = round_sizes(len(pool), config.loop.rounds, config.loop.prompts_per_round)
    fingerprints = stage_fingerprints(config, sizes)
    _check_plan(root, manifest, fingerprints, force)
    if all(_done(manifest, name, fp) for name, fp in fingerprints.items()):
        console.print(f"[green]The run in {root} is already complete[/]; nothing to do (--force redoes it).")
        summary = _read_summary(root)
        print_round_table(summary)
        return RunResult(root, Path(summary.get("final_model", "")), summary, skipped=True)

    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        if remove_stale_temporaries(root):
            console.print("Removed temporary files left by an interrupted run.")
        config.save(root / "config.yaml")
    distributed.barrier()
    console.print(pool_report.summary())
    schedule = schedule_prompts(pool, sizes, config.seed)
    tokenizer = load_tokenizer(config.model)
    seed_pairs, seed_info = _seed_pairs(config, tokenizer)
    summary = _read_summary(root) or {"rounds": {}}
    summary["schedule"] = sizes

    model_path = _seed_stage(config, tokenizer, seed_pairs, seed_info, manifest, fingerprints[SEED_STAGE], summary)
    models = {0: model_path}
    for i in range(1, len(sizes) + 1):
        round_dir = root / f"round-{i}"
        row = summary["rounds"].setdefault(str(i), {"round": i})
        samples = _generate_stage(config, tokenizer, schedule[i - 1], models[i - 1], round_dir, i, manifest,
                                  fingerprints[f"round-{i}/generate"], row)
        _judge_stage(config, tokenizer, samples, schedule[i - 1], models, seed_pairs, round_dir, i, manifest,
                     fingerprints[f"round-{i}/judge"], row)
        models[i] = _train_stage(config, tokenizer, models[i - 1], round_dir, i, manifest,
                                 fingerprints[f"round-{i}/train"], row)
        _prune_models(root, models, i, config.loop.keep_models)
        summary["final_model"] = str(models[i])
        _write_summary(root, summary)
    summary["final_model"] = str(models[len(sizes)])
    summary["seconds_this_invocation"] = round(time.perf_counter() - started, 1)
    summary["peak_rss_gb"] = round(peak_rss_gb(), 2)
    _write_summary(root, summary)
    print_round_table(summary)
    if config.eval.after_run:
        from spreadpref.evaluate import evaluate

        evaluate(config, [str(root)], root / "eval")
    _write_report(root)
    console.print(f"Final model: {summary['final_model']}")
    return RunResult(root, Path(summary["final_model"]), summary)


# ---------------------------------------------------------------------------------------------
# Plan: what is done, what is stale


def _done(manifest: Manifest, name: str, fingerprint: str) -> bool:
    entry = manifest.stage(name)
    return bool(entry) and entry.get("status") == "complete" and entry.get("fingerprint") == fingerprint


def _stage_paths(root: Path, name: str) -> list[Path]:
    if name == SEED_STAGE:
        return [root / "seed"]
    round_name, stage = name.split("/")
    base = root / round_name
    files = {
        "generate": ["prompts.jsonl", "generations.jsonl", ".generations.jsonl.parts"],
        "judge": ["judged.jsonl", ".judged.jsonl.parts", "pairs.jsonl", "seed_agreement.json", "policy_logps.jsonl",
                  ".policy_logps.jsonl.parts", "verdicts.jsonl", ".verdicts.jsonl.parts"],
        "train": ["train"],
    }[stage]
    return [base / f for f in files]


def _check_plan(root: Path, manifest: Manifest, fingerprints: dict[str, str], force: bool) -> None:
    names = list(fingerprints)
    stale = [n for n in names if manifest.stage(n) and manifest.stage(n).get("fingerprint") != fingerprints[n]]
    if stale and not force:
        raise SpreadprefError(
            f"{root} holds stages made with a different configuration: {', '.join(stale)}. "
            f"Re-running would mix the two. Use another output directory, or --force to discard "
            f"{stale[0]} and everything after it."
        )
    if not force:
        return
    complete = all(_done(manifest, n, fp) for n, fp in fingerprints.items())
    first = stale[0] if stale else (names[0] if complete else None)
    if first is None:
        return
    if not distributed.is_main():
        distributed.barrier()  # the main process deletes; the others only forget
        for name in names[names.index(first):]:
            manifest.data["stages"].pop(name, None)
        return
    for name in names[names.index(first):]:
        for path in _stage_paths(root, name):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
        manifest.reset(name)
    console.print(f"[yellow]--force:[/] discarded {first} and every stage after it.")
    distributed.barrier()


# ---------------------------------------------------------------------------------------------
# Stages


def _seed_pairs(config: Config, tokenizer: Any) -> tuple[list[TokenizedPair], dict[str, Any]]:
    records, report = load_training_preferences(config.data)
    pairs, truncation = tokenize_pairs(tokenizer, records, config.data.max_length, config.data.max_prompt_length)
    info = {"pairs": len(pairs), "skipped_invalid": report.skipped, "prompts_truncated": truncation.prompts_truncated,
            "replies_truncated": truncation.replies_truncated}
    return pairs, info


def _seed_stage(config, tokenizer, seed_pairs, seed_info, manifest, fingerprint, summary) -> Path:
    root = Path(config.output_dir)
    entry = manifest.stage(SEED_STAGE)
    if _done(manifest, SEED_STAGE, fingerprint):
        return Path(entry["outputs"]["model"])
    console.rule("[bold]Seed stage: DPO of the initial model on the seed pairs")
    from transformers import set_seed

    set_seed(config.seed)
    manifest.start(SEED_STAGE, fingerprint, data=seed_info)
    started = time.perf_counter()
    # A fresh copy: the reference log-probs get filled in on these pairs.
    pairs = [TokenizedPair(**vars(p)) for p in seed_pairs]
    outputs, metrics = train_on_pairs(config, tokenizer, pairs, root / "seed", merge_lora=True,
                                      on_reference=lambda info: manifest.update(SEED_STAGE, reference=info))
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    manifest.complete(SEED_STAGE, outputs=outputs, metrics=metrics)
    summary["seed"] = {"pairs": len(pairs), "train_loss": metrics["train_loss"],
                       "reward_accuracy": metrics.get("final/rewards_accuracy"), "seconds": metrics["seconds"]}
    _write_summary(root, summary)
    return Path(outputs["model"])


def load_eval_model(config: Config, path: Path | str):
    model = load_model(config.model, path=str(path))
    model.to(resolve_device(config.model.device))
    model.eval()
    return model


def _generate_stage(config, tokenizer, prompts, policy_path, round_dir, i, manifest, fingerprint, row):
    from spreadpref.generate import generate_samples, generate_samples_vllm

    name = f"round-{i}/generate"
    out = round_dir / "generations.jsonl"
    if _done(manifest, name, fingerprint):
        return read_jsonl(out)
    console.rule(f"[bold]Round {i}: generate {config.generation.num_samples} replies for {len(prompts)} prompts")
    manifest.start(name, fingerprint)
    round_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        write_jsonl(round_dir / "prompts.jsonl", [{"id": p.id, "prompt": p.prompt} for p in prompts])
    started = time.perf_counter()
    if config.generation.backend == "vllm":
        samples = generate_samples_vllm(str(policy_path), tokenizer, prompts, config.generation, config.data,
                                        config.seed, out, i, dtype=config.model.dtype)
    else:
        policy = load_eval_model(config, policy_path)
        samples = generate_samples(policy, tokenizer, prompts, config.generation, config.data, config.seed, out, i)
        del policy
        gc.collect()
    seconds = time.perf_counter() - started
    tokens = sum(s["num_tokens"] for s in samples)
    metrics = {"prompts": len(prompts), "samples": len(samples), "generated_tokens": tokens,
               "seconds": round(seconds, 1), "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
               "cut_off_fraction": sum(s["finish_reason"] == "length" for s in samples) / max(len(samples), 1)}
    manifest.complete(name, outputs={"generations": str(out)}, metrics=metrics)
    row.update(prompts=len(prompts), generate_seconds=metrics["seconds"],
               generate_tokens_per_second=metrics["tokens_per_second"])
    return samples


def _judge_reference_path(config: Config, models: dict[int, Path], i: int) -> str | None:
    if config.judge.reference == "none":
        return None
    if config.judge.reference == "previous" and i >= 2:
        return str(models[i - 2])
    return resolve_model_path(config.model.name_or_path)  # pi_init


def _judge_stage(config, tokenizer, samples, prompts, models, seed_pairs, round_dir, i, manifest, fingerprint, row):
    from spreadpref.judge import judge_samples, pair_samples, seed_agreement

    name = f"round-{i}/judge"
    if _done(manifest, name, fingerprint):
        return
    kind = config.judge.kind
    console.rule(f"[bold]Round {i}: judge {len(samples)} samples "
                 f"({'by the implicit reward' if kind == 'implicit' else f'with the {kind} judge'})")
    manifest.start(name, fingerprint)
    started = time.perf_counter()
    policy = load_eval_model(config, models[i - 1])
    reference_path = _judge_reference_path(config, models, i)
    if kind != "implicit" and not config.judge.seed_agreement:
        reference_path = None  # an external judge needs the reference only for the seed-agreement check
    reference = load_eval_model(config, reference_path) if reference_path else None
    pad = tokenizer.pad_token_id
    judged = judge_samples(policy, reference if kind == "implicit" else None, samples, config, tokenizer,
                           {p.id: p.metadata for p in prompts}, round_dir, i)
    pairs, stats = pair_samples(samples, judged, config.train.beta, i)
    if distributed.is_main():
        write_jsonl(round_dir / "pairs.jsonl", pairs)
    distributed.barrier()
    judge_seconds = time.perf_counter() - started
    metrics: dict[str, Any] = dict(vars(stats), judge_kind=kind)
    if config.judge.seed_agreement and distributed.is_main():  # 64 pairs: not worth sharding
        agreement = seed_agreement(policy, reference, seed_pairs, config.judge, pad)
        atomic_write_json(round_dir / "seed_agreement.json", agreement)
        metrics.update(agreement)
    seconds = time.perf_counter() - started
    del policy, reference
    gc.collect()
    two_models = kind == "implicit" and reference_path is not None
    scored_tokens = sum(s["num_tokens"] + len(s["prompt_ids"]) for s in samples) * (2 if two_models else 1)
    # Throughput of judging the round's samples; the stage time also covers the seed-agreement check.
    metrics.update(seconds=round(seconds, 1), tokens_per_second=round(scored_tokens / max(judge_seconds, 1e-9), 1))
    manifest.complete(name, outputs={"judged": str(round_dir / "judged.jsonl"),
                                     "pairs": str(round_dir / "pairs.jsonl")}, metrics=metrics)
    row.update(samples=stats.samples, pairs=stats.pairs, identical_dropped=stats.identical_dropped,
               ties_dropped=stats.ties_dropped, cut_off_fraction=stats.cut_off_samples / max(stats.samples, 1),
               mean_reply_tokens=round(stats.mean_reply_tokens, 1), margin_quantiles=stats.margin_quantiles,
               seed_agreement=metrics.get("seed_agreement"), judge_seconds=metrics["seconds"],
               judge_tokens_per_second=metrics["tokens_per_second"], judge_kind=kind)


def _train_stage(config, tokenizer, start_path, round_dir, i, manifest, fingerprint, row) -> Path:
    from spreadpref.judge import pairs_to_tokenized
    from spreadpref.trainer import Refinement

    name = f"round-{i}/train"
    entry = manifest.stage(name)
    if _done(manifest, name, fingerprint):
        return Path(entry["outputs"]["model"])
    pairs = pairs_to_tokenized(read_jsonl(round_dir / "pairs.jsonl"))
    if not pairs:
        raise SpreadprefError(
            f"round {i} produced no usable pairs (every prompt's replies were identical or tied); "
            "raise generation.temperature or generation.num_samples"
        )
    console.rule(f"[bold]Round {i}: DPO on {len(pairs)} self-labelled pairs")
    from transformers import set_seed

    set_seed(config.seed + i)
    manifest.start(name, fingerprint)
    started = time.perf_counter()
    refinement = None
    if config.refine.enabled:
        lam = config.refine.lam(i)
        detector_reference = None
        if lam > 0 and not config.model.lora.enabled:
            # DND needs the reference's full logits: a frozen copy of pi_{i-1} (with LoRA, the adapter is switched off).
            detector_reference = load_eval_model(config, start_path)
            detector_reference.requires_grad_(False)
        refinement = Refinement(alpha=config.refine.alpha, quantile=config.refine.quantile,
                                window=config.refine.window, warmup_fraction=config.refine.warmup_fraction,
                                lam=lam, reference=detector_reference)
    outputs, metrics = train_on_pairs(
        config, tokenizer, pairs, round_dir / "train", start_model=str(start_path),
        num_epochs=config.loop.epochs_per_round, learning_rate=config.loop.learning_rate,
        refinement=refinement, merge_lora=True,
    )
    del refinement
    gc.collect()
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    manifest.complete(name, outputs=outputs, metrics=metrics)
    row.update(train_loss=metrics["train_loss"], reward_accuracy=metrics.get("final/rewards_accuracy"),
               smoothed_fraction=metrics.get("smoothed_fraction"), train_seconds=metrics["seconds"],
               train_tokens_per_second=metrics["train_tokens_per_second"])
    return Path(outputs["model"])


def _prune_models(root: Path, models: dict[int, Path], current: int, keep: int) -> None:
    """Delete round models older than the last ``keep`` (the seed model pi_0 always stays)."""
    for i in range(1, current - keep + 1):
        train_dir = root / f"round-{i}" / "train"
        for sub in ("model", "adapter", "checkpoints"):
            shutil.rmtree(train_dir / sub, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Summary


def _read_summary(root: Path) -> dict[str, Any]:
    path = root / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_summary(root: Path, summary: dict[str, Any]) -> None:
    if distributed.is_main():
        atomic_write_json(root / "summary.json", summary)


def _write_report(root: Path) -> None:
    """report.md with plots; a failed plot must not fail a finished run."""
    if not distributed.is_main():
        return
    from spreadpref.report import write_report

    try:
        console.print(f"Report: {write_report(root)}")
    except Exception as err:  # noqa: BLE001 - the models and data are safe; only the report is missing
        console.print(f"[yellow]Could not write the report ({type(err).__name__}: {err}); "
                      f"run `spreadpref report {root}` to retry.[/]")


def print_round_table(summary: dict[str, Any]) -> None:
    """Per-round figures: pairs made, what was dropped, judge margins, seed agreement, smoothing, training."""
    from rich.table import Table

    table = Table(title="spreadpref run: per-round summary", caption="times in seconds: generate / judge / train")
    for column in ("round", "prompts", "pairs", "dropped", "cut off", "reply len", "margin p50", "seed agree",
                   "smoothed", "loss", "reward acc", "time"):
        table.add_column(column, justify="right", overflow="fold")
    seed = summary.get("seed")
    if seed:
        table.add_row("seed", "–", format_cell(seed.get("pairs")), "–", "–", "–", "–", "–", "–",
                      format_cell(seed.get("train_loss"), ".2f"), format_cell(seed.get("reward_accuracy"), ".2f"),
                      format_cell(seed.get("seconds"), ".0f"))
    for key in sorted(summary.get("rounds", {}), key=int):
        row = summary["rounds"][key]
        dropped = (row.get("identical_dropped") or 0) + (row.get("ties_dropped") or 0)
        table.add_row(
            str(row.get("round")), format_cell(row.get("prompts")), format_cell(row.get("pairs")), format_cell(dropped),
            format_cell(row.get("cut_off_fraction"), ".2f"), format_cell(row.get("mean_reply_tokens"), ".0f"),
            format_cell((row.get("margin_quantiles") or {}).get("p50"), ".2f"), format_cell(row.get("seed_agreement"), ".2f"),
            format_cell(row.get("smoothed_fraction"), ".2f"), format_cell(row.get("train_loss"), ".2f"),
            format_cell(row.get("reward_accuracy"), ".2f"),
            "/".join(format_cell(row.get(k), ".0f") for k in ("generate_seconds", "judge_seconds", "train_seconds")),
        )
    from rich.console import Console

    # Rich wraps at 80 columns when the output is not a terminal; keep the table legible in log files.
    out = console if console.is_terminal else Console(stderr=True, width=140)
    out.print(table)
