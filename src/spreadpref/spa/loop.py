"""The SPA loop: seed DPO, then rounds of generate -> judge -> train, resumable at every stage.

Run directory (``seed/`` is absent with ``loop.seed_stage=false``: pi_0 is then the starting model)::

    config.yaml  manifest.json  summary.json
    seed/                    DPO of pi_init on the seed pairs -> pi_0 (model/, log_history.json)
    round-1/prompts.jsonl    this round's fresh prompts
    round-1/generations.jsonl  K samples per prompt from pi_0 (token ids, text, finish reason)
    round-1/judged.jsonl     per sample: log-probs under pi_0 and the judge reference, score
    round-1/pairs.jsonl      chosen/rejected with margin, p and the reference log-probs for training
    round-1/train/           DPO of pi_0 on round 1's pairs with self-refinement -> pi_1 (model/)
    round-2/...

The loop owns the plan (which stages are done, which are stale), the manifest and the summary; each
stage is a function of its own module (:mod:`~spreadpref.spa.seed`, :mod:`~spreadpref.spa.generate`,
:mod:`~spreadpref.spa.judge`, :mod:`~spreadpref.spa.train`) that declares the files it writes.
Each stage's fingerprint chains the configuration it depends on with its predecessor's, so adding
rounds never invalidates finished ones, and changing, say, the temperature refuses to mix runs.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from spreadpref.config import NAMED_REFERENCES, Config, check_library_settings
from spreadpref.data.artifacts import JudgedSample, Pair, Sample
from spreadpref.data.identity import DATA_IDENTITIES, data_identities
from spreadpref.data.loading import load_prompts
from spreadpref.data.records import PromptRecord
from spreadpref.data.tokenize import TokenizedPair
from spreadpref.dpo.model_card import add_held_out_figure
from spreadpref.dpo.train import peak_gpu_memory_gb, peak_rss_gb, push_to_hub
from spreadpref.errors import DataError, SpreadprefError
from spreadpref.eval.evaluate import evaluate
from spreadpref.eval.report import report_or_warn
from spreadpref.eval.tables import interval_cell
from spreadpref.models.loading import load_tokenizer, resolve_model_path
from spreadpref.runtime import distributed
from spreadpref.runtime.files import remove_stale_temporaries
from spreadpref.runtime.layout import (
    ADAPTER_DIRECTORY,
    CHECKPOINTS_DIRECTORY,
    CONFIG_FILE,
    EVAL_DIRECTORY,
    GENERATE_STAGE,
    JUDGE_STAGE,
    MODEL_DIRECTORY,
    SEED_STAGE,
    TRAIN_STAGE,
    round_directory,
    round_stage,
    round_training_directory,
)
from spreadpref.runtime.lock import directory_lock
from spreadpref.runtime.manifest import Manifest
from spreadpref.runtime.progress import console, format_cell
from spreadpref.spa import generate, guard, judge, seed, train
from spreadpref.spa.context import StageContext, stage_paths
from spreadpref.spa.final import choose_final, finished_models, print_final, rebuild_hollow_final
from spreadpref.spa.plan import (
    ROUND_OUTPUTS,
    check_edited_outputs,
    check_plan,
    follow_data_edits,
    stage_done,
    stage_fingerprints,
)
from spreadpref.spa.schedule import round_sizes, schedule_prompts
from spreadpref.spa.summary import print_round_table, read_summary, write_summary

BATCH_SIZE_KEY = "generation_batch_size"  # in a generate stage's manifest entry: the prompts per batch it drew
HUMAN_AGREEMENT_KEYS = (
    "held_out_agreement",
    "held_out_agreement_ci",
    "held_out_pairs",
    "seed_agreement",
    "seed_agreement_ci",
    "seed_pairs",
)


@dataclass
class RunResult:
    output_dir: Path
    final_model: Path
    summary: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


def run(config: Config, force: bool = False) -> RunResult:
    """Run SPA end to end (or the rest of it): seed stage, then ``config.loop.rounds`` rounds.

    The output directory is locked for the whole run: a second process writing it is refused at once."""
    root = Path(config.output_dir)
    check_library_settings(config)
    with directory_lock(root, "run", config.allow_existing_files):
        return _run_locked(config, root, force)


def _run_locked(config: Config, root: Path, force: bool) -> RunResult:
    manifest = Manifest(root)
    if manifest.stage(TRAIN_STAGE):
        raise SpreadprefError(
            f"{root} holds a `spreadpref train` result, not a run: use another output directory for `spreadpref run`"
        )
    pool, pool_report = load_prompts(
        config.data.prompts,
        config.data.columns,
        skip_invalid=config.data.skip_invalid,
        system_prompt=config.data.system_prompt,
    )
    # data.train is read once, for the pool's filter and for the seed pairs.
    seed_records = None
    if config.loop.seed_stage or config.loop.replay_fraction > 0:  # the runs that read data.train
        seed_records = seed.read_seed_records(config)
        pool, shared = seed.without_seed_prompts(seed_records[0], pool)
        if shared:
            console.print(
                f"[yellow]{shared} prompts of {config.data.prompts} are prompts of the seed pairs ({config.data.train}):"
                " left out of the rounds, so that no round trains on a human pair's prompt, held-out ones above all.[/]"
            )
    sizes = round_sizes(len(pool), config.loop.rounds, config.loop.prompts_per_round)
    identities = data_identities(config.data)
    fingerprints = stage_fingerprints(config, sizes, identities)
    follow_data_edits(root, manifest, config, sizes, fingerprints, identities)
    # Edits first: under --force an edited stage is redone alone, and the edit kept, before a finished run's
    # --force would discard every stage (and the edit with it).
    check_edited_outputs(manifest, fingerprints, force)
    check_plan(root, manifest, fingerprints, force, config)
    manifest.data[DATA_IDENTITIES] = identities
    manifest.save()
    if all(stage_done(manifest, name, fp) for name, fp in fingerprints.items()) and not rebuild_hollow_final(
        config, manifest, len(sizes)
    ):
        console.print(f"[green]The run in {root} is already complete[/]; nothing to do (--force redoes it).")
        summary = read_summary(root)
        models = finished_models(config, manifest, len(sizes))
        previous = (summary.get("final_choice") or {}).get("rule", "last"), summary.get("final_model")
        choose_final(config, summary, models)  # figures: in the summary; paths: this directory's (a copied run)
        if previous != (config.loop.final_model, summary["final_model"]):
            write_summary(root, summary)
            _write_report(root)
        print_round_table(summary)
        print_final(summary)
        push_to_hub(config, Path(summary.get("final_model", "")), f"spreadpref run {root.name}: final model")
        return RunResult(root, Path(summary.get("final_model", "")), summary, skipped=True)

    tokenizer = load_tokenizer(config.model)
    judge.check_judge_reference(config, tokenizer)  # before anything is written
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        if remove_stale_temporaries(root):
            console.print("Removed temporary files left by an interrupted run.")
        config.save(root / CONFIG_FILE)
    distributed.barrier()
    console.print(pool_report.summary())
    schedule = schedule_prompts(pool, sizes, config.seed)
    summary = read_summary(root) or {"rounds": {}}
    summary["schedule"] = sizes
    if config.loop.seed_stage:
        seed_pairs = seed.load_seed_pairs(config, tokenizer, seed_records)
        console.print(seed_pairs.info["loaded"])
        for reason in seed_pairs.info["skip_reasons"]:
            console.print(f"  skipped: {reason}")
        if distributed.is_main() and seed_pairs.held_out:
            # At the top of the run directory: a changed data.train redoes seed/, and the file must outlive that.
            if changed := seed.record_held_out(root, seed_pairs, seed.holdout_salt(config.seed)):
                console.print(f"[yellow]{changed}[/]")
        models = {0: _seed(config, tokenizer, seed_pairs, manifest, fingerprints[SEED_STAGE], summary)}
    else:  # experience replay still reads the seed pairs (data.train), when the user gives them
        seed_pairs = seed.load_seed_pairs(config, tokenizer, seed_records) if config.loop.replay_fraction > 0 else None
        models = {0: Path(resolve_model_path(config.model.name_or_path))}
        summary["seed"] = None
        console.print(f"No seed stage (loop.seed_stage=false): pi_0 is {config.model.name_or_path}.")
    # The guard's held-out pairs: those the seed stage held out (none without a seed stage).
    held_out = seed_pairs.held_out if config.loop.seed_stage and seed_pairs is not None else []
    if held_out:
        summary["seed"] = summary.get("seed") or {}
        _measure_model(config, tokenizer, models[0], held_out, summary["seed"], root, summary)
    for i in range(1, len(sizes) + 1):
        ctx = StageContext(config, tokenizer, round_directory(root, i), i)
        row = summary["rounds"].setdefault(str(i), {"round": i})
        if not stage_done(manifest, round_stage(i, TRAIN_STAGE), fingerprints[round_stage(i, TRAIN_STAGE)]):
            for key in guard.MODEL_KEYS:  # a figure of a model about to be trained again
                row.pop(key, None)
        for attempt in (1, 2):
            try:
                samples = _generate(
                    ctx, schedule[i - 1], models[i - 1], manifest, fingerprints[round_stage(i, GENERATE_STAGE)], row
                )
                _judge(
                    ctx,
                    samples,
                    schedule[i - 1],
                    models,
                    seed_pairs,
                    manifest,
                    fingerprints[round_stage(i, JUDGE_STAGE)],
                    row,
                )
                replay = seed_pairs.pairs if seed_pairs is not None else []
                models[i] = _train(ctx, models[i - 1], manifest, fingerprints[round_stage(i, TRAIN_STAGE)], row, replay)
                break
            except DataError as err:
                if attempt == 2 or not _rebuild_damaged(root, i, err, manifest, fingerprints):
                    raise
        if held_out:
            _measure_model(config, tokenizer, models[i], held_out, row, root, summary)
        protect = None
        if held_out and config.loop.final_model == "best_held_out":  # the best model so far is never pruned
            protect = guard.choose_final_round(guard.agreements_of(summary, i), "best_held_out")
        _prune_models(root, i, config.loop.keep_models, protect)
        summary["final_model"] = str(models[i])
        write_summary(root, summary)
    final_model = choose_final(config, summary, models, has_held_out=bool(held_out))
    summary["seconds_this_invocation"] = round(time.perf_counter() - started, 1)
    summary["peak_rss_gb"] = round(peak_rss_gb(), 2)
    summary["processes"] = distributed.world_size()  # the effective batch is per device x accumulation x this
    if (gpu := peak_gpu_memory_gb()) is not None:
        summary["peak_gpu_memory_gb"] = round(gpu, 2)  # this process: judging and training (vLLM runs apart)
    write_summary(root, summary)
    print_round_table(summary)
    print_final(summary)
    if config.eval.after_run:
        evaluate(config, [str(root)], root / EVAL_DIRECTORY)
    _write_report(root)
    push_to_hub(config, final_model, f"spreadpref run {root.name}: final model")
    return RunResult(root, final_model, summary)


def _seed(
    config: Config,
    tokenizer: PreTrainedTokenizerBase,
    seed_pairs: seed.SeedPairs,
    manifest: Manifest,
    fp: str,
    summary: dict[str, Any],
) -> Path:
    if stage_done(manifest, SEED_STAGE, fp):
        return manifest.output(SEED_STAGE, MODEL_DIRECTORY)
    console.rule("[bold]Seed stage: DPO of the initial model on the seed pairs")
    manifest.start(SEED_STAGE, fp, data=seed_pairs.info)
    root = Path(config.output_dir)
    result = seed.seed_stage(
        StageContext(config, tokenizer, root / SEED_STAGE),
        seed_pairs,
        on_reference=lambda info: manifest.update(SEED_STAGE, reference=info),
    )
    manifest.complete(SEED_STAGE, outputs=result.outputs, metrics=result.metrics)
    summary["seed"] = {
        "pairs": len(seed_pairs.pairs),
        "held_out": len(seed_pairs.held_out),
        "train_loss": result.metrics["train_loss"],
        "reward_accuracy": result.metrics.get("final/rewards_accuracy"),
        "seconds": result.metrics["seconds"],
        "weights_unchanged": result.metrics.get("weights_unchanged", False),
    }
    write_summary(root, summary)
    _print_trained(result.metrics, result.model_dir)
    return result.model_dir


def _generate(
    ctx: StageContext, prompts: list[PromptRecord], policy: Path, manifest: Manifest, fp: str, row: dict[str, Any]
) -> list[Sample]:
    name = round_stage(ctx.round_index, GENERATE_STAGE)
    if stage_done(manifest, name, fp):
        return Sample.read(ctx.path(Sample.FILE))
    console.rule(
        f"[bold]Round {ctx.round_index}: generate {ctx.config.generation.num_samples} replies for "
        f"{len(prompts)} prompts"
    )
    # A resumed stage keeps the backend it started with (backend=auto): parts of two samplers must not mix.
    entry = manifest.stage(name) or {}
    if entry.get("fingerprint") == fp and entry.get("backend"):
        backend = generate.BackendChoice(entry["backend"], entry.get("backend_reason", "resumed"))
    else:
        backend = generate.choose_backend(ctx.config.generation, len(prompts))
    manifest.start(name, fp, backend=backend.name, backend_reason=backend.reason)
    # batch_size=auto on a GPU follows the memory free at the start: a resumed stage keeps the size it started
    # with, since the batches decide each batch's seed.
    result = generate.generate_stage(
        ctx,
        prompts,
        policy,
        backend=backend,
        batch_size=(manifest.stage(name) or {}).get(BATCH_SIZE_KEY),
        on_batch_size=lambda size: manifest.update(name, **{BATCH_SIZE_KEY: size}),
    )
    manifest.complete(name, outputs={"generations": str(ctx.path(Sample.FILE))}, metrics=result.metrics)
    row.update(
        generate_backend=result.metrics["backend"],
        prompts=len(prompts),
        generate_seconds=result.metrics["seconds"],
        generate_tokens_per_second=result.metrics["tokens_per_second"],
    )
    cut_off = sum(sample.cut_off for sample in result.samples) / max(len(result.samples), 1)
    console.print(
        f"  {len(result.samples)} replies in {result.metrics['seconds']:.0f} s ({cut_off:.0%} cut off at "
        f"generation.max_new_tokens) -> {ctx.path(Sample.FILE)}"
    )
    return result.samples


def judge_reference_path(config: Config, models: dict[int, Path], i: int) -> str | None:
    """The judge's reference in round ``i``: pi_init (the paper), the model before pi_{i-1}, none, or a model
    the user names (a directory or hub id)."""
    reference = config.judge.reference
    if reference == "none":
        return None
    if reference == "previous" and i >= 2:
        return str(models[i - 2])
    if reference in NAMED_REFERENCES:
        return resolve_model_path(config.model.name_or_path)  # pi_init
    return resolve_model_path(reference)


def judge_policy_path(config: Config, models: dict[int, Path], i: int) -> str | None:
    """Whose log-ratio scores round ``i``: None for pi_{i-1} (the paper), else pi_0, pi_init or a named model."""
    policy = config.judge.policy
    if policy == "previous":
        return None
    if policy == "seed":
        return str(models[0])
    if policy == "initial":
        return resolve_model_path(config.model.name_or_path)
    return resolve_model_path(policy)


def judge_models(config: Config, models: dict[int, Path], i: int) -> judge.JudgeModels:
    """Every model round ``i``'s judge needs: pi_{i-1}, the reference, and those the safeguards name."""
    previous = None
    if config.judge.consistency != "none":  # the previous model's judge: pi_{i-2}, and pi_init in round 1
        previous = str(models[i - 2]) if i >= 2 else resolve_model_path(config.model.name_or_path)
    return judge.JudgeModels(
        policy=models[i - 1],
        reference=judge_reference_path(config, models, i),
        judge_policy=judge_policy_path(config, models, i),
        base=resolve_model_path(config.judge.base) if config.judge.base else None,
        previous=previous,
    )


