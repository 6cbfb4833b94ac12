"""The judge stage: SPA's direct preference judgment by the implicit DPO reward (or an external judge).

Every sample y of prompt x gets the score ``s = log pi_{i-1}(y|x) - log pi_ref(y|x)`` (see
:mod:`spreadpref.judges.implicit`), where pi_ref is the initial SFT model by default. For each prompt
the highest-scoring sample is chosen and the lowest rejected, for any K >= 2. Prompts whose best and
worst replies are identical, or tie exactly, give no pair and are counted. The pair keeps
``margin = s_chosen - s_rejected`` and ``p = sigmoid(beta * margin)``, and carries the pi_{i-1}
log-probs that the round's DPO training uses as its reference.

With an external judge (``judge.kind`` reward_model, llm or verifier: the paper's iterative-DPO
baselines) the samples still get their pi_{i-1} log-probs, for the training reference, but the score
and ``p`` come from that judge (see :mod:`spreadpref.judges`).
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from spreadpref.config import NAMED_JUDGE_POLICIES, NAMED_REFERENCES, Config, JudgeSettings
from spreadpref.data.artifacts import GoldVerdict, JudgedSample, Pair, Sample, Verdict
from spreadpref.data.tokenize import TokenizedPair
from spreadpref.dpo.logprobs import forward_precision, score_sequences, training_precision
from spreadpref.errors import SpreadprefError
from spreadpref.eval.labels import accuracy_by_margin, self_label_accuracy
from spreadpref.eval.stats import proportion
from spreadpref.judges import make_judge
from spreadpref.judges.base import Comparison, Judge
from spreadpref.judges.implicit import (
    both_logps,
    implicit_score,
    preference_probability,
    score_replies,
)
from spreadpref.models.loading import is_peft_model, load_for_inference, load_tokenizer, resolve_model_path
from spreadpref.runtime import distributed
from spreadpref.runtime.files import atomic_write_json, is_local_path, write_jsonl
from spreadpref.runtime.progress import console
from spreadpref.runtime.units import run_in_parts
from spreadpref.spa.context import StageContext
from spreadpref.spa.safeguards import (
    Candidate,
    PairingRules,
    best_and_worst,
    content_tokens,
    fit_length_alpha,
    is_degenerate,
    length_skew,
    reversed_by_previous,
    top_by_margin,
)

CHUNK = 16  # samples per resumable unit of judging (and per progress step)


@dataclass
class JudgeStats:
    prompts: int = 0
    samples: int = 0
    pairs: int = 0
    identical_dropped: int = 0
    ties_dropped: int = 0
    cut_off_samples: int = 0
    mean_reply_tokens: float = 0.0
    margin_quantiles: dict[str, float] = field(default_factory=dict)
    degenerate_samples: int = 0  # never paired (judge.min_reply_tokens)
    degenerate_prompts: int = 0  # prompts left with fewer than two pairable samples
    length_alpha: float = 0.0  # the length penalty applied (judge.length_penalty)
    length_skew_before: float | None = None  # the labels' length skew without the penalty
    length_skew: float | None = None  # ... and with it
    low_margin_dropped: int = 0  # judge.top_fraction
    inconsistent: int = 0  # judge.consistency: pairs the previous model's judge reverses (softened or dropped)

    def safeguards(self) -> dict[str, Any]:
        """What the label safeguards did (the summary row's ``safeguards``)."""
        names = ("degenerate_samples", "degenerate_prompts", "length_alpha", "length_skew_before", "length_skew")
        return {name: getattr(self, name) for name in (*names, "low_margin_dropped", "inconsistent")}


@dataclass
class JudgeModels:
    """Where a round's judge finds its models: pi_{i-1} (always: its log-probs are the training reference), the
    judge reference, and, when the safeguards ask for them, the judge's own policy, the base model and the
    previous model (judge.policy, judge.base, judge.consistency). None: not needed."""

    policy: str | Path
    reference: str | None = None
    judge_policy: str | None = None
    base: str | None = None
    previous: str | None = None


@dataclass
class ExtraModels:
    """The loaded models beside pi_{i-1} and the reference (None where not needed)."""

    judge_policy: PreTrainedModel | None = None
    base: PreTrainedModel | None = None
    previous: PreTrainedModel | None = None


POLICY_LOGPS_FILE = "policy_logps.jsonl"  # external judges: the pi_{i-1} log-probs before the verdicts
SEED_AGREEMENT_FILE = "seed_agreement.json"
OUTPUTS = (JudgedSample.FILE, Pair.FILE, SEED_AGREEMENT_FILE, POLICY_LOGPS_FILE, Verdict.FILE, GoldVerdict.FILE)


@dataclass
class JudgeResult:
    pairs: list[Pair]
    stats: JudgeStats
    metrics: dict[str, Any]


@dataclass
class HumanLabels:
    """Human-labelled seed pairs to hold the self-judge against: those pi_0 was trained on, and those held out."""

    trained: list[TokenizedPair]
    held_out: list[TokenizedPair]


def judge_stage(
    ctx: StageContext,
    samples: list[Sample],
    policy_path: str | Path | JudgeModels,
    reference_path: str | None,
    metadata: dict[str, dict[str, Any]],
    human: HumanLabels | None = None,
) -> JudgeResult:
    """Judge a round's samples with ``config.judge`` and pair them; writes judged.jsonl and pairs.jsonl.

    ``policy_path`` is pi_{i-1} (or a :class:`JudgeModels` naming every model the judge needs), and
    ``reference_path`` the judge reference (None: no reference); ``metadata`` maps prompt ids to
    their extra columns (the verifier's constraints). With ``human`` the self-judge's agreement with
    the human labels is measured too, and with ``judge.gold`` the gold judge labels every pair.
    """
    config = ctx.config
    kind = config.judge.kind
    paths = (
        policy_path if isinstance(policy_path, JudgeModels) else standalone_models(config, policy_path, reference_path)
    )
    started = time.perf_counter()
    policy = load_for_inference(config.model, paths.policy)
    needs_reference = paths.reference is not None and (kind == "implicit" or human is not None)
    # A LoRA pi_{i-1} is pi_init with an adapter: against pi_init, the reference is the same weights, adapter off.
    adapter_off = needs_reference and is_peft_model(policy) and is_starting_model(config, paths.reference)
    reference = load_for_inference(config.model, paths.reference) if needs_reference and not adapter_off else None
    extra = load_extra_models(config, paths, reference) if kind == "implicit" else ExtraModels()
    # pi_{i-1}'s log-probs become the round's DPO reference: computed under the training forward's precision.
    with forward_precision(training_precision(config), next(policy.parameters()).device):
        judged = judge_samples(
            policy, reference if kind == "implicit" else None, samples, ctx, metadata, extra, adapter_off
        )
    rules = PairingRules.from_settings(config.judge, config.refine.alpha)
    pairs, stats = pair_samples(samples, judged, config.train.beta, ctx.round_index, rules)
    if distributed.is_main():
        write_jsonl(ctx.path(Pair.FILE), [pair.to_row() for pair in pairs])
    distributed.barrier()
    judge_seconds = time.perf_counter() - started
    metrics: dict[str, Any] = dict(vars(stats), judge_kind=kind)
    if human is not None and distributed.is_main():  # a few dozen pairs: not worth sharding
        agreement = human_agreement(policy, reference, human, config.judge, ctx.tokenizer.pad_token_id, adapter_off)
        atomic_write_json(ctx.path(SEED_AGREEMENT_FILE), agreement)
        metrics.update(agreement)
    del policy, reference, extra
    gc.collect()
    if config.judge.gold is not None:
        gold = make_judge(config.judge.gold_settings(), config.model, beta=config.train.beta, tokenizer=ctx.tokenizer)
        verdicts = gold_verdicts(gold, pairs, metadata, ctx.path(GoldVerdict.FILE), ctx.round_index)
        metrics["gold"] = gold_label_figures(verdicts)
    two_models = kind == "implicit" and reference_path is not None
    scored_tokens = sum(s.num_tokens + len(s.prompt_ids) for s in samples) * (2 if two_models else 1)
    # Throughput of judging the round's samples; the stage time also covers the seed-agreement check.
    metrics.update(
        seconds=round(time.perf_counter() - started, 1),
        tokens_per_second=round(scored_tokens / max(judge_seconds, 1e-9), 1),
    )
    return JudgeResult(pairs, stats, metrics)


def is_starting_model(config: Config, path: str | Path | None) -> bool:
    """Whether ``path`` is the run's starting model, ``model.name_or_path`` (pi_init), the base of its adapters."""
    return path is not None and str(path) == resolve_model_path(config.model.name_or_path)


def standalone_models(config, policy: str | Path, reference: str | None) -> JudgeModels:
    """The judge's models outside a run (``spreadpref judge``): the given policy and reference, with judge.base
    and a judge.policy that names a model (`initial` or a path); `seed`, `previous` and judge.consistency need a
    run's models, so they fall back to the given policy."""
    named = config.judge.policy
    judge_policy = config.model.name_or_path if named == "initial" else None if named in NAMED_JUDGE_POLICIES else named
    return JudgeModels(
        policy,
        reference,
        judge_policy=resolve_model_path(judge_policy) if judge_policy else None,
        base=resolve_model_path(config.judge.base) if config.judge.base else None,
    )


def load_extra_models(config, paths: JudgeModels, reference: PreTrainedModel | None) -> ExtraModels:
    """The judge's own policy, the base model and the previous model, each loaded once; a path equal to the
    reference's reuses the loaded reference."""

    def load(path: str | None) -> PreTrainedModel | None:
        if path is None or str(path) == str(paths.policy):
            return None  # pi_{i-1} itself: its log-probs are computed anyway
        if reference is not None and str(path) == str(paths.reference):
            return reference
        return load_for_inference(config.model, path)

    return ExtraModels(load(paths.judge_policy), load(paths.base), load(paths.previous) if paths.previous else None)


def _reply_logps(model: PreTrainedModel | None, chunk: list[Sample], pad_token_id: int, batch_size: int):
    if model is None:
        return [None] * len(chunk)
    logps, _ = score_sequences(
        model, [s.prompt_ids for s in chunk], [s.reply_ids for s in chunk], pad_token_id, batch_size, progress=False
    )
    return [float(x) for x in logps]


def score_samples(
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    samples: list[Sample],
    settings: JudgeSettings,
    pad_token_id: int,
    out_file: Path,
    round_index: int = 0,
    reference_is_adapter_off: bool = False,
    extra: ExtraModels | None = None,
) -> list[JudgedSample]:
    """Every sample with its policy and reference log-probs and its score (resumable in chunks).

    The score is ``log pi_judge - [(1 - w) log pi_ref + w log pi_base]`` (pi_judge: ``extra.judge_policy``, else
    the policy; the base term only with ``extra.base``); with ``extra.previous`` the same score with the previous
    model as pi_judge is kept beside it (judge.consistency). When pi_{i-1} is itself the previous model (round 2
    with judge.policy=seed), ``previous_score`` is its score."""
    extra = extra or ExtraModels()
    chunks = [samples[i : i + CHUNK] for i in range(0, len(samples), CHUNK)]

    def process(_: int, chunk: list[Sample]) -> list[JudgedSample]:
        # The chunk loop shows the progress; the inner passes stay quiet.
        policy_logps, reference_logps, counts = both_logps(
            policy,
            reference,
            [s.prompt_ids for s in chunk],
            [s.reply_ids for s in chunk],
            pad_token_id,
            settings.batch_size,
            reference_is_adapter_off,
            progress=False,
        )
        judge_logps = _reply_logps(extra.judge_policy, chunk, pad_token_id, settings.batch_size)
        base_logps = _reply_logps(extra.base, chunk, pad_token_id, settings.batch_size)
        previous_logps = _reply_logps(extra.previous, chunk, pad_token_id, settings.batch_size)
        judged = []
        rows = zip(chunk, policy_logps.tolist(), reference_logps, counts.tolist(), judge_logps, base_logps)
        for (sample, pol, ref, count, jud, base), prev in zip(rows, previous_logps):
            # A non-finite score stops here, before anything of this chunk is written.
            reply = f"prompt {sample.prompt_id!r}, sample {sample.sample}"
            score = implicit_score(pol if jud is None else jud, ref, sample.num_tokens, settings, base, reply)
            previous_score = None
            if settings.consistency != "none":
                previous = pol if prev is None else prev
                previous_score = implicit_score(previous, ref, sample.num_tokens, settings, base, reply)
            judged.append(
                JudgedSample(
                    prompt_id=sample.prompt_id,
                    prompt_index=sample.prompt_index,
                    sample=sample.sample,
                    text=sample.text,
                    num_tokens=sample.num_tokens,
                    finish_reason=sample.finish_reason,
                    policy_logps=pol,
                    reference_logps=ref,
                    judged_tokens=count,
                    score=score,
                    judge_logps=jud,
                    base_logps=base,
                    previous_score=previous_score,
                )
            )
        return judged

    return run_in_parts(out_file, chunks, process, JudgedSample, f"Judging (round {round_index})", order=_order)


def _order(row: JudgedSample | Verdict) -> tuple[int, int]:
    return row.prompt_index, row.sample


def external_verdicts(
    judge: Judge,
    samples: list[Sample],
    metadata: dict[str, dict[str, Any]],
    out_file: Path,
    round_index: int = 0,
    prompts_per_unit: int = 8,
) -> list[Verdict]:
    """Per sample, the external judge's score and its preference row over the prompt's other samples."""
    groups: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.prompt_index].append(sample)
    ordered = [sorted(groups[k], key=lambda s: s.sample) for k in sorted(groups)]
    units = [ordered[i : i + prompts_per_unit] for i in range(0, len(ordered), prompts_per_unit)]

    def process(_: int, unit: list[list[Sample]]) -> list[Verdict]:
        comparisons = [
            Comparison(
                prompt=g[0].prompt,
                replies=[s.text for s in g],
                id=g[0].prompt_id,
                metadata=metadata.get(g[0].prompt_id, {}),
            )
            for g in unit
        ]
        verdicts = []
        for group, judgement in zip(unit, judge.judge(comparisons)):
            for position, sample in enumerate(group):
                # prefer is indexed by sample number: pair_samples looks the rejected one up by it.
                prefer = [0.5] * (max(s.sample for s in group) + 1)
                for other, other_sample in enumerate(group):
                    prefer[other_sample.sample] = judgement.prefer[position][other]
                verdicts.append(
                    Verdict(
                        prompt_index=sample.prompt_index,
                        sample=sample.sample,
                        judge_score=judgement.scores[position],
                        prefer=prefer,
                    )
                )
        return verdicts

    return run_in_parts(
        out_file, units, process, Verdict, f"Judging with {judge.name} (round {round_index})", order=_order
    )


