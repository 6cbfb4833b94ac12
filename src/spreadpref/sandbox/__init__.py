"""The sandbox: a config's SPA settings in the synthetic gold world, in minutes, against the baselines.

    spreadpref sandbox --config my.yaml --seeds 3

The world (:mod:`spreadpref.sandbox.world`) has a hidden gold reward, a tiny model and 30 gold-labelled seed
pairs; every variant runs through the real pipeline. The sandbox takes the *method* settings of a config (the
judge's safeguards, self-refinement, experience replay, beta, sampling; :func:`method_overrides`), leaves the
world's own budget (model, data, sizes, learning rates) as it is, and runs them beside DPO on the seed pairs
only, the paper's SPA and iterative DPO on gold labels, seed by seed. The table it prints is the paired table
of docs/results.md (:mod:`spreadpref.sandbox.compare`).

It answers "what does this setting do to a model whose gold reward I can see", not "how will my model do":
the world is 85k parameters and a made-up task. Seeds start at 1000 by default, apart from the development
(100-104) and reported (10-39) seeds of docs/results.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from spreadpref.config import NAMED_JUDGE_POLICIES, NAMED_REFERENCES, Config, flat_settings
from spreadpref.errors import ConfigError
from spreadpref.eval.stats import T_975
from spreadpref.models.loading import quiet_transformers_bars
from spreadpref.runtime.files import atomic_write_json, atomic_write_text
from spreadpref.runtime.lock import directory_lock
from spreadpref.runtime.manifest import Manifest
from spreadpref.runtime.progress import console, quiet_pipeline
from spreadpref.sandbox import compare, world
from spreadpref.sandbox.settings import REDUCED_WORLD, WorldSettings

# The settings a config brings into the world: the method's own. The rest (model, data, sizes, budget, devices)
# belongs to the world, whose budget was chosen on its development seeds.
METHOD_SECTIONS = ("judge", "refine")
METHOD_KEYS = (
    "train.beta",
    "loop.replay_fraction",
    "loop.group_by_length",
    "generation.num_samples",
    "generation.temperature",
    "generation.top_p",
)
WORLD_OWNED = frozenset(
    {
        "judge.kind",  # the world's round judge is the implicit one; gold and random are its baselines
        "judge.batch_size",
        "judge.seed_agreement",
        "judge.gold",
        "judge.reward_model",
        "judge.llm",
        "judge.custom",
    }
)
SANDBOX_STAGE = "sandbox"  # its entry in the directory's manifest.json
BASELINES = ("spa_dnd", "iterative_gold")  # beside the config's settings ("custom") and seed-only DPO
COMPARISONS = (
    ("custom", "seed_only"),
    ("custom", "spa_dnd"),
    ("custom", "iterative_gold"),
    ("spa_dnd", "seed_only"),
    ("iterative_gold", "seed_only"),
)


# Settings that do not change what the world computes (where files go, how much is printed).
SILENT_KEYS = frozenset({"output_dir", "allow_existing_files"})


def method_overrides(config: Config) -> tuple[list[str], list[str]]:
    """(overrides for the world's pipeline, notes on what was left to the world): the config's method settings
    that differ from the schema's defaults. A model named in ``judge.base`` or ``judge.reference`` (the README's
    "judge against the base model") becomes the world's base model, pi_base."""
    if config.judge.kind != "implicit":
        raise ConfigError(
            f"judge.kind={config.judge.kind}: the sandbox measures the implicit judge's settings; the world has "
            "no place for another judge (its gold and random judges are its baselines)"
        )
    current, default = flat_settings(config), flat_settings(Config())
    differs = {key: value for key, value in current.items() if value != default.get(key)}
    changed = {
        key: value for key, value in differs.items() if key.split(".")[0] in METHOD_SECTIONS or key in METHOD_KEYS
    }
    overrides, notes = [], []
    # Everything else the config changes is the world's own (its model, data, budget): said, not dropped silently.
    if kept_by_world := [key for key in differs if key not in changed and key not in SILENT_KEYS]:
        notes.append(
            f"{', '.join(kept_by_world)}: the world keeps its own model, data and budget for these "
            f"({len(kept_by_world)} setting{'s' if len(kept_by_world) > 1 else ''} of the config not carried)"
        )
    for key, value in changed.items():
        if key.split(".")[0] + "." + key.split(".")[1] in WORLD_OWNED:
            notes.append(f"{key} is the world's own")
        elif key == "judge.base" or (key == "judge.reference" and value not in NAMED_REFERENCES + ("none",)):
            overrides.append(f"{key}={{base}}")  # any model named here is the base model: the world's pi_base
            notes.append(f"{key}={value} is played by the world's base model (pi_base)")
        elif key == "judge.policy" and value not in NAMED_JUDGE_POLICIES:
            notes.append(f"judge.policy={value} names a model outside the world; the world's round model is used")
        else:
            text = json.dumps(value).replace("{", "{{").replace("}", "}}")  # JSON is YAML; braces survive format()
            overrides.append(f"{key}={text}")
    if config.loop.replay_fraction > 0:
        overrides.append("data.train={seed_pairs}")  # replay draws from the world's seed pairs
    return overrides, notes