def _judge(
    ctx: StageContext,
    samples: list[Sample],
    prompts: list[PromptRecord],
    models: dict[int, Path],
    seed_pairs: seed.SeedPairs | None,
    manifest: Manifest,
    fp: str,
    row: dict[str, Any],
) -> None:
    name = round_stage(ctx.round_index, JUDGE_STAGE)
    if stage_done(manifest, name, fp):
        return
    kind = ctx.config.judge.kind
    judged_by = ctx.config.judge.describe(ctx.round_index)
    console.rule(
        f"[bold]Round {ctx.round_index}: judge {len(samples)} samples "
        f"({f'implicit reward, {judged_by}' if kind == 'implicit' else f'with the {kind} judge'})"
    )
    manifest.start(name, fp)
    result = judge.judge_stage(
        ctx,
        samples,
        judge_models(ctx.config, models, ctx.round_index),
        None,
        {p.id: p.metadata for p in prompts},
        judge.HumanLabels(seed_pairs.pairs, seed_pairs.held_out)
        if ctx.config.judge.seed_agreement and seed_pairs is not None
        else None,
    )
    manifest.complete(
        name,
        outputs={"judged": str(ctx.path(JudgedSample.FILE)), "pairs": str(ctx.path(Pair.FILE))},
        metrics=result.metrics,
    )
    stats = result.stats
    row.update(
        samples=stats.samples,
        pairs=stats.pairs,
        identical_dropped=stats.identical_dropped,
        ties_dropped=stats.ties_dropped,
        cut_off_fraction=stats.cut_off_samples / max(stats.samples, 1),
        mean_reply_tokens=round(stats.mean_reply_tokens, 1),
        margin_quantiles=stats.margin_quantiles,
        **{key: result.metrics.get(key) for key in HUMAN_AGREEMENT_KEYS},
        gold_labels=result.metrics.get("gold"),
        judge_seconds=result.metrics["seconds"],
        judge_tokens_per_second=result.metrics["tokens_per_second"],
        judge_kind=kind,
        judge=judged_by,
        safeguards=stats.safeguards(),
    )
    agreement = row.get("held_out_agreement")
    agrees = f"; it agrees with {agreement:.0%} of the held-out human labels" if agreement is not None else ""
    console.print(
        f"  {stats.pairs} pairs in {result.metrics['seconds']:.0f} s (median margin "
        f"{format_cell((stats.margin_quantiles or {}).get('p50'), '.2f')}){agrees} -> {ctx.path(Pair.FILE)}"
    )


