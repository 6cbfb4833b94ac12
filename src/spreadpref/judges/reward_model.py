"""A Hugging Face sequence-classification reward model as judge (Bradley-Terry preferences)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from spreadpref.data.records import Message
from spreadpref.errors import JudgeError
from spreadpref.judges.base import Comparison, Judge, Judgement, bradley_terry
from spreadpref.models.loading import resolve_model_path


class RewardModelJudge(Judge):
    """Scores each (prompt, reply) with a reward model's first logit; Bradley-Terry preferences."""

    name = "reward_model"

    def __init__(
        self,
        name_or_path: str,
        device: torch.device,
        batch_size: int = 8,
        max_length: int = 1024,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ):
        path = resolve_model_path(name_or_path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, trust_remote_code=trust_remote_code, revision=revision, use_safetensors=None
            )
        except (OSError, ValueError) as err:
            raise JudgeError(
                f"could not load the reward model {name_or_path!r}: {err}. Set "
                "judge.reward_model.name_or_path to a sequence-classification model directory "
                "or hub id."
            ) from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length

    def render(self, prompt: list[Message], reply: str) -> str:
        conversation = [*prompt, {"role": "assistant", "content": reply}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(conversation, tokenize=False)
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in conversation)

    @torch.no_grad()
    def reward(self, texts: list[str]) -> list[float]:
        rewards: list[float] = []
        self.tokenizer.truncation_side = "left"  # keep the reply, cut the start of long prompts
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
            )
            logits = self.model(**batch.to(self.device)).logits
            rewards += logits[:, 0].float().tolist()
        return rewards

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgement]:
        texts = [self.render(c.prompt, reply) for c in comparisons for reply in c.replies]
        flat = self.reward(texts)
        judgements, start = [], 0
        for comparison in comparisons:
            scores = flat[start : start + len(comparison.replies)]
            start += len(comparison.replies)
            judgements.append(Judgement(scores=scores, prefer=bradley_terry(scores)))
        return judgements
