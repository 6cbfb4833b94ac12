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

from spreadpref.config import NAMED_REFERENCES, Config, check_library_settings, describe_changes
from spreadpref.data.artifacts import JudgedSample, Pair, Sample
from spreadpref.data.identity import DATA_IDENTITIES, KEYED_BY_PATH, changed_sources, data_identities, data_only_change
from spreadpref.data.loading import load_prompts
from spreadpref.data.records import PromptRecord
from spreadpref.data.tokenize import TokenizedPair
from spreadpref.dpo.model_card import add_held_out_figure
from spreadpref.dpo.train import COSMETIC_TRAIN_KEYS, peak_gpu_memory_gb, peak_rss_gb, push_to_hub, train_fingerprint
from spreadpref.errors import DataError, SpreadprefError
from spreadpref.eval.evaluate import evaluate
from spreadpref.eval.report import interval_cell, report_or_warn
from spreadpref.models.loading import load_tokenizer, resolve_model_path, weights_problem
from spreadpref.runtime import distributed
from spreadpref.runtime.files import read_jsonl_rows, remove_stale_temporaries
from spreadpref.runtime.fingerprint import fingerprint
from spreadpref.runtime.layout import (
    ADAPTER_DIRECTORY,
    CHECKPOINTS_DIRECTORY,
    CONFIG_FILE,
    EVAL_DIRECTORY,
    GENERATE_STAGE,
    JUDGE_STAGE,
    MODEL_DIRECTORY,
    ROUND_STAGES,
    SEED_STAGE,
    TRAIN_STAGE,
    model_stage,
    round_directory,
    round_stage,
    round_training_directory,
)
from spreadpref.runtime.lock import directory_lock
from spreadpref.runtime.manifest import Manifest
from spreadpref.runtime.progress import console, format_cell
from spreadpref.spa import generate, guard, judge, seed, train
from spreadpref.spa.context import StageContext, stage_paths
from spreadpref.spa.schedule import round_sizes, schedule_prompts
from spreadpref.spa.summary import print_round_table, read_summary, write_summary

HUMAN_AGREEMENT_KEYS = (
    "held_out_agreement",
    "held_out_agreement_ci",
    "held_out_pairs",
    "seed_agreement",
    "seed_agreement_ci",
    "seed_pairs",
)
ROUND_OUTPUTS = dict(zip(ROUND_STAGES, (generate.OUTPUTS, judge.OUTPUTS, train.OUTPUTS)))  # the stages' files


@dataclass
class RunResult:
    output_dir: Path
    final_model: Path
    summary: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