def judge_samples(
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    samples: list[Sample],
    ctx: StageContext,
    metadata: dict[str, dict[str, Any]] | None = None,
    extra: ExtraModels | None = None,
    reference_is_adapter_off: bool = False,
) -> list[JudgedSample]:
    """judged.jsonl for ``config.judge.kind``: pi_{i-1} log-probs (the training reference) and the score."""
    config, pad = ctx.config, ctx.tokenizer.pad_token_id
    if config.judge.kind == "implicit":
        out = ctx.path(JudgedSample.FILE)
        return score_samples(
            policy, reference, samples, config.judge, pad, out, ctx.round_index, reference_is_adapter_off, extra
        )
    logps = score_samples(policy, None, samples, config.judge, pad, ctx.path(POLICY_LOGPS_FILE), ctx.round_index)
    judge = make_judge(config.judge, config.model, beta=config.train.beta, policy=policy, tokenizer=ctx.tokenizer)
    verdicts = external_verdicts(judge, samples, metadata or {}, ctx.path(Verdict.FILE), ctx.round_index)
    judged = merge_external(logps, verdicts)
    if distributed.is_main():
        write_jsonl(ctx.path(JudgedSample.FILE), [row.to_row() for row in judged])
    return judged


def merge_external(judged: list[JudgedSample], verdicts: list[Verdict]) -> list[JudgedSample]:
    """The pi_{i-1} log-probs of ``judged`` with the external judge's score and preferences."""
    by_key = {(v.prompt_index, v.sample): v for v in verdicts}
    merged = []
    for row in judged:
        verdict = by_key[(row.prompt_index, row.sample)]
        merged.append(dataclasses.replace(row, score=verdict.judge_score, prefer=verdict.prefer))
    return merged


