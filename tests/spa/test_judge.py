import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from spreadpref.config import JudgeSettings
from spreadpref.data.artifacts import JudgedSample, Sample
from spreadpref.dpo.logprobs import collate_pairs, sequence_logps
from spreadpref.judges.implicit import log_ratio, preference_probability
from spreadpref.spa.judge import (
    HumanLabels,
    human_agreement,
    label_agreement,
    pair_samples,
    score_samples,
)


def sample(prompt_index, k, reply, finish="stop"):
    return Sample(
        prompt_id=f"p{prompt_index}",
        prompt_index=prompt_index,
        sample=k,
        prompt=[{"role": "user", "content": "q"}],
        prompt_ids=[1, 5, 6],
        reply_ids=reply,
        text=str(reply),
        num_tokens=len(reply),
        finish_reason=finish,
    )


def verdict(s, score, policy=-1.0):
    return JudgedSample(
        prompt_id=s.prompt_id,
        prompt_index=s.prompt_index,
        sample=s.sample,
        text=s.text,
        num_tokens=s.num_tokens,
        finish_reason=s.finish_reason,
        policy_logps=policy,
        reference_logps=None,
        judged_tokens=s.num_tokens,
        score=score,
    )


def test_score_formula_and_variants():
    assert log_ratio(-10.0, -14.0, 4, length_normalize=False) == 4.0
    assert log_ratio(-10.0, -14.0, 4, length_normalize=True) == pytest.approx(-2.5 + 3.5)
    assert log_ratio(-10.0, None, 4, length_normalize=False) == -10.0
    # beta enters only in the preference probability.
    assert preference_probability(4.0, beta=0.1) == pytest.approx(1 / (1 + math.exp(-0.4)))


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_any_k_picks_highest_and_lowest(k):
    samples = [sample(0, j, [10 + j, 2]) for j in range(k)]
    scores = [0.3, -1.0, 2.5, 0.0, 1.0][:k]
    judged = [verdict(s, sc, policy=-float(j)) for j, (s, sc) in enumerate(zip(samples, scores))]
    (pair,), stats = pair_samples(samples, judged, beta=0.1)
    best, worst = max(range(k), key=lambda j: scores[j]), min(range(k), key=lambda j: scores[j])
    assert pair.chosen_ids == samples[best].reply_ids and pair.rejected_ids == samples[worst].reply_ids
    assert pair.margin == pytest.approx(scores[best] - scores[worst])
    assert pair.p == pytest.approx(1 / (1 + math.exp(-0.1 * pair.margin)))
    # The judge's pi_{i-1} log-probs travel on as the training reference.
    assert pair.ref_chosen_logps == -float(best) and pair.ref_rejected_logps == -float(worst)
    assert stats.pairs == 1 and stats.samples == k


def test_identical_replies_and_ties_are_dropped_and_counted():
    samples = [
        sample(0, 0, [7, 2]),
        sample(0, 1, [7, 2]),  # identical
        sample(1, 0, [8, 2]),
        sample(1, 1, [9, 2]),  # exact tie
        sample(2, 0, [8, 2]),
        sample(2, 1, [9], "length"),
    ]  # a real pair, one cut off
    judged = [
        verdict(samples[0], 1.0),
        verdict(samples[1], 1.0 + 1e-7),
        verdict(samples[2], 0.5),
        verdict(samples[3], 0.5),
        verdict(samples[4], 0.1),
        verdict(samples[5], 0.9),
    ]
    pairs, stats = pair_samples(samples, judged, beta=0.1)
    assert (stats.identical_dropped, stats.ties_dropped, stats.pairs) == (1, 1, 1)
    assert pairs[0].chosen_ids == [9] and pairs[0].chosen_truncated and not pairs[0].rejected_truncated
    assert stats.cut_off_samples == 1


