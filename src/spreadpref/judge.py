"""The judge stage: SPA's direct preference judgment by the implicit DPO reward (or an external judge).

Every sample y of prompt x gets ``s = log pi_{i-1}(y|x) - log pi_ref(y|x)`` (summed over reply
tokens, or per-token means with ``length_normalize``), where pi_ref is the initial SFT model by
default. For each prompt the highest-scoring sample is chosen and the lowest rejected, for any
K >= 2. Prompts whose best and worst replies are identical, or tie exactly, give no pair and are
counted. The pair keeps ``margin = s_chosen - s_rejected`` and ``p = sigmoid(beta * margin)``, and
carries the pi_{i-1} log-probs that the round's DPO training uses as its reference.

With an external judge (``judge.kind`` reward_model, llm or verifier: the paper's iterative-DPO
baselines) the samples still get their pi_{i-1} log-probs, for the training reference, but the score
and ``p`` come from that judge (see ``spreadpref.judges``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spreadpref.config import JudgeSettings
from spreadpref.errors import JudgeError
from spreadpref.io import run_in_parts
from spreadpref.logprobs import score_sequences
from spreadpref.tokenize import TokenizedPair

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


def sample_score(sample: dict[str, Any], settings: JudgeSettings) -> float:
    policy, reference, tokens = sample["policy_logps"], sample["reference_logps"], max(sample["num_tokens"], 1)
    if settings.length_normalize:
        policy, reference = policy / tokens, (reference / tokens if reference is not None else None)
    return policy - (reference if reference is not None else 0.0)


def score_samples(policy: Any, reference: Any | None, samples: list[dict[str, Any]], settings: JudgeSettings,
                  pad_token_id: int, out_file: Path, round_index: int = 0,
                  reference_is_adapter_off: bool = False) -> list[dict[str, Any]]:
    """Add policy and reference log-probs and the score to every sample (resumable in chunks)."""
    chunks = [samples[i : i + CHUNK] for i in range(0, len(samples), CHUNK)]

    def process(_: int, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # The chunk loop shows the progress; the inner passes stay quiet.
        policy_logps, reference_logps, counts = both_logps(
            policy, reference, [s["prompt_ids"] for s in chunk], [s["reply_ids"] for s in chunk], pad_token_id,
            settings.batch_size, reference_is_adapter_off, progress=False)
        judged = []
        for sample, pol, ref, count in zip(chunk, policy_logps.tolist(), reference_logps, counts.tolist()):
            row = {key: sample[key] for key in ("prompt_id", "prompt_index", "sample", "text", "num_tokens",
                                                "finish_reason")}
            row.update(policy_logps=pol, reference_logps=ref, judged_tokens=count)
            row["score"] = sample_score(row, settings)
            if not math.isfinite(row["score"]):
                raise JudgeError(
                    f"non-finite judge score for prompt {row['prompt_id']!r}, sample {row['sample']} "
                    f"(policy log-prob {pol}, reference log-prob {ref}); the model produces NaN or inf. "
                    "Nothing of this chunk was written.")
            judged.append(row)
        return judged

    return run_in_parts(out_file, chunks, process, f"Judging (round {round_index})",
                        order=lambda r: (r["prompt_index"], r["sample"]))


def both_logps(policy: Any, reference: Any | None, prompts: list[list[int]], replies: list[list[int]],
                pad_token_id: int, batch_size: int, reference_is_adapter_off: bool, progress: bool = True,
                description: str = "Judging") -> tuple[torch.Tensor, list[float | None], torch.Tensor]:
    """Reply log-probs under the policy and under the judge reference (None entries without one)."""
    policy_logps, counts = score_sequences(policy, prompts, replies, pad_token_id, batch_size,
                                           description=f"{description}: policy", progress=progress)
    if reference is None and not reference_is_adapter_off:
        return policy_logps, [None] * len(prompts), counts
    model = policy if reference_is_adapter_off else reference
    reference_logps, _ = score_sequences(model, prompts, replies, pad_token_id, batch_size,
                                         description=f"{description}: reference",
                                         as_reference=reference_is_adapter_off, progress=progress)
    return policy_logps, [float(r) for r in reference_logps], counts


def external_scores(judge: Any, samples: list[dict[str, Any]], metadata: dict[str, dict[str, Any]],
                    out_file: Path, round_index: int = 0, prompts_per_unit: int = 8) -> list[dict[str, Any]]:
    """Per sample, the external judge's score and its preference row over the prompt's other samples."""
    from spreadpref.judges import Comparison

    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for sample in samples:
        groups[sample["prompt_index"]].append(sample)
    ordered = [sorted(groups[k], key=lambda s: s["sample"]) for k in sorted(groups)]
    units = [ordered[i : i + prompts_per_unit] for i in range(0, len(ordered), prompts_per_unit)]

    def process(_: int, unit: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        comparisons = [Comparison(prompt=g[0]["prompt"], replies=[s["text"] for s in g], id=g[0]["prompt_id"],
                                  metadata=metadata.get(g[0]["prompt_id"], {})) for g in unit]
        rows = []
        for group, judgement in zip(unit, judge.judge(comparisons)):
            for position, sample in enumerate(group):
                # prefer is indexed by sample number: pair_samples looks the rejected one up by it.
                prefer = [0.5] * (max(s["sample"] for s in group) + 1)
                for other, other_sample in enumerate(group):
                    prefer[other_sample["sample"]] = judgement.prefer[position][other]
                rows.append({"prompt_index": sample["prompt_index"], "sample": sample["sample"],
                             "judge_score": judgement.scores[position], "prefer": prefer})
        return rows

    return run_in_parts(out_file, units, process, f"Judging with {judge.name} (round {round_index})",
                        order=lambda r: (r["prompt_index"], r["sample"]))


def judge_samples(policy: Any, reference: Any | None, samples: list[dict[str, Any]], config: Any, tokenizer: Any,
                  metadata: dict[str, dict[str, Any]], out_dir: Path, round_index: int = 0) -> list[dict[str, Any]]:
    """judged.jsonl rows for ``config.judge.kind``: pi_{i-1} log-probs (the training reference) and the score."""
    from spreadpref import distributed
    from spreadpref.io import write_jsonl
    from spreadpref.judges import make_judge

    pad = tokenizer.pad_token_id
    if config.judge.kind == "implicit":
        return score_samples(policy, reference, samples, config.judge, pad, out_dir / "judged.jsonl", round_index)
    logps = score_samples(policy, None, samples, config.judge, pad, out_dir / "policy_logps.jsonl", round_index)
    judge = make_judge(config.judge, config.model, beta=config.train.beta, policy=policy, tokenizer=tokenizer)
    judged = merge_external(logps, external_scores(judge, samples, metadata, out_dir / "verdicts.jsonl", round_index))
    if distributed.is_main():
        write_jsonl(out_dir / "judged.jsonl", judged)
    return judged


def merge_external(judged: list[dict[str, Any]], verdicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pi_{i-1} log-probs of ``judged`` with the external judge's score and preferences."""
    by_key = {(v["prompt_index"], v["sample"]): v for v in verdicts}
    merged = []
    for row in judged:
        verdict = by_key[(row["prompt_index"], row["sample"])]
        merged.append({**row, "score": verdict["judge_score"], "prefer": verdict["prefer"]})
    return merged