def pair_samples(
    samples: list[Sample],
    judged: list[JudgedSample],
    beta: float,
    round_index: int = 0,
    rules: PairingRules | None = None,
) -> tuple[list[Pair], JudgeStats]:
    """Chosen = highest score, rejected = lowest, per prompt; identical replies and ties are dropped.

    ``rules`` are the safeguards (:mod:`spreadpref.spa.safeguards`): degenerate samples are left out before
    pairing, the length penalty shapes the scores that pick the pair (margin and p are of the shaped scores),
    and the consistency check and the margin cut apply to the pairs."""
    rules = rules or PairingRules()
    by_prompt: dict[int, list[tuple[Sample, JudgedSample]]] = defaultdict(list)
    stats = JudgeStats(samples=len(samples))
    for sample, verdict in zip(samples, judged, strict=True):
        if (sample.prompt_index, sample.sample) != (verdict.prompt_index, verdict.sample):
            raise ValueError("generations and judgements are not aligned")
        by_prompt.setdefault(sample.prompt_index, [])
        if is_degenerate(sample.text, sample.num_tokens, sample.finish_reason, rules.min_reply_tokens):
            stats.degenerate_samples += 1
            continue
        by_prompt[sample.prompt_index].append((sample, verdict))
    stats.prompts = len(by_prompt)
    stats.cut_off_samples = sum(s.cut_off for s in samples)
    stats.mean_reply_tokens = sum(s.num_tokens for s in samples) / max(len(samples), 1)
    groups = {k: g for k, g in sorted(by_prompt.items()) if len(g) >= 2}
    stats.degenerate_prompts = sum(1 for g in by_prompt.values() if len(g) < 2)
    candidates = {
        k: [(v.score, content_tokens(s.num_tokens, s.finish_reason)) for s, v in g] for k, g in groups.items()
    }
    alpha = round_length_alpha(list(candidates.values()), rules.length_penalty)
    stats.length_alpha = alpha
    stats.length_skew_before = _skew(candidates, 0.0)
    stats.length_skew = _skew(candidates, alpha)
    pairs = []
    for prompt_index, group in groups.items():
        best, worst = best_and_worst(candidates[prompt_index], alpha)
        (chosen, chosen_v), (rejected, rejected_v) = group[best], group[worst]
        if chosen.reply_ids == rejected.reply_ids:
            stats.identical_dropped += 1
            continue
        chosen_score = chosen_v.score - alpha * candidates[prompt_index][best][1]
        rejected_score = rejected_v.score - alpha * candidates[prompt_index][worst][1]
        if chosen_score == rejected_score:
            stats.ties_dropped += 1
            continue
        label = 1.0
        if rules.consistency != "none" and reversed_by_previous(chosen_v.previous_score, rejected_v.previous_score):
            stats.inconsistent += 1
            if rules.consistency == "drop":
                continue
            label = rules.soft_label
        margin = chosen_score - rejected_score
        # External judges give the preference probability; the implicit one is Bradley-Terry on the margin.
        p = chosen_v.prefer[rejected.sample] if chosen_v.prefer else preference_probability(margin, beta)
        pairs.append(
            Pair(
                id=f"round{round_index}-{chosen.prompt_id}",
                prompt_id=chosen.prompt_id,
                prompt=chosen.prompt,
                chosen=chosen.text,
                rejected=rejected.text,
                prompt_ids=chosen.prompt_ids,
                chosen_ids=chosen.reply_ids,
                rejected_ids=rejected.reply_ids,
                chosen_truncated=chosen.cut_off,
                rejected_truncated=rejected.cut_off,
                chosen_score=chosen_score,
                rejected_score=rejected_score,
                margin=margin,
                p=p,
                label=label,
                # The judge's pi_{i-1} log-probs are exactly the reference of round i's DPO.
                ref_chosen_logps=chosen_v.policy_logps,
                ref_rejected_logps=rejected_v.policy_logps,
            )
        )
    kept = top_by_margin([pair.margin for pair in pairs], rules.top_fraction)
    stats.low_margin_dropped = len(pairs) - len(kept)
    pairs = [pairs[i] for i in kept]
    stats.pairs = len(pairs)
    if pairs:
        margins = torch.tensor([pair.margin for pair in pairs], dtype=torch.float64)
        stats.margin_quantiles = {f"p{int(q * 100)}": float(torch.quantile(margins, q)) for q in (0.1, 0.5, 0.9)}
    return pairs, stats