def _train(
    ctx: StageContext, start: Path, manifest: Manifest, fp: str, row: dict[str, Any], replay: list | None = None
) -> Path:
    name = round_stage(ctx.round_index, TRAIN_STAGE)
    if stage_done(manifest, name, fp):
        return manifest.output(name, MODEL_DIRECTORY)
    manifest.start(name, fp)
    result = train.train_stage(ctx, start, replay or [])
    manifest.complete(name, outputs=result.outputs, metrics=result.metrics)
    metrics = result.metrics
    row.update(
        train_loss=metrics["train_loss"],
        reward_accuracy=metrics.get("final/rewards_accuracy"),
        smoothed_fraction=metrics.get("smoothed_fraction"),
        refinement_quality=metrics.get("refinement_quality"),
        train_seconds=metrics["seconds"],
        train_tokens_per_second=metrics["train_tokens_per_second"],
        replay_pairs=metrics.get("replay_pairs", 0),
        weights_unchanged=metrics.get("weights_unchanged", False),
    )
    _print_trained(metrics, result.model_dir)
    return result.model_dir


def _print_trained(metrics: dict[str, Any], model: Path) -> None:
    """A training stage's one result line, under its heading and bar."""
    smoothed = metrics.get("smoothed_fraction")
    console.print(
        f"  {metrics.get('global_steps', '?')} optimizer steps in {metrics['seconds']:.0f} s, mean loss "
        f"{metrics['train_loss']:.3f}"
        + (f", {smoothed:.0%} of the labels smoothed" if smoothed is not None else "")
        + f" -> {model}"
    )


