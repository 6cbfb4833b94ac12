"""models/decode.py: the built-in decode loop against closed forms and against transformers' ``generate``."""

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import TopPLogitsWarper

from spreadpref.models.decode import decode, nucleus, sample_next
from spreadpref.models.sampling import left_padded


def frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(tokens, minlength=vocab).float() / tokens.numel()


def test_draws_follow_the_tempered_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).repeat(40_000, 1)
    tokens = sample_next(logits, 0.7, 1.0, torch.Generator().manual_seed(0))
    expected = torch.softmax(logits[0] / 0.7, dim=-1)
    # 40,000 draws: a standard error of at most 0.0025 per token; the 1e-19-probability token never comes.
    assert torch.allclose(frequencies(tokens, 5), expected, atol=0.01)
    assert not (tokens == 4).any()


def test_top_p_by_hand():
    # softmax([3, 2, 1, 0]) = 0.644, 0.237, 0.087, 0.032: top-p 0.8 keeps the first two (0.881 >= 0.8).
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]]).repeat(40_000, 1)
    tokens = sample_next(logits, 1.0, 0.8, torch.Generator().manual_seed(1))
    kept = torch.softmax(torch.tensor([3.0, 2.0]), dim=-1)
    assert torch.allclose(frequencies(tokens, 4), torch.tensor([kept[0], kept[1], 0.0, 0.0]), atol=0.01)


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.95])
def test_the_nucleus_is_transformers_top_p(top_p):
    scores = torch.randn(8, 300, generator=torch.Generator().manual_seed(2)) * 3
    ours, theirs = nucleus(scores, top_p), TopPLogitsWarper(top_p)(None, scores.clone())
    assert torch.equal(ours.isinf(), theirs.isinf()) and torch.equal(ours[~ours.isinf()], theirs[~theirs.isinf()])


def test_greedy_is_argmax_and_a_seed_gives_the_same_draws():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample_next(logits, 0.0, 1.0, None), logits.argmax(dim=-1))
    first = sample_next(logits, 0.7, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(first, sample_next(logits, 0.7, 1.0, torch.Generator().manual_seed(4)))


def test_greedy_decoding_matches_generate_as_rows_stop_and_leave(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rows = [[5, 9, 11], [7, 3, 8, 20, 4, 6], [30, 31], [12, 13, 14, 15], [40, 41, 42, 43, 44]]
    input_ids, attention = left_padded(rows, pad_token_id=0)
    with torch.no_grad():
        free = model.generate(input_ids, attention_mask=attention, do_sample=False, max_new_tokens=16, eos_token_id=[])
    # A stop token some rows draw early and others never: rows then leave the batch at different steps.
    new = free[:, input_ids.shape[1] :]
    stop = int(new[0, 3])
    with torch.no_grad():
        expected = model.generate(
            input_ids, attention_mask=attention, do_sample=False, max_new_tokens=16, eos_token_id=stop, pad_token_id=0
        )[:, input_ids.shape[1] :].tolist()
    replies = decode(model, input_ids, attention, 16, [stop], temperature=0.0)
    assert len({len(r) for r in replies}) > 1  # rows did stop at different steps
    for reply, reference in zip(replies, expected):
        assert reply == reference[: len(reply)]
        assert (reply[-1] == stop) or len(reply) == 16
        assert all(token == 0 for token in reference[len(reply) :])  # generate pads the rows that stopped


def test_sampled_rows_are_the_same_for_a_seed_and_stop_at_their_stop_token(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    input_ids, attention = left_padded([[5, 9, 11], [7, 3, 8, 20]] * 4, pad_token_id=0)

    def draw(seed):
        return decode(model, input_ids, attention, 20, [2, 17], 1.0, 1.0, torch.Generator().manual_seed(seed))

    first = draw(5)
    assert first == draw(5) and first != draw(6)
    assert all(len(r) == 20 or r[-1] in (2, 17) for r in first)
    assert all(token not in (2, 17) for r in first for token in r[:-1])


def test_without_stop_tokens_every_row_runs_to_the_budget(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    input_ids, attention = left_padded([[5, 9, 11], [7, 3]], pad_token_id=0)
    replies = decode(model, input_ids, attention, 7, [], temperature=0.0)
    assert [len(r) for r in replies] == [7, 7]


def test_a_prompt_read_once_for_k_replies_draws_what_k_copies_of_it_draw(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [[5, 9, 11], [7, 3, 8, 20], [30, 31]]

    def draw(rows, repeats):
        input_ids, attention = left_padded(rows, pad_token_id=0)
        generator = torch.Generator().manual_seed(7)
        return decode(model, input_ids, attention, 12, [2, 17], 1.0, 1.0, generator, repeats=repeats)

    once = draw(prompts, 3)
    assert len(once) == 9 and len({tuple(r) for r in once}) > 3  # each prompt's replies differ
    assert once == draw([p for p in prompts for _ in range(3)], 1)