def round_length_alpha(groups: list[list[Candidate]], penalty: str | float) -> float:
    """judge.length_penalty as this round applies it: fitted on the round's own candidates, fixed, or none."""
    if penalty == "none":
        return 0.0
    if penalty == "fit":
        return fit_length_alpha(groups)
    return float(penalty)


def _skew(candidates: dict[int, list[Candidate]], alpha: float) -> float | None:
    lengths = []
    for group in candidates.values():
        best, worst = best_and_worst(group, alpha)
        lengths.append((group[best][1], group[worst][1]))
    return length_skew(lengths)


def gold_verdicts(
    judge: Judge, pairs: list[Pair], metadata: dict[str, dict[str, Any]], out_file: Path, round_index: int = 0
) -> list[GoldVerdict]:
    """The gold judge's verdict on every self-labelled pair (resumable in units of 16 pairs)."""
    units = [pairs[i : i + 16] for i in range(0, len(pairs), 16)]

    def process(_: int, unit: list[Pair]) -> list[GoldVerdict]:
        comparisons = [
            Comparison(
                prompt=p.prompt, replies=[p.chosen, p.rejected], id=p.prompt_id, metadata=metadata.get(p.prompt_id, {})
            )
            for p in unit
        ]
        return [
            GoldVerdict(
                pair_id=p.id, p=j.p(0, 1), chosen_score=j.scores[0], rejected_score=j.scores[1], margin=p.margin
            )
            for p, j in zip(unit, judge.judge(comparisons))
        ]

    return run_in_parts(out_file, units, process, GoldVerdict, f"Gold labels with {judge.name} (round {round_index})")


