"""The gold world's results over seeds: means with 95% t-intervals, paired differences, and the guard.

Each seed's result (:func:`spreadpref.sandbox.world.run_seed`) holds, per variant, one row per round of the
held-out figures. Seeds differ in their worlds; every comparison is paired seed by seed.
"""

from __future__ import annotations

from collections.abc import Sequence

from spreadpref.eval.stats import t_interval
from spreadpref.sandbox import world
from spreadpref.sandbox.settings import GUARD_PAIRS

FINAL = "final"  # the last round of a round variant, round 0 of the others
SAFEGUARD_VARIANTS = tuple(v for v in world.ROUND_VARIANTS if v.startswith(("spa_", "base_", "paper_")))
# Paired differences reported, each (a, b): a's final-round value minus b's, seed by seed.
DIFFERENCES = [
    *[(v, "seed_only") for v in SAFEGUARD_VARIANTS],
    *[(v, "spa_dnd") for v in SAFEGUARD_VARIANTS if v != "spa_dnd"],
    *[(v, "iterative_gold") for v in ("spa_dnd", "spa_length_replay", "base_ref", "base_fixed", "base_mix")],
    ("base_length_replay", "iterative_gold"),
    *[(v, "no_seed") for v in ("base_ref", "base_fixed", "base_mix", "base_length_replay")],
    ("base_length_replay", "base_fixed"),
    ("spa_dnd", "offline_gold"),
    ("spa_dnd", "iterative_random"),
    ("iterative_gold", "seed_only"),
    ("no_seed", "seed_only"),
    ("no_seed", "sft"),
]

METRICS = ("gold_reward", "win_rate_vs_sft", "reply_words", "kl_from_init")
LABEL_METRICS = (
    "self_label_accuracy",
    "length_skew",
    "smoothed_fraction",
    "smoothing_precision",
    "smoothing_recall",
)


def final_row(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: r["round"])


def value(result: dict, variant: str, round_index: int | str, metric: str):
    rows = result["variants"].get(variant)
    if not rows:
        return None
    row = final_row(rows) if round_index == FINAL else next((r for r in rows if r["round"] == round_index), None)
    return None if row is None else row.get(metric)


def interval(values: list) -> dict | None:
    present = [v for v in values if v is not None]
    return t_interval(present) if present else None


def aggregate(
    results: list[dict],
    differences: Sequence[tuple[str, str]] = DIFFERENCES,
    guard_variants: Sequence[str] = (*SAFEGUARD_VARIANTS, "iterative_gold"),
) -> dict:
    """Per variant and round: mean and 95% t half-width over seeds; the paired differences ``(a, b)`` of the final
    rounds; the guard's choices for ``guard_variants``."""
    table = []
    present = {v for res in results for v in res["variants"]}
    for variant in [*(v for v in world.VARIANTS if v in present), *sorted(present - set(world.VARIANTS))]:
        rounds = sorted({r["round"] for res in results for r in res["variants"].get(variant, [])})
        for i in rounds:
            row = {"variant": variant, "round": i}
            for metric in METRICS + LABEL_METRICS:
                row[metric] = interval([value(res, variant, i, metric) for res in results])
            # Seed by seed against the seed-only model: the worlds differ, the pairing removes that.
            paired = [
                (value(res, variant, i, "gold_reward"), value(res, "seed_only", 0, "gold_reward")) for res in results
            ]
            row["gold_vs_seed_only"] = interval([a - b for a, b in paired if a is not None and b is not None])
            table.append(row)
    paired_rows = []
    for a, b in differences:
        per_seed = [(value(res, a, FINAL, "gold_reward"), value(res, b, FINAL, "gold_reward")) for res in results]
        deltas = [x - y for x, y in per_seed if x is not None and y is not None]
        if deltas:
            stats = t_interval(deltas)
            paired_rows.append({"a": a, "b": b, **stats, "per_seed": deltas, "wins": sum(d > 0 for d in deltas)})
    return {"table": table, "differences": paired_rows, "guard": guard_analysis(results, guard_variants)}


