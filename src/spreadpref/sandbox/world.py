"""A synthetic gold world: a tiny language model, a hidden gold reward, and SPA run through the real pipeline.

The world, in a few lines:

- **Words.** A prompt is a topic token and a few content words (``t2 w7 w30 w11``); a reply is 3 to 8
  content words. The content words fall into one group per topic.
- **The hidden gold reward** ``r*(x, y)`` is the share of the reply's words that belong to the prompt's
  topic group. It plays the human: it labels the seed pairs and scores the held-out prompts.
- **pi_base** is trained in code on replies drawn uniformly from all words (its gold reward is about
  1 / topics), and **pi_init** (the SFT model) is pi_base fine-tuned on replies that use the topic's words
  a bit more often (``sft_good_rate``): it satisfies r* only part of the time, and DPO can learn more.
- **Everything else is the real pipeline**: the seed stage is :func:`spreadpref.train_policy`, the rounds
  are :func:`spreadpref.run` with ``loop.seed_stage=false`` from the seed model (so the variants share one
  seed stage), the implicit judge, refinement and DND are the shipped code, and the baselines' judges
  plug in through ``judge.kind=custom`` (:func:`gold_judge`, :func:`random_judge`).

``benchmarks/gold_world.py`` runs every variant on many seeds and writes docs/results.md's table; the slow
test ``tests/sandbox/test_world.py`` runs a reduced world so that a change that breaks the method fails CI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spreadpref.config import Config, load_config
from spreadpref.data.artifacts import Pair
from spreadpref.runtime.fingerprint import fingerprint
from spreadpref.runtime.layout import MODEL_DIRECTORY, round_directory, round_training_directory
from spreadpref.sandbox.build import SeedWorld, build_world, held_out_agreements
from spreadpref.sandbox.gold import gold_judge, random_judge  # the variants name them spreadpref.sandbox.world:...
from spreadpref.sandbox.lm import evaluate_model, load_model, make_tokenizer
from spreadpref.sandbox.settings import WorldSettings
from spreadpref.spa.summary import label_measurements

# The SPA hyper-parameters every variant shares; the world's budget (lr, epochs) was chosen on development
# seeds (benchmarks/gold_world.py --dev), never on the reported ones.
DEFAULT_SPA = (
    "data.max_length=32",
    "data.max_prompt_length=16",
    "data.seed_holdout=0",
    "train.beta=0.1",
    "train.learning_rate=2e-3",
    "train.num_epochs=3",
    "train.per_device_batch_size=16",
    "train.gradient_accumulation_steps=1",
    "train.warmup_ratio=0.1",
    "train.save_strategy=no",
    "train.logging_steps=5",
    "train.evaluate_after=false",
    "generation.num_samples=2",
    "generation.temperature=1.0",
    "generation.max_new_tokens=12",
    "generation.batch_size=64",
    "judge.batch_size=64",
    "judge.seed_agreement=false",
    "train.logprob_batch_size=64",
    "loop.epochs_per_round=1",
    "loop.learning_rate=5e-4",  # dev seeds 101-102: at 1e-3 and 2e-3 SPA's KL from pi_init ran away by round 3
    "loop.keep_models=8",
)

OFFLINE_EPOCHS = 1  # one pass over as many labels as all rounds together, as each round makes one pass over its own

VARIANTS = {
    "sft": "SFT (pi_init)",
    "seed_only": "DPO on the seed only",
    "spa_direct": "SPA, direct judgment",
    "spa_refine": "SPA + self-refinement",
    "spa_dnd": "SPA + refinement + DND (the paper)",
    "spa_keep_empty": "SPA + DND, empty replies paired (before 0.2)",
    "spa_length": "SPA + DND, length-regularised judge (fit)",
    "spa_replay": "SPA + DND, replay 25% seed pairs",
    "spa_top": "SPA + DND, top half of pairs by margin",
    "spa_k4": "SPA + DND, K = 4 best vs worst",
    "spa_consistency": "SPA + DND, consistency (soften)",
    "spa_anchored": "SPA + DND, anchored judge (pi_0 vs pi_init)",
    "spa_paper": "SPA + DND, paper-faithful settings",
    "base_ref": "Seeded SPA, judge pi_{i-1} vs pi_base",
    "base_fixed": "Seeded start, judge pi_init vs pi_base",
    "base_mix": "Seeded SPA, reference pi_init^0.5 pi_base^0.5",
    "base_length": "Seeded SPA vs pi_base + length-regularised judge",
    "spa_length_replay": "SPA + DND, length-regularised + replay 25%",
    "spa_length_anchored": "SPA + DND, length-regularised + anchored judge",
    "paper_length_replay": "SPA + DND, paper-faithful + length-regularised + replay 25%",
    "base_length_replay": "Seeded SPA vs pi_base + length-regularised + replay 25%",
    "iterative_gold": "Iterative DPO, gold labels (100%)",
    "offline_gold": "Offline DPO, gold labels, off-policy",
    "iterative_random": "Iterative DPO, random labels",
    "no_seed": "SPA without seed (reference: pi_base)",
}
CUSTOM = "custom"  # the sandbox's variant: SPA with a config's own settings (spreadpref.sandbox)
CUSTOM_LABEL = "Your settings (the config's SPA keys)"
ROUND_VARIANTS = (
    "spa_direct",
    "spa_refine",
    "spa_dnd",
    "spa_keep_empty",
    "spa_length",
    "spa_replay",
    "spa_top",
    "spa_k4",
    "spa_consistency",
    "spa_anchored",
    "spa_paper",
    "base_ref",
    "base_fixed",
    "base_mix",
    "base_length",
    "spa_length_replay",
    "spa_length_anchored",
    "paper_length_replay",
    "base_length_replay",
    "iterative_gold",
    "iterative_random",
    "no_seed",
)
DND = ("refine.enabled=true", "refine.decoupled=true")
# {base}, {init} and {seed_pairs} are the seed's world on disk (pi_base, pi_init, the seed pairs).
VARIANT_OVERRIDES = {
    "spa_direct": ("refine.enabled=false",),
    "spa_refine": ("refine.enabled=true", "refine.decoupled=false"),
    "spa_dnd": DND,
    "spa_keep_empty": (*DND, "judge.min_reply_tokens=0"),
    "spa_length": (*DND, "judge.length_penalty=fit"),
    "spa_replay": (*DND, "loop.replay_fraction=0.25", "data.train={seed_pairs}"),
    "spa_top": (*DND, "judge.top_fraction=0.5"),
    "spa_k4": (*DND, "generation.num_samples=4"),
    "spa_consistency": (*DND, "judge.consistency=soften"),
    "spa_anchored": (*DND, "judge.policy=seed"),
    # The paper's choices where the world departed from them: temperature 0.7, shuffled batches, one learning
    # rate for the seed stage and the rounds, and round 1 about 4x the seed (120 prompts on 30 pairs).
    "spa_paper": (
        *DND,
        "generation.temperature=0.7",
        "loop.group_by_length=false",
        "loop.learning_rate=2e-3",
        "loop.prompts_per_round=[120,120,120]",
    ),
    "base_ref": (*DND, "judge.reference={base}"),
    "base_fixed": (*DND, "judge.policy={init}", "judge.reference={base}"),
    "base_mix": (*DND, "judge.base={base}", "judge.base_weight=0.5"),
    "base_length": (*DND, "judge.reference={base}", "judge.length_penalty=fit"),
    "spa_length_replay": (*DND, "judge.length_penalty=fit", "loop.replay_fraction=0.25", "data.train={seed_pairs}"),
    "spa_length_anchored": (*DND, "judge.length_penalty=fit", "judge.policy=seed"),
    "iterative_gold": ("judge.kind=custom", "refine.enabled=false"),
    "iterative_random": ("judge.kind=custom", "refine.enabled=false"),
    "no_seed": DND,
}
REPLAY = ("loop.replay_fraction=0.25", "data.train={seed_pairs}")
VARIANT_OVERRIDES |= {
    "paper_length_replay": (*VARIANT_OVERRIDES["spa_paper"], "judge.length_penalty=fit", *REPLAY),
    "base_length_replay": (*VARIANT_OVERRIDES["base_length"], *REPLAY),
}


# ---------------------------------------------------------------------------------------------
# The variants, through the real pipeline


def pipeline_config(world: WorldSettings, output_dir: Path, overrides: Sequence[str]) -> Config:
    rounds = len(world.prompts_per_round)
    return load_config(
        None,
        [
            *DEFAULT_SPA,
            *world.spa,
            f"loop.rounds={rounds}",
            f"loop.prompts_per_round=[{','.join(map(str, world.prompts_per_round))}]",
            f"output_dir={output_dir}",
            "eval.after_run=false",
            *overrides,
        ],
    )


def variant_overrides(
    name: str, world: WorldSettings, sw: SeedWorld, seed_model: Path, custom: Sequence[str] = ()
) -> list[str]:
    """The pipeline settings of round variant ``name``: its start, its judge and its refinement. ``custom`` is the
    variant of that name (the sandbox's: a config's own settings), with the same placeholders."""
    start = sw.init if name == "no_seed" else seed_model
    reference = sw.base if name == "no_seed" else sw.init
    out = [
        f"model.name_or_path={start}",
        f"data.prompts={sw.round_prompts}",
        "loop.seed_stage=false",
        f"judge.reference={reference}",
        f"seed={sw.seed}",
        *(
            o.format(base=sw.base, init=sw.init, seed_pairs=sw.seed_pairs)
            for o in (custom if name == CUSTOM else VARIANT_OVERRIDES[name])
        ),
    ]
    if name == "iterative_gold":
        out += [
            "judge.custom.factory=spreadpref.sandbox.world:gold_judge",
            f"judge.custom.kwargs={{words_per_topic: {world.words_per_topic}}}",
        ]
    elif name == "iterative_random":
        out += [
            "judge.custom.factory=spreadpref.sandbox.world:random_judge",
            f"judge.custom.kwargs={{seed: {sw.seed}}}",
        ]
    else:  # SPA: the gold reward measures the self-labels and the smoothing, never trains
        out += [
            "judge.gold=custom",
            "judge.custom.factory=spreadpref.sandbox.world:gold_judge",
            f"judge.custom.kwargs={{words_per_topic: {world.words_per_topic}}}",
        ]
    return out


def _train_stage(world: WorldSettings, output_dir: Path, start: Path, data: Path, seed: int, extra=()) -> Path:
    from spreadpref.dpo.train import train_policy  # noqa: PLC0415 - Trainer imports cost seconds

    config = pipeline_config(
        world, output_dir, [f"model.name_or_path={start}", f"data.train={data}", f"seed={seed}", *extra]
    )
    return train_policy(config).model_dir


def run_seed(
    world: WorldSettings,
    seed: int,
    directory: Path,
    variants: Sequence[str] = tuple(VARIANTS),
    custom: Sequence[str] = (),
) -> dict[str, Any]:
    """Every variant of ``variants`` on one seed's world; per variant, per round: the held-out metrics and the
    label measurements. Finished stages are reused (the pipeline resumes), so a killed run continues. The variant
    ``custom`` (when in ``variants``) is SPA with the overrides ``custom``."""
    from spreadpref.spa.loop import run  # noqa: PLC0415 - deferred, as above

    sw = build_world(world, seed, directory / f"seed-{seed}")
    tokenizer = make_tokenizer(world)
    init = load_model(sw.init)
    results: dict[str, Any] = {"seed": seed, "world": sw.info, "variants": {}}

    def evaluate(model_dir: Path, tag: str) -> dict[str, float]:
        figures = evaluate_model(model_dir, init, tokenizer, world, sw.held_out, seed * 1000 + 17)
        return {**figures, **held_out_agreements(model_dir, init, tokenizer, sw.guard_pairs)}

    started = time.perf_counter()
    results["variants"]["sft"] = [dict(evaluate(sw.init, "sft"), round=0)]
    seed_model = _train_stage(world, sw.directory / "seed_only", sw.init, sw.seed_pairs, seed)
    results["variants"]["seed_only"] = [dict(evaluate(seed_model, "seed_only"), round=0)]
    if "offline_gold" in variants:
        offline = _train_stage(
            world,
            sw.directory / "offline_gold",
            sw.init,
            sw.offline_pairs,
            seed,
            [f"train.num_epochs={OFFLINE_EPOCHS}"],
        )
        results["variants"]["offline_gold"] = [dict(evaluate(offline, "offline_gold"), round=0)]
    for name in (v for v in (*ROUND_VARIANTS, CUSTOM) if v in variants):
        run_dir = variant_directory(sw.directory, name, custom)
        config = pipeline_config(world, run_dir, variant_overrides(name, world, sw, seed_model, custom))
        summary = run(config).summary
        rows = (
            [dict(evaluate(sw.init if name == "no_seed" else seed_model, name), round=0)] if name == "no_seed" else []
        )
        for i in range(1, len(world.prompts_per_round) + 1):
            model_dir = round_training_directory(run_dir, i) / MODEL_DIRECTORY
            rows.append(dict(evaluate(model_dir, name), round=i, **label_measurements(summary["rounds"][str(i)])))
        results["variants"][name] = rows
    results["seconds"] = round(time.perf_counter() - started + sw.info["seconds"], 1)
    return add_length_skew(results, sw.directory, custom)


def variant_directory(seed_directory: Path, name: str, custom: Sequence[str] = ()) -> Path:
    """Where a variant runs in a seed's world. The sandbox's own settings run in a folder named by them, so that
    other settings in the same output directory are a new run beside the world and its baselines, which are kept."""
    return seed_directory / (f"{CUSTOM}-{fingerprint(list(custom))[:10]}" if name == CUSTOM else name)


def chosen_shorter(pairs_file: Path) -> float | None:
    """Among a file's pairs whose replies differ in length, the share whose chosen reply is the shorter: 0.5
    for labels that ignore length (the gold reward's are near it), far from it for a judge that learnt length."""
    if not pairs_file.is_file():
        return None
    rows = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    lengths = [(len(r["chosen"].split()), len(r["rejected"].split())) for r in rows]
    unequal = [(c, r) for c, r in lengths if c != r]
    return sum(c < r for c, r in unequal) / len(unequal) if unequal else None


def add_length_skew(result: dict[str, Any], seed_directory: Path, custom: Sequence[str] = ()) -> dict[str, Any]:
    """Fill in ``chosen_shorter`` for the seed pairs and every round of every variant, from the files on disk."""
    result["world"]["seed_pairs_chosen_shorter"] = chosen_shorter(seed_directory / "seed_pairs.jsonl")
    for name, rows in result["variants"].items():
        for row in rows:
            if row["round"] > 0:
                share = chosen_shorter(
                    round_directory(variant_directory(seed_directory, name, custom), row["round"]) / Pair.FILE
                )
                row["chosen_shorter"] = share
                # Direction-free: 0 when length does not predict the label, 1 when it always does.
                row["length_skew"] = None if share is None else abs(2 * share - 1)
    return result


__all__ = [
    "CUSTOM",
    "DEFAULT_SPA",
    "ROUND_VARIANTS",
    "VARIANTS",
    "gold_judge",
    "random_judge",
    "run_seed",
]
