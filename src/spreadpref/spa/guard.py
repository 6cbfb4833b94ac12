"""The guard (beyond the paper): which model a run hands back, and a warning when the rounds made it worse.

Every model of a run (pi_0 after the seed stage, pi_i after round i) is measured once the same way,
whatever the judge settings: how often its implicit reward against pi_init prefers the human-chosen
reply of the held-out seed pairs (``data.seed_holdout``). That is the one signal of a model's quality a
user without a gold judge has. ``loop.final_model`` picks the run's final model by it (``best_held_out``)
or takes the last round (``last``, the paper); either way the run warns when the last round's model is
below the seed model on it.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from spreadpref.config import Config, JudgeSettings
from spreadpref.data.tokenize import TokenizedPair
from spreadpref.dpo.logprobs import forward_precision, training_precision
from spreadpref.eval.stats import proportion, t_interval
from spreadpref.models.loading import is_peft_model, load_for_inference
from spreadpref.runtime import distributed
from spreadpref.spa.judge import pair_outcomes

RULES = ("last", "best_held_out")
AGREEMENT_KEY = "model_held_out_agreement"
INTERVAL_KEY = "model_held_out_agreement_ci"
OUTCOMES_KEY = "model_held_out_outcomes"  # per held-out pair: 1 agrees, 0.5 tie, 0 disagrees (the verdicts' pairing)
MODEL_KEYS = (AGREEMENT_KEY, INTERVAL_KEY, OUTCOMES_KEY)
NO_HELD_OUT = (
    "No held-out human pairs (data.seed_holdout=0, too few seed pairs to hold 8 out, or no seed stage): no "
    "model's held-out agreement is measured, so the final model is the last round's and nothing warns when the "
    "rounds made it worse than the seed model."
)


def choose_final_round(agreements: Mapping[int, float | None], rule: str) -> int:
    """The final model's index (0: the seed model pi_0, i: round i's model) under ``rule``.

    ``last``: the largest index. ``best_held_out``: the highest held-out agreement, ties going to the earlier
    model; unmeasured models (None) are skipped, and with none measured it is the largest index."""
    if rule not in RULES:
        raise ValueError(f"unknown final-model rule {rule!r}; expected one of {', '.join(RULES)}")
    if not agreements:
        raise ValueError("no models to choose from")
    last = max(agreements)
    measured = [(k, v) for k, v in agreements.items() if v is not None]
    if rule == "last" or not measured:
        return last
    return max(measured, key=lambda item: (item[1], -item[0]))[0]


def below_seed_warning(
    agreements: Mapping[int, float | None], within_noise: bool = False, rule: str = "last"
) -> str | None:
    """One sentence when the last model agrees with the held-out human labels strictly less often than the seed
    model pi_0 (both measured); otherwise None. ``within_noise``: the last round's paired verdict found the
    difference inside its interval (:func:`round_verdict`), which the sentence then says. ``rule``: the run's
    loop.final_model; with best_held_out already set, the sentence says what it handed back instead of advising
    it."""
    if not agreements or 0 not in agreements:
        return None
    seed, last = agreements[0], agreements[max(agreements)]
    if seed is None or last is None or not last < seed:
        return None
    digits = 2
    while f"{last:.{digits}f}" == f"{seed:.{digits}f}" and digits < 6:
        digits += 1  # never "0.61 against 0.61"
    advice = (
        "loop.final_model=best_held_out (set) hands back the model that agrees most"
        if rule == "best_held_out"
        else "loop.final_model=best_held_out hands back the model that agrees most"
    )
    if within_noise:
        return (
            f"The last round's model agrees with the held-out human labels less often than the seed model "
            f"({last:.{digits}f} against {seed:.{digits}f}), by less than these held-out pairs can tell apart "
            f"(see its verdict): the rounds did not make it measurably better on the one signal without a gold "
            f"judge; {advice}."
        )
    return (
        f"The last round's model agrees with the held-out human labels less often than the seed model "
        f"({last:.{digits}f} against {seed:.{digits}f}): the rounds made it worse on the one signal without a gold "
        f"judge; {advice}."
    )


def selection_note(agreements: Mapping[int, float | None], chosen: int) -> str | None:
    """Under best_held_out, when a model was picked from several: its held-out figure is the best of several
    noisy ones, so it overstates how the model does on pairs it was not picked on."""
    measured = [v for v in agreements.values() if v is not None]
    if len(measured) < 2 or agreements.get(chosen) is None:
        return None
    return (
        f"Picked as the best of {len(measured)} held-out figures, its {agreements[chosen]:.2f} is optimistic: the "
        "maximum of noisy figures overstates the model's agreement on pairs it was not chosen on."
    )


def agreements_of(summary: Mapping[str, Any], rounds: int) -> dict[int, float | None]:
    """Every model's held-out agreement as ``summary.json`` holds it: {0: pi_0's, 1: pi_1's, ...} (None: not
    measured)."""
    agreements: dict[int, float | None] = {0: (summary.get("seed") or {}).get(AGREEMENT_KEY)}
    rows = summary.get("rounds") or {}
    for i in range(1, rounds + 1):
        agreements[i] = (rows.get(str(i)) or {}).get(AGREEMENT_KEY)
    return agreements


def measure_held_out_agreement(
    config: Config, tokenizer: PreTrainedTokenizerBase, model: str | Path, held_out: list[TokenizedPair]
) -> dict[str, Any]:
    """``model``'s held-out agreement: how often its implicit reward against pi_init (``model.name_or_path``),
    summed over the reply tokens, prefers the human-chosen reply of ``held_out`` (ties one half), with its 95%
    Wilson interval and the per-pair outcomes, as ``{model_held_out_agreement, model_held_out_agreement_ci,
    model_held_out_outcomes}``.

    Measured by the main process alone and the same on every process; both None when ``held_out`` is empty or
    the model is no longer on disk (pruned by ``loop.keep_models``)."""
    figures: dict[str, Any] = dict.fromkeys(MODEL_KEYS)
    if distributed.is_main() and held_out and Path(model).is_dir():
        policy = load_for_inference(config.model, model)
        adapter_off = is_peft_model(policy)  # a LoRA run's model is pi_init with an adapter: off, it is pi_init
        reference = None if adapter_off else load_for_inference(config.model, config.model.name_or_path)
        # The same measurement whatever the judge: plain sums of log-probs, the judge's batch size only.
        settings = JudgeSettings(batch_size=config.judge.batch_size)
        with forward_precision(training_precision(config), next(policy.parameters()).device):
            outcomes = pair_outcomes(policy, reference, held_out, settings, tokenizer.pad_token_id, adapter_off)
        agreement = proportion(sum(outcomes), len(outcomes))
        figures = {
            AGREEMENT_KEY: agreement["rate"],
            INTERVAL_KEY: [agreement["ci_low"], agreement["ci_high"]],
            OUTCOMES_KEY: outcomes,
        }
        del policy, reference
        gc.collect()
    return distributed.broadcast_object(figures)


def paired_difference(
    outcomes: list[float] | None, seed_outcomes: list[float] | None
) -> tuple[float, float, float] | None:
    """A model's held-out outcomes minus the seed model's, pair by pair: (mean, low, high) of the 95%
    t-interval. None when either model was not measured on the same pairs."""
    if not outcomes or not seed_outcomes or len(outcomes) != len(seed_outcomes):
        return None
    difference = t_interval([mine - seed for mine, seed in zip(outcomes, seed_outcomes)])
    return (
        difference["mean"],
        difference["mean"] - difference["half_width"],
        difference["mean"] + difference["half_width"],
    )


def smallest_detectable_difference(n: int) -> float | None:
    """The smallest difference in held-out agreement that ``n`` paired held-out pairs can ever tell from none:
    k/n for the least k such that k pairs changing, all the same way and none the other, gives a 95% t-interval
    that excludes 0. None when even all n changing cannot (n < 2)."""
    for k in range(1, n + 1):
        differences = [1.0] * k + [0.0] * (n - k)
        interval = t_interval(differences)
        if k == n or interval["mean"] - interval["half_width"] > 0:
            return k / n if n >= 2 else None
    return None


def round_verdict(index: int, outcomes: list[float] | None, seed_outcomes: list[float] | None) -> str | None:
    """One plain sentence: round ``index``'s model better or worse than the seed model pi_0 on held-out agreement
    when the paired interval (:func:`paired_difference`) excludes 0; otherwise "not distinguishable with N pairs",
    with the smallest difference N pairs could tell apart. None when either model was not measured on the same
    pairs."""
    if (paired := paired_difference(outcomes, seed_outcomes)) is None:
        return None
    mean, low, high = paired
    n = len(outcomes)
    figures = (
        f"{sum(outcomes) / n:.2f} against {sum(seed_outcomes) / n:.2f}; difference {mean:+.2f}, 95% CI {low:+.2f} "
        f"to {high:+.2f}"
    )
    if low > 0 or high < 0:
        word = "better than" if low > 0 else "worse than"
        return f"Round {index}: {word} the seed model on held-out agreement ({figures}, {n} human pairs)."
    detectable = smallest_detectable_difference(n)
    limit = (
        f"; {n} pairs can tell apart a difference of {detectable:.2f} at the least" if detectable is not None else ""
    )
    return f"Round {index}: not distinguishable from the seed model with {n} held-out human pairs ({figures}{limit})."


def within_noise(summary: Mapping[str, Any], index: int) -> bool:
    """Whether round ``index``'s paired interval against the seed model contains 0 (False when not measured)."""
    row = (summary.get("rounds") or {}).get(str(index)) or {}
    paired = paired_difference(row.get(OUTCOMES_KEY), (summary.get("seed") or {}).get(OUTCOMES_KEY))
    return paired is not None and paired[1] <= 0 <= paired[2]


def round_verdicts(summary: Mapping[str, Any], rounds: int) -> list[str]:
    """Every measured round's verdict against the seed model, in order (see :func:`round_verdict`)."""
    seed = (summary.get("seed") or {}).get(OUTCOMES_KEY)
    rows = summary.get("rounds") or {}
    verdicts = (round_verdict(i, (rows.get(str(i)) or {}).get(OUTCOMES_KEY), seed) for i in range(1, rounds + 1))
    return [v for v in verdicts if v is not None]
