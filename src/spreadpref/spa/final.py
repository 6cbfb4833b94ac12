"""The end of a run: the final model chosen by ``loop.final_model`` among the models still on disk, the
guard's figures and warning recorded in the summary and printed, and a final model that lost its weights
rebuilt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spreadpref.config import Config
from spreadpref.models.loading import resolve_model_path, weights_problem
from spreadpref.runtime.layout import (
    MODEL_DIRECTORY,
    SEED_STAGE,
    TRAIN_STAGE,
    model_stage,
    round_stage,
)
from spreadpref.runtime.manifest import Manifest
from spreadpref.runtime.progress import console
from spreadpref.spa import guard
from spreadpref.spa.summary import read_summary


def rebuild_hollow_final(config: Config, manifest: Manifest, rounds: int) -> bool:
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


def finished_models(config: Config, manifest: Manifest, rounds: int) -> dict[int, Path]:
    """Every model of a finished run, from its manifest: {0: pi_0, 1: pi_1, ...}."""
    if config.loop.seed_stage:
        models = {0: manifest.output(SEED_STAGE, MODEL_DIRECTORY)}
    else:
        models = {0: Path(resolve_model_path(config.model.name_or_path))}
    for i in range(1, rounds + 1):
        models[i] = manifest.output(round_stage(i, TRAIN_STAGE), MODEL_DIRECTORY)
    return models


def choose_final(config: Config, summary: dict[str, Any], models: dict[int, Path], has_held_out: bool = True) -> Path:
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


def print_final(summary: dict[str, Any]) -> None:
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