def stage_fingerprints(
    config: Config, sizes: list[int], identities: dict[str, str | None] | None = None
) -> dict[str, str]:
    """One fingerprint per stage, in order; each includes the one before it. Data files count by their content
    (``identities``, computed when not given), not by their path."""
    identities = identities if identities is not None else data_identities(config.data)
    dump = config.model_dump(mode="json")
    train_settings = {k: v for k, v in dump["train"].items() if k not in COSMETIC_TRAIN_KEYS}
    if config.loop.seed_stage:
        prints = {SEED_STAGE: train_fingerprint(config, identities)}
        previous = prints[SEED_STAGE]
    else:  # pi_0 is the starting model itself
        prints = {}
        previous = fingerprint(["no seed stage", config.model.name_or_path, config.model.revision])
    loop = dump["loop"]
    generation = dict(dump["generation"])
    if config.generation.batch_size != "auto":  # it shapes no batch then (and older runs keep their fingerprints)
        del generation["batch_memory_gb"]
    for i in range(1, len(sizes) + 1):
        generated = fingerprint([previous, generation, identities["prompts"], sizes[:i], dump["data"]["max_length"]])
        judge_inputs = [generated, dump["judge"], dump["train"]["beta"]]
        if config.judge.consistency == "soften":  # the softened pairs' label is 1 - refine.alpha
            judge_inputs.append(dump["refine"]["alpha"])
        judged = fingerprint(judge_inputs)
        refine = dict(dump["refine"], lam=config.refine.lam(i))
        round_training = [loop["epochs_per_round"], loop["learning_rate"], loop["group_by_length"]]
        if config.loop.replay_fraction > 0:  # keyed only when on, so that runs from before the key still resume
            round_training += [loop["replay_fraction"], identities["train"], dump["data"]["seed_holdout"]]
        trained = fingerprint([judged, train_settings, refine, *round_training])
        prints.update(
            {
                round_stage(i, GENERATE_STAGE): generated,
                round_stage(i, JUDGE_STAGE): judged,
                round_stage(i, TRAIN_STAGE): trained,
            }
        )
        previous = trained
    return prints


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
    if config.loop.seed_stage or config.loop.replay_fraction > 0:  # the runs that read data.train
        pool, shared = seed.without_seed_prompts(config, pool)
        if shared:
            console.print(
                f"[yellow]{shared} prompts of {config.data.prompts} are prompts of the seed pairs ({config.data.train}):"
                " left out of the rounds, so that no round trains on a human pair's prompt, held-out ones above all.[/]"
            )
    sizes = round_sizes(len(pool), config.loop.rounds, config.loop.prompts_per_round)
    identities = data_identities(config.data)
    fingerprints = stage_fingerprints(config, sizes, identities)
    _follow_data_edits(root, manifest, config, sizes, fingerprints, identities)
    # Edits first: under --force an edited stage is redone alone, and the edit kept, before a finished run's
    # --force would discard every stage (and the edit with it).
    _check_edited_outputs(manifest, fingerprints, force)
    _check_plan(root, manifest, fingerprints, force, config)
    manifest.data[DATA_IDENTITIES] = identities
    manifest.save()
    if all(_done(manifest, name, fp) for name, fp in fingerprints.items()) and not _rebuild_hollow_final(
        config, manifest, len(sizes)
    ):
        console.print(f"[green]The run in {root} is already complete[/]; nothing to do (--force redoes it).")
        summary = read_summary(root)
        models = _finished_models(config, manifest, len(sizes))
        previous = (summary.get("final_choice") or {}).get("rule", "last"), summary.get("final_model")
        _choose_final(config, summary, models)  # figures: in the summary; paths: this directory's (a copied run)
        if previous != (config.loop.final_model, summary["final_model"]):
            write_summary(root, summary)
            _write_report(root)
        print_round_table(summary)
        _print_final(summary)
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
        seed_pairs = seed.load_seed_pairs(config, tokenizer)
        console.print(seed_pairs.info["loaded"])
        for reason in seed_pairs.info["skip_reasons"]:
            console.print(f"  skipped: {reason}")
        if distributed.is_main() and seed_pairs.held_out:
            # At the top of the run directory: a changed data.train redoes seed/, and the file must outlive that.
            if changed := seed.record_held_out(root, seed_pairs, seed.holdout_salt(config.seed)):
                console.print(f"[yellow]{changed}[/]")
        models = {0: _seed(config, tokenizer, seed_pairs, manifest, fingerprints[SEED_STAGE], summary)}
    else:  # experience replay still reads the seed pairs (data.train), when the user gives them
        seed_pairs = seed.load_seed_pairs(config, tokenizer) if config.loop.replay_fraction > 0 else None
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
        if not _done(manifest, round_stage(i, TRAIN_STAGE), fingerprints[round_stage(i, TRAIN_STAGE)]):
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
    final_model = _choose_final(config, summary, models, has_held_out=bool(held_out))
    summary["seconds_this_invocation"] = round(time.perf_counter() - started, 1)
    summary["peak_rss_gb"] = round(peak_rss_gb(), 2)
    summary["processes"] = distributed.world_size()  # the effective batch is per device x accumulation x this
    if (gpu := peak_gpu_memory_gb()) is not None:
        summary["peak_gpu_memory_gb"] = round(gpu, 2)  # this process: judging and training (vLLM runs apart)
    write_summary(root, summary)
    print_round_table(summary)
    _print_final(summary)
    if config.eval.after_run:
        evaluate(config, [str(root)], root / EVAL_DIRECTORY)
    _write_report(root)
    push_to_hub(config, final_model, f"spreadpref run {root.name}: final model")
    return RunResult(root, final_model, summary)


# ---------------------------------------------------------------------------------------------
# Plan: what is done, what is stale


def _done(manifest: Manifest, name: str, fingerprint: str) -> bool:
    entry = manifest.stage(name)
    return bool(entry) and entry.get("status") == "complete" and entry.get("fingerprint") == fingerprint


def _stage_paths(root: Path, name: str) -> list[Path]:
    """The files and directories stage ``name`` owns, as the stage modules declare them."""
    if name == SEED_STAGE:
        return [root / SEED_STAGE]
    round_name, stage = name.split("/")
    return stage_paths(root / round_name, ROUND_OUTPUTS[stage])


def _stale(manifest: Manifest, fingerprints: dict[str, str]) -> list[str]:
    """Stages recorded with another fingerprint than they would have now, in order."""
    return [n for n in fingerprints if manifest.stage(n) and manifest.stage(n).get("fingerprint") != fingerprints[n]]