def pair_samples(samples: list[dict[str, Any]], judged: list[dict[str, Any]], beta: float,
                 round_index: int = 0) -> tuple[list[dict[str, Any]], JudgeStats]:
    """Chosen = highest score, rejected = lowest, per prompt; identical replies and ties are dropped."""
    by_prompt: dict[int, list[tuple[dict, dict]]] = defaultdict(list)
    for sample, verdict in zip(samples, judged):
        if (sample["prompt_index"], sample["sample"]) != (verdict["prompt_index"], verdict["sample"]):
            raise ValueError("generations and judgements are not aligned")
        by_prompt[sample["prompt_index"]].append((sample, verdict))
    stats = JudgeStats(prompts=len(by_prompt), samples=len(samples))
    stats.cut_off_samples = sum(s["finish_reason"] == "length" for s in samples)
    stats.mean_reply_tokens = sum(s["num_tokens"] for s in samples) / max(len(samples), 1)
    pairs = []
    for prompt_index in sorted(by_prompt):
        group = by_prompt[prompt_index]
        scores = [verdict["score"] for _, verdict in group]
        best = max(range(len(group)), key=lambda i: (scores[i], -i))  # first of the highest
        worst = min(range(len(group)), key=lambda i: (scores[i], -i))  # last of the lowest
        (chosen, chosen_v), (rejected, rejected_v) = group[best], group[worst]
        # External judges give the preference probability; the implicit one is Bradley-Terry on the margin.
        prefer = chosen_v.get("prefer")
        if chosen["reply_ids"] == rejected["reply_ids"]:
            stats.identical_dropped += 1
            continue
        if scores[best] == scores[worst]:
            stats.ties_dropped += 1
            continue
        margin = scores[best] - scores[worst]
        pairs.append({
            "id": f"round{round_index}-{chosen['prompt_id']}",
            "prompt_id": chosen["prompt_id"],
            "prompt": chosen["prompt"],
            "chosen": chosen["text"],
            "rejected": rejected["text"],
            "prompt_ids": chosen["prompt_ids"],
            "chosen_ids": chosen["reply_ids"],
            "rejected_ids": rejected["reply_ids"],
            "chosen_truncated": chosen["finish_reason"] == "length",
            "rejected_truncated": rejected["finish_reason"] == "length",
            "chosen_score": scores[best],
            "rejected_score": scores[worst],
            "margin": margin,
            "p": prefer[rejected["sample"]] if prefer else 1.0 / (1.0 + math.exp(-beta * margin)),
            "label": 1.0,
            # The judge's pi_{i-1} log-probs are exactly the reference of round i's DPO.
            "ref_chosen_logps": chosen_v["policy_logps"],
            "ref_rejected_logps": rejected_v["policy_logps"],
        })
    stats.pairs = len(pairs)
    if pairs:
        margins = torch.tensor([p["margin"] for p in pairs], dtype=torch.float64)
        stats.margin_quantiles = {
            f"p{int(q * 100)}": float(torch.quantile(margins, q)) for q in (0.1, 0.5, 0.9)
        }
    return pairs, stats