def test_judge_logps_equal_a_fresh_reference_pass(tiny_model_dir, tiny_tokenizer, tmp_path):
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
    prompt = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi there"}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    samples = []
    for index in range(3):
        for j in range(2):
            s = sample(index, j, [20 + index + j, 30 + 2 * j + index, 2])
            s.prompt_ids = prompt_ids
            samples.append(s)
    judged = score_samples(policy, reference, samples, JudgeSettings(batch_size=2), 0, tmp_path / "judged.jsonl")
    pairs, _ = pair_samples(samples, judged, beta=0.1)
    tokenized = [pair.to_tokenized() for pair in pairs]
    batch = collate_pairs(tokenized, pad_token_id=0)
    with torch.no_grad():
        fresh, _ = sequence_logps(policy, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    k = len(tokenized)
    assert torch.allclose(fresh[:k].double(), batch["ref_chosen_logps"].double(), atol=1e-4)
    assert torch.allclose(fresh[k:].double(), batch["ref_rejected_logps"].double(), atol=1e-4)
    # Scores are policy minus reference.
    for row in judged:
        assert row.score == pytest.approx(row.policy_logps - row.reference_logps)
    # A resumed judge reads its finished output back unchanged.
    again = score_samples(policy, reference, samples, JudgeSettings(batch_size=2), 0, tmp_path / "judged.jsonl")
    assert again == judged


def test_agreement_with_human_labels_counts_ties_as_half_with_an_interval(tiny_model_dir, tiny_tokenizer):
    from spreadpref.data.records import PreferenceRecord
    from spreadpref.data.tokenize import tokenize_pairs

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    records = [
        PreferenceRecord(
            id=str(i), prompt=[{"role": "user", "content": f"Q{i}"}], chosen="Paris.", rejected="The quick brown fox."
        )
        for i in range(4)
    ]
    pairs, _ = tokenize_pairs(tiny_tokenizer, records, 128, 64)
    # With the policy as its own reference every score is 0: every pair ties, and a tie is half an agreement.
    tied = label_agreement(policy, policy, pairs, JudgeSettings(), 0)
    assert (tied["rate"], tied["ties"], tied["n"]) == (0.5, 4, 4)
    assert tied["ci_low"] < 0.5 < tied["ci_high"]
    result = human_agreement(
        policy, None, HumanLabels(trained=pairs, held_out=pairs[:2]), JudgeSettings(reference="none"), 0
    )
    assert result["seed_agreement"] in (0.0, 1.0) and result["seed_pairs"] == 4
    assert result["held_out_pairs"] == 2 and len(result["held_out_agreement_ci"]) == 2
    assert (
        human_agreement(policy, None, HumanLabels(pairs, []), JudgeSettings(reference="none"), 0)["held_out_agreement"]
        is None
    )


def test_the_judge_stage_hands_prompt_metadata_to_an_external_judge(tiny_model_dir, tiny_tokenizer, tmp_path):
    pytest.importorskip("if_verifiable")
    from spreadpref.config import load_config
    from spreadpref.spa.context import StageContext
    from spreadpref.spa.judge import judge_stage

    config = load_config(None, [f"model.name_or_path={tiny_model_dir}", "judge.kind=verifier"])
    rows = [sample(0, 0, [20, 21, 2]), sample(0, 1, [22, 23, 2])]
    rows[0].text, rows[1].text = "This Reply Shouts In Capitals.", "this reply is all lowercase."
    metadata = {"p0": {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}}
    result = judge_stage(StageContext(config, tiny_tokenizer, tmp_path, 1), rows, tiny_model_dir, None, metadata)
    (pair,) = result.pairs
    assert pair.chosen == "this reply is all lowercase." and pair.p == 1.0


def test_a_run_scores_each_frozen_model_on_the_human_pairs_once_with_the_same_figures(
    tiny_model_dir, tmp_path, monkeypatch
):
    """pi_init on the seed pairs in every round's judge and every guard, pi_{i-1} by the guard and then by the
    next judge: remembered, not recomputed, and every figure equal to a run that recomputes them."""
    import json

    from helpers import arithmetic_pairs, loop_overrides, write_jsonl

    from spreadpref.config import load_config
    from spreadpref.dpo import logprobs
    from spreadpref.runtime.layout import SUMMARY_FILE
    from spreadpref.spa.loop import run

    seed = write_jsonl(tmp_path / "seed.jsonl", arithmetic_pairs(17))  # 8 held out
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"Number {i}?"} for i in range(8)])
    passes: list[int] = []
    counted = logprobs._score_sequences
    monkeypatch.setattr(logprobs, "_score_sequences", lambda *a, **k: passes.append(1) or counted(*a, **k))

    def figures(out, entries):
        monkeypatch.setattr(logprobs, "SCORE_MEMO_ENTRIES", entries)
        logprobs.clear_score_memo()
        passes.clear()
        run(load_config(None, loop_overrides(tiny_model_dir, seed, prompts, out) + ["loop.prompts_per_round=[4, 4]"]))
        summary = json.loads((out / SUMMARY_FILE).read_text())
        rounds = [summary["seed"]] + [summary["rounds"][str(i)] for i in (1, 2)]
        keys = ("seed_agreement", "held_out_agreement", "model_held_out_agreement", "model_held_out_outcomes")
        pairs = [(out / f"round-{i}" / "pairs.jsonl").read_text() for i in (1, 2)]
        return [{key: row.get(key) for key in keys} for row in rounds], pairs, len(passes)

    remembered, remembered_pairs, fewer = figures(tmp_path / "remembered", logprobs.SCORE_MEMO_ENTRIES)
    recomputed, recomputed_pairs, more = figures(tmp_path / "recomputed", 0)
    assert remembered == recomputed and remembered_pairs == recomputed_pairs
    assert remembered[1]["seed_agreement"] is not None and remembered[2]["model_held_out_outcomes"]
    assert fewer < more