def gold_label_figures(verdicts: list[GoldVerdict]) -> dict[str, Any]:
    """Self-label accuracy (with its interval and the gold ties) and accuracy by judge-margin decile."""
    gold_p = [v.p for v in verdicts]
    return {**self_label_accuracy(gold_p), "by_margin_decile": accuracy_by_margin([v.margin for v in verdicts], gold_p)}


def label_agreement(
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    pairs: list[TokenizedPair],
    settings: JudgeSettings,
    pad_token_id: int,
    reference_is_adapter_off: bool = False,
) -> dict[str, float | int]:
    """How often the implicit reward prefers the human-chosen reply (ties one half), with a 95% Wilson interval."""
    outcomes = pair_outcomes(policy, reference, pairs, settings, pad_token_id, reference_is_adapter_off)
    return {**proportion(sum(outcomes), len(pairs)), "ties": outcomes.count(0.5)}


def pair_outcomes(
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    pairs: list[TokenizedPair],
    settings: JudgeSettings,
    pad_token_id: int,
    reference_is_adapter_off: bool = False,
) -> list[float]:
    """Per pair: 1 when the implicit reward prefers the human-chosen reply, 0 when the rejected one, 0.5 a tie
    (kept per pair so that two models measured on the same pairs can be compared pair by pair)."""
    prompts = [p.prompt_ids for p in pairs] * 2
    replies = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    scores = score_replies(
        policy,
        reference,
        prompts,
        replies,
        pad_token_id,
        settings,
        reference_is_adapter_off,
        description="Judging the human-labelled pairs",
    )
    n = len(pairs)
    return [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(scores[:n], scores[n:])]