def pairs_to_tokenized(pairs: list[dict[str, Any]]) -> list[TokenizedPair]:
    return [
        TokenizedPair(
            id=p["id"], prompt_ids=p["prompt_ids"], chosen_ids=p["chosen_ids"], rejected_ids=p["rejected_ids"],
            label=p.get("label", 1.0), weight=p.get("weight", 1.0), ref_chosen_logps=p["ref_chosen_logps"],
            ref_rejected_logps=p["ref_rejected_logps"], chosen_truncated=p["chosen_truncated"],
            rejected_truncated=p["rejected_truncated"],
        )
        for p in pairs
    ]


def seed_agreement(policy: Any, reference: Any | None, seed_pairs: list[TokenizedPair], settings: JudgeSettings,
                   pad_token_id: int, reference_is_adapter_off: bool = False) -> dict[str, float]:
    """How often the self-judge prefers the human-chosen reply of the seed pairs."""
    prompts = [p.prompt_ids for p in seed_pairs] * 2
    replies = [p.chosen_ids for p in seed_pairs] + [p.rejected_ids for p in seed_pairs]
    policy_logps, reference_logps, counts = both_logps(policy, reference, prompts, replies, pad_token_id,
                                                        settings.batch_size, reference_is_adapter_off,
                                                        description="Judging the seed pairs")
    scores = torch.tensor([
        sample_score({"policy_logps": float(p), "reference_logps": r, "num_tokens": int(c)}, settings)
        for p, r, c in zip(policy_logps, reference_logps, counts)
    ])
    n = len(seed_pairs)
    agree = (scores[:n] > scores[n:]).double()
    return {"seed_agreement": float(agree.mean()), "seed_pairs": n}