def guard_analysis(results: list[dict], variants: Sequence[str]) -> list[dict]:
    """How the guard's choice of the final model does, per variant, rule and number of held-out pairs: its gold
    reward against the seed-only model (paired), the seeds where it ends below seed-only, and how often it picks
    the round (seed model included) with the best gold reward."""
    from spreadpref.spa.guard import RULES, choose_final_round  # noqa: PLC0415 - the pipeline's own rule

    rows = []
    for variant in variants:
        for n in GUARD_PAIRS:
            key = f"held_out_agreement_{n}"
            for rule in RULES:
                deltas, below, oracle_hits, warned, warned_right = [], 0, 0, 0, 0
                for res in results:
                    models = {
                        0: res["variants"]["seed_only"][0],
                        **{r["round"]: r for r in res["variants"].get(variant, [])},
                    }
                    if len(models) < 2 or any(key not in m for m in models.values()):
                        continue
                    chosen = choose_final_round({i: m[key] for i, m in models.items()}, rule)
                    delta = models[chosen]["gold_reward"] - models[0]["gold_reward"]
                    deltas.append(delta)
                    below += delta < 0
                    oracle_hits += chosen == max(models, key=lambda i: models[i]["gold_reward"])
                    last = max(models)
                    if models[last][key] < models[0][key]:  # the run's below-seed warning would fire
                        warned += 1
                        warned_right += models[last]["gold_reward"] < models[0]["gold_reward"]
                if deltas:
                    rows.append(
                        {
                            "variant": variant,
                            "pairs": n,
                            "rule": rule,
                            **t_interval(deltas),
                            "below_seed_only": below,
                            "best_round_picked": oracle_hits,
                            "warned": warned,
                            "warned_and_below": warned_right,
                            "per_seed": deltas,
                        }
                    )
    return rows


def fmt(cell: dict | None, spec: str = ".3f") -> str:
    if not cell:
        return "–"
    return f"{cell['mean']:{spec}} ± {cell['half_width']:{spec.lstrip('+')}}"


def markdown(summary: dict, seeds: list[int], seconds: float, world_name: str | None = None) -> str:
    lines = [
        f"Seeds {', '.join(map(str, seeds))}: mean ± half-width of the 95% t-interval over seeds.",
        *([f"World: {world_name}."] if world_name else []),
        "",
        "| variant | round | gold reward | − seed only (paired) | win rate vs SFT | words | KL from pi_init "
        "| self-label acc. | length skew | smoothed | smoothing precision | smoothing recall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["table"]:
        lines.append(
            f"| {label(row['variant'])} | {row['round']} | {fmt(row['gold_reward'])} | "
            f"{fmt(row['gold_vs_seed_only'], '+.3f')} | {fmt(row['win_rate_vs_sft'])} | {fmt(row['reply_words'], '.2f')} | {fmt(row['kl_from_init'], '.2f')} | "
            f"{fmt(row['self_label_accuracy'])} | {fmt(row['length_skew'], '.2f')} | {fmt(row['smoothed_fraction'])} | "
            f"{fmt(row['smoothing_precision'])} | {fmt(row['smoothing_recall'])} |"
        )
    lines += [
        "",
        "Paired differences of the final models' gold reward (a − b, seed by seed):",
        "",
        "| a | b | mean difference (95% CI) | seeds where a > b |",
        "|---|---|---|---|",
    ]
    for d in summary["differences"]:
        low, high = d["mean"] - d["half_width"], d["mean"] + d["half_width"]
        verdict = "excludes 0" if low > 0 or high < 0 else "contains 0"
        lines.append(
            f"| {label(d['a'])} | {label(d['b'])} | {d['mean']:+.3f} "
            f"({low:+.3f} to {high:+.3f}; {verdict}) | {d['wins']} of {d['n']} |"
        )
    lines += [
        "",
        "The guard: the final model chosen by held-out agreement (`loop.final_model`), its gold reward minus the "
        "seed-only model's (paired), with n held-out human pairs:",
        "",
        "| variant | n | rule | chosen − seed only (95% CI) | seeds below seed only | best round picked "
        "| warned (last round truly below) |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in summary.get("guard", []):
        lines.append(
            f"| {label(g['variant'])} | {g['pairs']} | {g['rule']} | {g['mean']:+.3f} "
            f"({g['mean'] - g['half_width']:+.3f} to {g['mean'] + g['half_width']:+.3f}) | {g['below_seed_only']} of "
            f"{g['n']} | {g['best_round_picked']} of {g['n']} | {g.get('warned', '–')} "
            f"({g.get('warned_and_below', '–')}) |"
        )
    lines += [
        "",
        "Columns: *n*, how many held-out human pairs the guard measured each model on; *rule*, `last` (the paper: "
        "the last round's model) or `best_held_out` (the model that agrees most with those pairs); *chosen − seed "
        "only*, the chosen model's gold reward minus the seed-only model's, mean over seeds with its paired 95% "
        "t-interval; *seeds below seed only*, seeds where the chosen model's gold reward is below the seed-only "
        "model's; *best round picked*, seeds where the rule picked the model with the highest gold reward; "
        "*warned*, seeds where the run warned that its last round agrees less than the seed model, and in "
        "brackets how many of those warnings were right (the last round's gold reward truly below).",
        "",
        f"Cost: {seconds / 60:.1f} min of seed processes (sum over seeds, one thread each).",
    ]
    return "\n".join(lines) + "\n"


def label(variant: str) -> str:
    """A variant's name in tables."""
    return world.CUSTOM_LABEL if variant == world.CUSTOM else world.VARIANTS.get(variant, variant)
