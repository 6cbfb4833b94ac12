import pytest
import torch
from transformers import AutoModelForCausalLM

from spreadpref.data.records import PreferenceRecord
from spreadpref.data.tokenize import tokenize_pairs
from spreadpref.dpo import logprobs
from spreadpref.dpo.logprobs import (
    collate_pairs,
    length_batches,
    score_pairs,
    sequence_logps,
)


@pytest.fixture
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture
def pairs(tiny_tokenizer):
    records = [
        PreferenceRecord(
            id=str(i),
            prompt=[{"role": "user", "content": "Hi " * (i + 1)}],
            chosen="Hello there, friend." * (1 + i % 2),
            rejected="No.",
        )
        for i in range(5)
    ]
    return tokenize_pairs(tiny_tokenizer, records, 256, 128)[0]


def naive_logps(model, prompt_ids, reply_ids):
    """Full float64 log-softmax over one unpadded sequence: the definition, no shortcuts."""
    ids = torch.tensor([prompt_ids + reply_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    targets = ids[0, 1:]
    per_token = logp[torch.arange(len(targets)), targets]
    return per_token[len(prompt_ids) - 1 :].sum().item()


def test_response_mask_marks_exactly_the_reply(pairs):
    batch = collate_pairs(pairs[:2], pad_token_id=0)
    for row, (pair, reply) in enumerate(
        [
            (pairs[0], pairs[0].chosen_ids),
            (pairs[1], pairs[1].chosen_ids),
            (pairs[0], pairs[0].rejected_ids),
            (pairs[1], pairs[1].rejected_ids),
        ]
    ):
        mask = batch["response_mask"][row]
        assert batch["input_ids"][row][mask].tolist() == reply
        assert mask.sum().item() == len(reply)
        assert batch["attention_mask"][row].sum().item() == len(pair.prompt_ids) + len(reply)


def test_sequence_logps_match_the_definition(model, pairs):
    batch = collate_pairs(pairs, pad_token_id=0)
    with torch.no_grad():
        sums, counts = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    k = len(pairs)
    for i, pair in enumerate(pairs):
        assert sums[i].item() == pytest.approx(naive_logps(model, pair.prompt_ids, pair.chosen_ids), abs=1e-4)
        assert sums[k + i].item() == pytest.approx(naive_logps(model, pair.prompt_ids, pair.rejected_ids), abs=1e-4)
        assert counts[i].item() == len(pair.chosen_ids)


def test_fallback_without_position_mask_gives_the_same(model, pairs, monkeypatch):
    batch = collate_pairs(pairs, pad_token_id=0)
    with torch.no_grad():
        fast, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        monkeypatch.setattr(logprobs, "supports_position_mask", lambda m: False)
        slow, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    assert torch.allclose(fast, slow, atol=1e-5)
    assert logprobs.supports_position_mask.__module__  # patched; the real check:
    monkeypatch.undo()
    assert logprobs.supports_position_mask(model)


def test_chunking_does_not_change_results(model, pairs, monkeypatch):
    batch = collate_pairs(pairs, pad_token_id=0)
    with torch.no_grad():
        whole, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        monkeypatch.setattr(logprobs, "LOGIT_CHUNK", 3)
        chunked, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_gradients_flow(model, pairs):
    model.train()
    batch = collate_pairs(pairs[:2], pad_token_id=0)
    sums, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    sums.sum().backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_score_pairs_keeps_order_across_length_batches(model, pairs):
    scored = score_pairs(model, pairs, pad_token_id=0, batch_size=2)
    for i, pair in enumerate(pairs):
        assert scored.chosen[i].item() == pytest.approx(naive_logps(model, pair.prompt_ids, pair.chosen_ids), abs=1e-4)
        assert scored.rejected_tokens[i].item() == len(pair.rejected_ids)
    assert scored.chosen_mean[0].item() == pytest.approx(scored.chosen[0].item() / len(pairs[0].chosen_ids))


def test_length_batches_group_similar_lengths():
    batches = length_batches([5, 50, 6, 49, 7], batch_size=2)
    assert batches == [[1, 3], [4, 2], [0]]
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]


def counted_forwards(model) -> list[int]:
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def score_all(model, pairs, batch_size=2):
    prompts = [p.prompt_ids for p in pairs] * 2
    replies = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    return logprobs.score_sequences(model, prompts, replies, pad_token_id=0, batch_size=batch_size)


def test_frozen_weights_from_disk_score_the_same_sequences_once(tiny_model_dir, pairs):
    from spreadpref.config import ModelSettings
    from spreadpref.models.loading import load_for_inference

    settings = ModelSettings(name_or_path=str(tiny_model_dir))
    first_model = load_for_inference(settings)
    first = score_all(first_model, pairs)
    again = load_for_inference(settings)  # a new object on the same weights: the next round's judge, say
    forwards = counted_forwards(again)
    remembered = score_all(again, pairs)
    assert forwards == [] and torch.equal(remembered[0], first[0]) and torch.equal(remembered[1], first[1])
    remembered[0].add_(1.0)  # a caller's in-place change does not reach the remembered copy
    assert torch.equal(score_all(again, pairs)[0], first[0])
    score_all(again, pairs, batch_size=3)  # other batches pad otherwise: computed, not remembered
    assert forwards != []
    # Without the memo the same batches give bit-identical numbers: what makes remembering them safe.
    logprobs.clear_score_memo()
    assert torch.equal(score_all(load_for_inference(settings), pairs)[0], first[0])


def test_weights_saved_again_or_not_loaded_from_disk_are_scored_afresh(tiny_model_dir, pairs, tmp_path):
    from spreadpref.config import ModelSettings
    from spreadpref.models.loading import load_for_inference

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()  # as a trainer holds its model
    score_all(plain, pairs)
    forwards = counted_forwards(plain)
    score_all(plain, pairs)
    assert forwards != []  # never remembered: its weights may have changed since
    directory = tmp_path / "model"
    plain.save_pretrained(directory)
    settings = ModelSettings(name_or_path=str(directory))
    before = score_all(load_for_inference(settings), pairs)
    with torch.no_grad():
        plain.lm_head.weight.mul_(2.0)
    plain.save_pretrained(directory)  # the same path, other weights
    changed = load_for_inference(settings)
    forwards = counted_forwards(changed)
    after = score_all(changed, pairs)
    assert forwards != [] and not torch.equal(after[0], before[0])