def human_agreement(
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    human: HumanLabels,
    settings: JudgeSettings,
    pad_token_id: int,
    reference_is_adapter_off: bool = False,
) -> dict[str, Any]:
    """The self-judge against the human labels: on the seed pairs trained on, and on those held out."""
    figures: dict[str, Any] = {}
    for name, pairs in (("seed", human.trained), ("held_out", human.held_out)):
        if not pairs:
            figures.update({f"{name}_agreement": None, f"{name}_pairs": 0})
            continue
        agreement = label_agreement(policy, reference, pairs, settings, pad_token_id, reference_is_adapter_off)
        figures.update(
            {
                f"{name}_agreement": agreement["rate"],
                f"{name}_agreement_ci": [agreement["ci_low"], agreement["ci_high"]],
                f"{name}_pairs": agreement["n"],
                f"{name}_ties": agreement["ties"],
            }
        )
    return figures


def check_judge_reference(config: Config, tokenizer: PreTrainedTokenizerBase) -> None:
    """Every model the judge names by path (judge.reference, judge.base, judge.policy) must exist (when local)
    and share the policy's tokenizer: the implicit reward compares the same token ids under every model."""
    if config.judge.kind != "implicit":
        return
    named = {"judge.reference": (config.judge.reference, (*NAMED_REFERENCES, "none"))}
    named["judge.policy"] = (config.judge.policy, NAMED_JUDGE_POLICIES)
    if config.judge.base:
        named["judge.base"] = (config.judge.base, ())
    for key, (value, keywords) in named.items():
        if value not in keywords:
            check_judge_model(key, value, config, tokenizer)


def check_judge_model(key: str, value: str, config: Config, tokenizer: PreTrainedTokenizerBase) -> None:
    """``value`` (named by ``key``: a setting or a command-line option) exists when local and has the policy's
    tokenizer; a different chat template is only said."""
    path = resolve_model_path(value)
    if is_local_path(path) and not Path(path).expanduser().is_dir():
        raise SpreadprefError(f"{key}={value}: no such model directory")
    other = load_tokenizer(config.model.model_copy(update={"name_or_path": path, "tokenizer": None}))
    if other.get_vocab() != tokenizer.get_vocab():
        raise SpreadprefError(
            f"{key}={value} has a different tokenizer from the policy ({config.model.name_or_path}): "
            "the implicit reward compares the same token ids under both models. Use the policy's base model, or a "
            "model with the same tokenizer."
        )
    if other.chat_template != tokenizer.chat_template:
        console.print(
            f"[yellow]{key}={value} has a different chat template; the replies are scored with the "
            "policy's template under every model.[/]"
        )
