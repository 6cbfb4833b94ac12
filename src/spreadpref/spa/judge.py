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
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from spreadpref.config import JudgeSettings
from spreadpref.data.artifacts import GoldVerdict, JudgedSample, Pair, Sample, Verdict
from spreadpref.data.tokenize import TokenizedPair
from spreadpref.dpo.logprobs import forward_precision, training_precision
from spreadpref.errors import JudgeError
from spreadpref.eval.labels import accuracy_by_margin, self_label_accuracy
from spreadpref.eval.stats import proportion
from spreadpref.judges import make_judge
from spreadpref.judges.base import Comparison, Judge
from spreadpref.judges.implicit import (
    both_logps,
    log_ratio,
    preference_probability,
    score_replies,
)
from spreadpref.models.loading import load_for_inference
from spreadpref.runtime import distributed
from spreadpref.runtime.files import atomic_write_json, write_jsonl
from spreadpref.runtime.units import run_in_parts
from spreadpref.spa.context import StageContext

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
    policy_path: str | Path,
    reference_path: str | None,
    metadata: dict[str, dict[str, Any]],
    human: HumanLabels | None = None,
) -> JudgeResult:
    """Judge a round's samples with ``config.judge`` and pair them; writes judged.jsonl and pairs.jsonl.

    ``reference_path`` is the judge reference (None: no reference); ``metadata`` maps prompt ids to
    their extra columns (the verifier's constraints). With ``human`` the self-judge's agreement with
    the human labels is measured too, and with ``judge.gold`` the gold judge labels every pair.
    """
    config = ctx.config
    kind = config.judge.kind
    started = time.perf_counter()
    policy = load_for_inference(config.model, policy_path)
    needs_reference = reference_path is not None and (kind == "implicit" or human is not None)
    reference = load_for_inference(config.model, reference_path) if needs_reference else None
    # pi_{i-1}'s log-probs become the round's DPO reference: computed under the training forward's precision.
    with forward_precision(training_precision(config), next(policy.parameters()).device):
        judged = judge_samples(policy, reference if kind == "implicit" else None, samples, ctx, metadata)
    pairs, stats = pair_samples(samples, judged, config.train.beta, ctx.round_index)
    if distributed.is_main():
        write_jsonl(ctx.path(Pair.FILE), [pair.to_row() for pair in pairs])
    distributed.barrier()
    judge_seconds = time.perf_counter() - started
    metrics: dict[str, Any] = dict(vars(stats), judge_kind=kind)
    if human is not None and distributed.is_main():  # a few dozen pairs: not worth sharding
        agreement = human_agreement(policy, reference, human, config.judge, ctx.tokenizer.pad_token_id)
        atomic_write_json(ctx.path(SEED_AGREEMENT_FILE), agreement)
        metrics.update(agreement)
    del policy, reference
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


def score_samples(
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    samples: list[Sample],
    settings: JudgeSettings,
    pad_token_id: int,
    out_file: Path,
    round_index: int = 0,
    reference_is_adapter_off: bool = False,
) -> list[JudgedSample]:
    """Every sample with its policy and reference log-probs and its score (resumable in chunks)."""
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
        judged = []
        for sample, pol, ref, count in zip(chunk, policy_logps.tolist(), reference_logps, counts.tolist()):
            score = log_ratio(pol, ref, sample.num_tokens, settings.length_normalize)
            if not math.isfinite(score):
                raise JudgeError(
                    f"non-finite judge score for prompt {sample.prompt_id!r}, sample {sample.sample} "
                    f"(policy log-prob {pol}, reference log-prob {ref}); the model produces NaN or inf. "
                    "Nothing of this chunk was written."
                )
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
) -> list[JudgedSample]:
    """judged.jsonl for ``config.judge.kind``: pi_{i-1} log-probs (the training reference) and the score."""
    config, pad = ctx.config, ctx.tokenizer.pad_token_id
    if config.judge.kind == "implicit":
        return score_samples(
            policy, reference, samples, config.judge, pad, ctx.path(JudgedSample.FILE), ctx.round_index
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
    samples: list[Sample], judged: list[JudgedSample], beta: float, round_index: int = 0
) -> tuple[list[Pair], JudgeStats]:
    """Chosen = highest score, rejected = lowest, per prompt; identical replies and ties are dropped."""
    by_prompt: dict[int, list[tuple[Sample, JudgedSample]]] = defaultdict(list)
    for sample, verdict in zip(samples, judged, strict=True):
        if (sample.prompt_index, sample.sample) != (verdict.prompt_index, verdict.sample):
            raise ValueError("generations and judgements are not aligned")
        by_prompt[sample.prompt_index].append((sample, verdict))
    stats = JudgeStats(prompts=len(by_prompt), samples=len(samples))
    stats.cut_off_samples = sum(s.cut_off for s in samples)
    stats.mean_reply_tokens = sum(s.num_tokens for s in samples) / max(len(samples), 1)
    pairs = []
    for prompt_index in sorted(by_prompt):
        group = by_prompt[prompt_index]
        scores = [verdict.score for _, verdict in group]
        best = max(range(len(group)), key=lambda i: (scores[i], -i))  # first of the highest
        worst = min(range(len(group)), key=lambda i: (scores[i], -i))  # last of the lowest
        (chosen, chosen_v), (rejected, rejected_v) = group[best], group[worst]
        if chosen.reply_ids == rejected.reply_ids:
            stats.identical_dropped += 1
            continue
        if scores[best] == scores[worst]:
            stats.ties_dropped += 1
            continue
        margin = scores[best] - scores[worst]
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
                chosen_score=scores[best],
                rejected_score=scores[worst],
                margin=margin,
                p=p,
                label=1.0,
                # The judge's pi_{i-1} log-probs are exactly the reference of round i's DPO.
                ref_chosen_logps=chosen_v.policy_logps,
                ref_rejected_logps=rejected_v.policy_logps,
            )
        )
    stats.pairs = len(pairs)
    if pairs:
        margins = torch.tensor([pair.margin for pair in pairs], dtype=torch.float64)
        stats.margin_quantiles = {f"p{int(q * 100)}": float(torch.quantile(margins, q)) for q in (0.1, 0.5, 0.9)}
    return pairs, stats


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
    wins = sum(c > r for c, r in zip(scores[:n], scores[n:]))
    ties = sum(c == r for c, r in zip(scores[:n], scores[n:]))
    return {**proportion(wins + 0.5 * ties, n), "ties": ties}


def human_agreement(
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    human: HumanLabels,
    settings: JudgeSettings,
    pad_token_id: int,
) -> dict[str, Any]:
    """The self-judge against the human labels: on the seed pairs trained on, and on those held out."""
    figures: dict[str, Any] = {}
    for name, pairs in (("seed", human.trained), ("held_out", human.held_out)):
        if not pairs:
            figures.update({f"{name}_agreement": None, f"{name}_pairs": 0})
            continue
        agreement = label_agreement(policy, reference, pairs, settings, pad_token_id)
        figures.update(
            {
                f"{name}_agreement": agreement["rate"],
                f"{name}_agreement_ci": [agreement["ci_low"], agreement["ci_high"]],
                f"{name}_pairs": agreement["n"],
                f"{name}_ties": agreement["ties"],
            }
        )
    return figures
