"""The gold world's shape and budget: the vocabulary, the sizes, the full and the reduced world."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
ROLES = ["system", "user", "assistant"]


@dataclass(frozen=True)
class WorldSettings:
    """The world's shape and the training budget of every variant (chosen on development seeds)."""

    topics: int = 4
    words_per_topic: int = 8
    prompt_words: int = 3
    reply_words: tuple[int, int] = (3, 8)
    sft_good_rate: float = 0.4  # pi_init's chance of a topic word (pi_base: 1 / topics)
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    pretrain_steps: int = 300
    sft_steps: int = 600  # at least; then on in chunks until pi_init has learnt the topic (sft_target)
    sft_target: float = 0.33  # pi_init's gold reward on the world's own check prompts (uniform words: 0.25)
    sft_max_steps: int = 3000
    lm_batch: int = 64
    lm_learning_rate: float = 3e-3
    seed_pairs: int = 30  # labelled by the gold reward: ~3% of all pairs the variants see
    # Keep the seed pairs' chosen reply shorter as often as longer (|difference| <= 1), so that the seed carries
    # no accidental length preference for SPA to spread. Tried on the development seeds: it does not make SPA
    # beat the seed-only model (docs/results.md §1).
    seed_length_balanced: bool = False
    prompts_per_round: tuple[int, ...] = (320, 320, 320)
    eval_prompts: int = 256
    eval_samples: int = 4  # sampled replies per held-out prompt
    spa: tuple[str, ...] = ()  # overrides every variant's pipeline run shares (on top of DEFAULT_SPA)

    @property
    def vocabulary(self) -> list[str]:
        topic_tokens = [f"t{t}" for t in range(self.topics)]
        words = [f"w{w}" for w in range(self.topics * self.words_per_topic)]
        return SPECIALS + ROLES + topic_tokens + words

    def topic_words(self, topic: int) -> list[str]:
        return [f"w{topic * self.words_per_topic + j}" for j in range(self.words_per_topic)]


# The regression test's world (tests/sandbox/test_world.py): fewer prompts, the same shape and budget.
REDUCED_WORLD = WorldSettings(seed_pairs=16, prompts_per_round=(160, 160, 160), eval_prompts=128, eval_samples=4)

GUARD_PAIRS = (6, 30, 100)  # held-out human pairs the guard is measured with (docs/results.md §1)


def world_settings_dict(world: WorldSettings) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(world)))