def _rebuild_damaged(root: Path, i: int, err: DataError, manifest: Manifest, fingerprints: dict[str, str]) -> bool:
    """A file of a finished stage of round ``i`` that no longer reads (a disk fault, an edit): forget that stage
    alone, so it runs again. Every stage is seeded, so it writes the same file; stages after it that finished
    stay finished. False when the file is not a finished stage's output (then the error stands)."""
    damaged = Path(err.source).resolve()
    for stage, outputs in ROUND_OUTPUTS.items():
        name = round_stage(i, stage)
        if stage_done(manifest, name, fingerprints[name]) and damaged in {
            p.resolve() for p in stage_paths(round_directory(root, i), outputs)
        }:
            kept = damaged.with_name(damaged.name + ".damaged")
            console.print(
                f"[yellow]{err.source} (from the finished stage {name}) is damaged: {err.reason}. Kept as {kept.name}; "
                f"running {name} again (seeded: it writes the same file).[/]"
            )
            if distributed.is_main():
                damaged.replace(kept)
            distributed.barrier()
            manifest.reset(name)
            return True
    return False


def _prune_models(root: Path, current: int, keep: int, protect: int | None = None) -> None:
    """Delete round models older than the last ``keep`` (the seed model pi_0 always stays), except round
    ``protect``'s (the best by held-out agreement, with loop.final_model=best_held_out)."""
    for i in range(1, current - keep + 1):
        if i == protect:
            continue
        train_dir = round_training_directory(root, i)
        for sub in (MODEL_DIRECTORY, ADAPTER_DIRECTORY, CHECKPOINTS_DIRECTORY):
            shutil.rmtree(train_dir / sub, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The guard: every model's held-out agreement, the final model, the below-seed warning (see spa/guard.py)


def _measure_model(
    config: Config,
    tokenizer: PreTrainedTokenizerBase,
    model: Path,
    held_out: list[TokenizedPair],
    row: dict[str, Any],
    root: Path,
    summary: dict[str, Any],
) -> None:
    """A model's held-out agreement into its summary row (the seed's or a round's), unless a resumed run has it."""
    if row.get(guard.AGREEMENT_KEY) is not None:
        return
    row.update(guard.measure_held_out_agreement(config, tokenizer, model, held_out))
    figure = interval_cell(row[guard.AGREEMENT_KEY], row[guard.INTERVAL_KEY])
    console.print(f"  Held-out agreement of this model (against pi_init, {len(held_out)} human pairs): {figure}")
    if distributed.is_main():
        add_held_out_figure(model, figure, len(held_out))
    write_summary(root, summary)


def _write_report(root: Path) -> None:
    """report.md with plots, written by the main process."""
    if distributed.is_main():
        report_or_warn(root)
