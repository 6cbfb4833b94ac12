import pytest

from spreadpref.data.records import PreferenceRecord
from spreadpref.data.tokenize import (
    render_prompt_ids,
    reply_ids,
    tokenize_pair,
    tokenize_pairs,
    truncate_pair,
)
from spreadpref.errors import TokenizationError
from spreadpref.testing import make_tiny_tokenizer

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def record(**changes):
    fields = dict(id="r1", prompt=PROMPT, chosen="The capital of France is Paris.", rejected="Maybe Rome.")
    fields.update(changes)
    return PreferenceRecord(**fields)


def test_prompt_is_prefix_and_reply_ends_with_exactly_one_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    pair = tokenize_pair(tok, record(), max_length=512, max_prompt_length=256)
    assert tok.decode(pair.prompt_ids).endswith("<|im_start|>assistant\n")
    assert pair.chosen_ids[-1] == tok.eos_token_id
    assert pair.chosen_ids.count(tok.eos_token_id) == 1
    assert tok.decode(pair.chosen_ids[:-1]) == "The capital of France is Paris."
    # The template writes "\n" after <|im_end|>; it is not part of what the model must produce.
    full = tok.apply_chat_template(
        PROMPT + [{"role": "assistant", "content": "The capital of France is Paris."}], tokenize=False
    )
    ids = tok(full, add_special_tokens=False)["input_ids"]
    assert ids[: len(pair.prompt_ids) + len(pair.chosen_ids)] == pair.prompt_ids + pair.chosen_ids


def test_no_double_bos(tiny_tokenizer):
    ids = render_prompt_ids(tiny_tokenizer, PROMPT)
    assert ids[0] == tiny_tokenizer.bos_token_id and ids[1] != tiny_tokenizer.bos_token_id
    doubled = make_tiny_tokenizer(chat_template="{{ bos_token }}" + tiny_tokenizer.chat_template)
    with pytest.raises(TokenizationError, match="BOS twice"):
        render_prompt_ids(doubled, PROMPT)


def test_cut_off_reply_gets_no_eos(tiny_tokenizer):
    pair = tokenize_pair(tiny_tokenizer, record(chosen_truncated=True), 512, 256)
    assert tiny_tokenizer.eos_token_id not in pair.chosen_ids
    assert tiny_tokenizer.decode(pair.chosen_ids) == "The capital of France is Paris."
    assert pair.rejected_ids[-1] == tiny_tokenizer.eos_token_id


def test_template_without_eos_gets_one_appended():
    tok = make_tiny_tokenizer(
        chat_template="{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    prompt_ids = render_prompt_ids(tok, PROMPT)
    ids = reply_ids(tok, PROMPT, prompt_ids, "Paris.", complete=True)
    assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1


def test_template_that_breaks_the_prefix_is_refused():
    # Renders the conversation differently when a reply follows: a classic template bug.
    tok = make_tiny_tokenizer(
        chat_template="{% set sep = ': ' if add_generation_prompt else '\\n' %}"
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + sep + m['content'] + '<|im_end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    with pytest.raises(TokenizationError, match="not a prefix"):
        tokenize_pair(tok, record(), 512, 256)


def test_missing_chat_template_is_explained():
    tok = make_tiny_tokenizer(chat_template=None)
    with pytest.raises(TokenizationError, match="no chat template"):
        tokenize_pairs(tok, [record()], 512, 256)


def test_truncation_keeps_prompt_end_then_cuts_reply():
    prompt = [1, 10, 11, 12, 13, 14, 15]
    chosen, rejected = [20, 21, 22, 2], [30, 2]
    p, c, r, p_cut, c_cut, r_cut = truncate_pair(
        prompt, chosen, rejected, max_length=7, max_prompt_length=4, bos_token_id=1
    )
    assert p == [1, 13, 14, 15]  # BOS kept, then the end of the prompt
    assert c == [20, 21, 22] and c_cut  # cut before its EOS: a truncated reply has no EOS
    assert r == [30, 2] and not r_cut
    assert p_cut


def test_truncation_is_counted_and_drops_stale_reference(tiny_tokenizer):
    long = record(id="long", chosen="Paris " * 200, ref_chosen_logps=-3.0, ref_rejected_logps=-4.0)
    short = record(id="short", ref_chosen_logps=-3.0, ref_rejected_logps=-4.0)
    pairs, report = tokenize_pairs(tiny_tokenizer, [long, short], max_length=64, max_prompt_length=32)
    assert report.replies_truncated == 1 and report.examples == ["long"]
    assert all(len(p.prompt_ids) + len(p.chosen_ids) <= 64 for p in pairs)
    assert pairs[0].chosen_truncated and pairs[0].ref_chosen_logps is None
    assert pairs[1].ref_chosen_logps == -3.0