def _follow_data_edits(
    root: Path,
    manifest: Manifest,
    config: Config,
    sizes: list[int],
    fingerprints: dict[str, str],
    identities: dict[str, str | None],
) -> None:
    """Stages that differ only by the content of their data: an edited file reruns exactly the stages it feeds
    (the first such stage and every one after it), and says so; stages from before content fingerprints, keyed
    by the data's path, are taken as they are and re-keyed. Any other difference is _check_plan's to refuse."""
    stale = _stale(manifest, fingerprints)
    if not stale:
        return
    recorded = manifest.data.get(DATA_IDENTITIES)

    def matches(ids: dict[str, str | None]) -> bool:
        before = stage_fingerprints(config, sizes, ids)
        return all(manifest.stage(n).get("fingerprint") == before[n] for n in stale)

    change = data_only_change(config.data, recorded, matches)
    if change is None:
        return  # the settings changed too: _check_plan's to refuse
    if change == KEYED_BY_PATH:
        for name in stale:
            manifest.update(name, fingerprint=fingerprints[name])
        return
    edited = ", ".join(changed_sources(config.data, recorded, identities))
    console.print(f"[yellow]{edited} changed since {stale[0]} ran: running it and every stage after it again.[/]")
    _discard_from(root, manifest, list(fingerprints), stale[0])


def _check_edited_outputs(manifest: Manifest, fingerprints: dict[str, str], force: bool) -> None:
    """A finished stage's file or model edited after the stage wrote it (a hand-edited pairs.jsonl, weights
    replaced) is never used without notice: refused, naming it; with --force the stage writes it again (seeded:
    as it first did), and the edit is kept beside it as <file>.edited (replacing an older one)."""
    for name, fp in fingerprints.items():
        if not _done(manifest, name, fp):
            continue
        # A file that no longer parses is damaged, not edited: _rebuild_damaged writes it again when it is read.
        if not (edited := [path for path in manifest.edited_outputs(name) if _parses(path)]):
            continue
        shown = ", ".join(str(path) for path in edited)
        if not force:
            raise SpreadprefError(
                f"{shown} changed after {name} wrote it; the stages after it would use your edit without knowing "
                f"it. Restore it, or run again with --force to write it again (your version is kept as "
                f"{edited[0].name}.edited)."
            )
        if distributed.is_main():
            for path in edited:
                kept = path.with_name(path.name + ".edited")
                if kept.is_dir():  # a directory is not replaced by a rename onto it, as a file is
                    shutil.rmtree(kept)
                path.replace(kept)
        distributed.barrier()
        manifest.reset(name)
        console.print(f"[yellow]--force:[/] {shown} changed after {name} wrote it; kept as .edited, writing it again.")


def _parses(path: Path) -> bool:
    """Whether a stage's JSON-lines file still reads as JSON, line by line; a model directory, whether it still
    holds a config and weights (one that lost them is damaged: the final one is rebuilt, see _rebuild_hollow_final)."""
    if path.is_dir():
        return weights_problem(path) is None
    try:
        for _ in read_jsonl_rows(path):
            pass
    except (DataError, UnicodeDecodeError):
        return False
    return True


def _check_plan(root: Path, manifest: Manifest, fingerprints: dict[str, str], force: bool, config: Config) -> None:
    names = list(fingerprints)
    stale = _stale(manifest, fingerprints)
    if stale and not force:
        raise SpreadprefError(
            f"{root} holds stages made with a different configuration: {', '.join(stale)}."
            f"{describe_changes(root / CONFIG_FILE, config)} Re-running would mix the two. Use another output "
            f"directory, or --force to discard {stale[0]} and everything after it."
        )
    if not force:
        return
    complete = all(_done(manifest, n, fp) for n, fp in fingerprints.items())
    first = stale[0] if stale else (names[0] if complete else None)
    if first is None:
        return
    _discard_from(root, manifest, names, first)
    console.print(f"[yellow]--force:[/] discarded {first} and every stage after it.")


def _discard_from(root: Path, manifest: Manifest, names: list[str], first: str) -> None:
    """Delete the outputs of stage ``first`` and every stage after it, and forget them in the manifest."""
    if not distributed.is_main():
        distributed.barrier()  # the main process deletes; the others only forget
        for name in names[names.index(first) :]:
            manifest.data["stages"].pop(name, None)
        return
    for name in names[names.index(first) :]:
        for path in _stage_paths(root, name):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
        manifest.reset(name)
    distributed.barrier()


# ---------------------------------------------------------------------------------------------
# Each stage: skip it when done, else record it in the manifest and the summary around the stage's function


