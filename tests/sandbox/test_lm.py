"""The gold world's tokenizer and prompts."""

from spreadpref.sandbox import lm
from spreadpref.sandbox.settings import WorldSettings


def test_the_world_tokenizer_round_trips_prompts_and_replies():
    world = WorldSettings()
    tokenizer = lm.make_tokenizer(world)
    text = "t3 w31 w0"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text
    prompt = lm._chat_ids(tokenizer, text)
    assert prompt.count(tokenizer.bos_token_id) == 2  # the user turn and the assistant turn, nothing else


def test_round_prompts_that_repeat_a_seed_prompt_are_drawn_again_and_the_others_kept():
    """Seed 1000's full world drew a round prompt equal to a seed pair's: the loop dropped it and every replay
    variant stopped one prompt short (960 needed, 959 in the pool)."""
    world = WorldSettings()
    seed_rows = [{"prompt": "t1 w4 w5"}, {"prompt": "t2 w9 w8"}]
    rounds = ["t0 w1 w2", "t1 w4 w5", "t3 w7 w7", "t2 w9 w8", "t1 w4 w5"]
    kept, redrawn = lm.distinct_from_seed_prompts(world, rounds, seed_rows, seed=1000)
    assert redrawn == 3 and len(kept) == len(rounds)
    assert [kept[i] for i in (0, 2)] == [rounds[i] for i in (0, 2)]  # no repeat: the same prompt, same place
    assert not {row["prompt"] for row in seed_rows} & set(kept)
    assert lm.distinct_from_seed_prompts(world, rounds, seed_rows, seed=1000)[0] == kept  # seeded
    assert lm.distinct_from_seed_prompts(world, ["t0 w1"], seed_rows, seed=1) == (["t0 w1"], 0)
