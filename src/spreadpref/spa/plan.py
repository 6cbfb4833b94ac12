"""The plan of a run: each stage's fingerprint, which finished stages still hold (edited data followed,
edited outputs refused or redone, stale stages discarded), and what is left to do."""

from __future__ import annotations

import shutil
from pathlib import Path

from spreadpref.config import Config, describe_changes
from spreadpref.data.identity import DATA_IDENTITIES, KEYED_BY_PATH, changed_sources, data_identities, data_only_change
from spreadpref.dpo.train import COSMETIC_TRAIN_KEYS, train_fingerprint
from spreadpref.errors import DataError, SpreadprefError
from spreadpref.models.loading import weights_problem
from spreadpref.runtime import distributed
from spreadpref.runtime.files import read_jsonl_rows
from spreadpref.runtime.fingerprint import fingerprint
from spreadpref.runtime.layout import (
    CONFIG_FILE,
    GENERATE_STAGE,
    JUDGE_STAGE,
    ROUND_STAGES,
    SEED_STAGE,
    TRAIN_STAGE,
    round_stage,
)
from spreadpref.runtime.manifest import Manifest
from spreadpref.runtime.progress import console
from spreadpref.spa import generate, judge, train
from spreadpref.spa.context import stage_paths

ROUND_OUTPUTS = dict(zip(ROUND_STAGES, (generate.OUTPUTS, judge.OUTPUTS, train.OUTPUTS)))  # the stages' files


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


def stage_done(manifest: Manifest, name: str, fingerprint: str) -> bool:
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


def follow_data_edits(
    root: Path,
    manifest: Manifest,
    config: Config,
    sizes: list[int],
    fingerprints: dict[str, str],
    identities: dict[str, str | None],
) -> None:
    """Stages that differ only by the content of their data: an edited file reruns exactly the stages it feeds
    (the first such stage and every one after it), and says so; stages from before content fingerprints, keyed
    by the data's path, are taken as they are and re-keyed. Any other difference is check_plan's to refuse."""
    stale = _stale(manifest, fingerprints)
    if not stale:
        return
    recorded = manifest.data.get(DATA_IDENTITIES)

    def matches(ids: dict[str, str | None]) -> bool:
        before = stage_fingerprints(config, sizes, ids)
        return all(manifest.stage(n).get("fingerprint") == before[n] for n in stale)

    change = data_only_change(config.data, recorded, matches)
    if change is None:
        return  # the settings changed too: check_plan's to refuse
    if change == KEYED_BY_PATH:
        for name in stale:
            manifest.update(name, fingerprint=fingerprints[name])
        return
    edited = ", ".join(changed_sources(config.data, recorded, identities))
    console.print(f"[yellow]{edited} changed since {stale[0]} ran: running it and every stage after it again.[/]")
    _discard_from(root, manifest, list(fingerprints), stale[0])


def check_edited_outputs(manifest: Manifest, fingerprints: dict[str, str], force: bool) -> None:
    """A finished stage's file or model edited after the stage wrote it (a hand-edited pairs.jsonl, weights
    replaced) is never used without notice: refused, naming it; with --force the stage writes it again (seeded:
    as it first did), and the edit is kept beside it as <file>.edited (replacing an older one)."""
    for name, fp in fingerprints.items():
        if not stage_done(manifest, name, fp):
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


def check_plan(root: Path, manifest: Manifest, fingerprints: dict[str, str], force: bool, config: Config) -> None:
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
    complete = all(stage_done(manifest, n, fp) for n, fp in fingerprints.items())
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