def _seed(
    config: Config,
    tokenizer: PreTrainedTokenizerBase,
    seed_pairs: seed.SeedPairs,
    manifest: Manifest,
    fp: str,
    summary: dict[str, Any],
) -> Path:
    if _done(manifest, SEED_STAGE, fp):
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
    if _done(manifest, name, fp):
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
    result = generate.generate_stage(ctx, prompts, policy, backend=backend)
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
    if _done(manifest, name, fp):
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
    if _done(manifest, name, fp):
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
        if _done(manifest, name, fingerprints[name]) and damaged in {
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


def _rebuild_hollow_final(config: Config, manifest: Manifest, rounds: int) -> bool:
    """A finished run whose final model lost its weights (deleted, a disk fault): forget the stage that made it,
    so that it runs again (seeded: the same model). True when there was one."""
    summary = read_summary(Path(config.output_dir))
    chosen = (summary.get("final_choice") or {}).get("round", rounds)
    if chosen == 0 and not config.loop.seed_stage:
        return False  # pi_init itself: not this run's to rebuild
    stage = model_stage(chosen)
    problem = weights_problem(manifest.output(stage, MODEL_DIRECTORY))
    if problem is None:
        return False
    console.print(f"[yellow]The run's final model is damaged ({problem}): running {stage} again.[/]")
    manifest.reset(stage)
    return True


def _finished_models(config: Config, manifest: Manifest, rounds: int) -> dict[int, Path]:
    """Every model of a finished run, from its manifest: {0: pi_0, 1: pi_1, ...}."""
    if config.loop.seed_stage:
        models = {0: manifest.output(SEED_STAGE, MODEL_DIRECTORY)}
    else:
        models = {0: Path(resolve_model_path(config.model.name_or_path))}
    for i in range(1, rounds + 1):
        models[i] = manifest.output(round_stage(i, TRAIN_STAGE), MODEL_DIRECTORY)
    return models


def _choose_final(config: Config, summary: dict[str, Any], models: dict[int, Path], has_held_out: bool = True) -> Path:
    """Choose the final model by ``loop.final_model`` among the models still on disk; record the choice, its
    figures and the below-seed warning in the summary (summary["final_model"], ["final_choice"], ["warnings"])."""
    rule = config.loop.final_model
    last = max(models)
    agreements = guard.agreements_of(summary, last) if has_held_out else dict.fromkeys(models)
    on_disk = {k: v for k, v in agreements.items() if k in (0, last) or models[k].is_dir()}
    chosen = guard.choose_final_round(on_disk, rule)
    notes = []
    if not any(v is not None for v in agreements.values()):
        notes.append(guard.NO_HELD_OUT)
    elif rule == "best_held_out" and (best := guard.choose_final_round(agreements, rule)) != chosen:
        notes.append(
            f"Round {best}'s model is the best by held-out agreement but no longer on disk (loop.keep_models)."
        )
    warning = guard.below_seed_warning(agreements, within_noise=guard.within_noise(summary, last), rule=rule)
    if rule == "best_held_out" and (note := guard.selection_note(agreements, chosen)):
        notes.append(note)
    previous = (summary.get("final_choice") or {}).get("warning")
    if previous and previous in summary.get("warnings", []):
        summary["warnings"].remove(previous)  # the last choice's warning, replaced by this one's
    if warning:
        summary.setdefault("warnings", []).insert(0, warning)
    summary["verdicts"] = guard.round_verdicts(summary, last)
    summary["final_model"] = str(models[chosen])
    summary["final_choice"] = {
        "rule": rule,
        "round": chosen,
        "agreements": {str(k): v for k, v in agreements.items()},
        "warning": warning,
        "notes": notes,
    }
    return models[chosen]


def _print_final(summary: dict[str, Any]) -> None:
    """The guard's warning (yellow), its notes and the final model, at the end of a run."""
    choice = summary.get("final_choice") or {}
    for verdict in summary.get("verdicts", []):
        console.print(verdict)
    for note in choice.get("notes", []):
        console.print(note)
    if choice.get("warning"):
        console.print(f"[yellow]{choice['warning']}[/]")
    which = ""
    if choice:
        chosen = choice["round"]
        figure = choice["agreements"].get(str(chosen))
        which = f" (loop.final_model={choice['rule']}: {'the seed model' if chosen == 0 else f'round {chosen}'}"
        which += f", held-out agreement {figure:.2f})" if figure is not None else ")"
    console.print(f"Final model{which}: {summary.get('final_model', '–')}")


def _write_report(root: Path) -> None:
    """report.md with plots, written by the main process."""
    if distributed.is_main():
        report_or_warn(root)