def run_sandbox(
    config: Config,
    seeds: Sequence[int],
    directory: Path,
    settings: WorldSettings | None = None,
) -> dict[str, Any]:
    """The config's settings ("custom") beside seed-only DPO, the paper's SPA and iterative gold DPO, on each
    seed's world; writes ``sandbox.json`` and ``sandbox.md`` in ``directory`` and returns the summary."""
    settings = settings or WorldSettings()
    quiet_transformers_bars()  # the world saves its models itself: no "Writing model shards" bars in its output
    overrides, notes = method_overrides(config)
    # The same directory rules as `spreadpref run`: one process at a time, and a user's own files (a
    # sandbox.md of theirs) refused rather than overwritten; the manifest marks the directory as the sandbox's.
    with directory_lock(directory, "sandbox", allow_existing=False):
        manifest = Manifest(directory)
        if others := sorted(set(manifest.data["stages"]) - {SANDBOX_STAGE}):
            raise ConfigError(
                f"{directory} holds a spreadpref run or train result ({', '.join(others[:3])}): the sandbox writes "
                "its worlds and tables in a directory of its own; use another -o"
            )
        manifest.start(SANDBOX_STAGE, fingerprint=json.dumps({"overrides": overrides, "world": repr(settings)}))
        document = _run_seeds(config, overrides, notes, seeds, directory, settings)
        manifest.complete(
            SANDBOX_STAGE,
            seeds=list(seeds),
            outputs={"json": str(directory / "sandbox.json"), "markdown": str(directory / "sandbox.md")},
        )
    return document


def _run_seeds(
    config: Config,
    overrides: list[str],
    notes: list[str],
    seeds: Sequence[int],
    directory: Path,
    settings: WorldSettings,
) -> dict[str, Any]:
    shown = [o.replace("{{", "{").replace("}}", "}") for o in overrides if "={" not in o]  # not the world's paths
    console.print(f"Your settings in the gold world: {', '.join(shown) or 'the schema defaults'}")
    for note in notes:
        console.print(f"  [dim]left to the world: {note}[/]")
    results = []
    for n, seed in enumerate(seeds, 1):
        console.print(f"Seed {seed} ({n} of {len(seeds)}): the world, seed-only DPO, the paper's SPA, iterative gold "
                      "DPO and your settings ...")  # fmt: skip
        with quiet_pipeline():
            result = world.run_seed(settings, seed, directory, (*BASELINES, world.CUSTOM), custom=overrides)
        atomic_write_json(directory / f"seed-{seed}.json", result)
        final = {name: rows[-1]["gold_reward"] for name, rows in result["variants"].items()}
        console.print(
            f"  done in {result['seconds']:.0f} s; gold reward: seed-only {final['seed_only']:.3f}, "
            f"yours {final[world.CUSTOM]:.3f}"
        )
        results.append(result)
    summary = compare.aggregate(results, COMPARISONS, guard_variants=("custom",))
    document = {"seeds": list(seeds), "overrides": overrides, "left_to_the_world": notes, **summary}
    atomic_write_json(directory / "sandbox.json", document)
    seconds = sum(r["seconds"] for r in results)
    atomic_write_text(
        directory / "sandbox.md", compare.markdown(summary, list(seeds), seconds, describe_world(settings))
    )
    return document


def describe_world(settings: WorldSettings) -> str:
    """Which world the seeds ran in: the reduced one is smaller, not a noisier copy of the full one."""
    size = (
        f"{settings.seed_pairs} seed pairs, {len(settings.prompts_per_round)} rounds of "
        f"{'/'.join(map(str, sorted(set(settings.prompts_per_round))))} prompts, {settings.eval_prompts} evaluation prompts"
    )
    if settings == REDUCED_WORLD:
        return (
            f"reduced ({size}); its effects are about half the full world's and a seed's small differences can "
            "change sign there (README, sandbox): decide with the full world"
        )
    return size if settings != WorldSettings() else f"full ({size})"


def seeds_needed(half_width: float, n: int, difference: float, most: int = 200) -> int | None:
    """How many seeds a paired difference of ``difference`` needs for its 95% interval to exclude 0, at the
    spread these ``n`` seeds showed (sd from their half-width); None past ``most`` or without a spread."""
    if n < 2 or not math.isfinite(half_width) or half_width <= 0:
        return None
    sd = half_width * math.sqrt(n) / T_975.get(n - 1, 1.96)
    return next((k for k in range(2, most + 1) if T_975.get(k - 1, 1.96) * sd / math.sqrt(k) < abs(difference)), None)


def power_note(document: dict[str, Any], difference: float = 0.05) -> str | None:
    """One sentence on what these seeds can tell apart: the widest interval of "your settings" against seed-only
    DPO, and how many seeds a difference of ``difference`` gold reward would need at that spread."""
    rows = [d for d in document["differences"] if (d["a"], d["b"]) == ("custom", "seed_only")]
    if not rows or rows[0]["n"] < 2:
        return "One seed gives no interval: run --seeds 5 or more to tell a difference from noise."
    row = rows[0]
    needed = seeds_needed(row["half_width"], row["n"], difference)
    more = f"about {needed} seeds" if needed else "more than 200 seeds"
    return (
        f"With {row['n']} seeds, your settings against seed-only DPO are told apart only by a difference beyond "
        f"±{row['half_width']:.3f} gold reward; at the spread these seeds showed, a difference of {difference} would "
        f"need {more} (--seeds)."
    )


def differences_table(document: dict[str, Any]) -> Table:
    """The paired differences of the final models' gold reward, as the terminal shows them."""
    table = Table(title=f"Gold reward of the final models, paired over seeds {', '.join(map(str, document['seeds']))}")
    for column in ("a", "b", "a - b (95% CI)", "seeds where a > b"):
        table.add_column(column, justify="right" if column != "a" and column != "b" else "left")
    for d in document["differences"]:
        low, high = d["mean"] - d["half_width"], d["mean"] + d["half_width"]
        spread = f"({low:+.3f} to {high:+.3f})" if d["n"] > 1 else "(one seed: no interval)"
        table.add_row(
            compare.label(d["a"]), compare.label(d["b"]), f"{d['mean']:+.3f} {spread}", f"{d['wins']} of {d['n']}"
        )
    return table
