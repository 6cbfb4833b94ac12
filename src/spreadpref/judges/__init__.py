"""Pluggable judges: given a prompt and K replies, how likely is each reply preferred to each other.

One small batch interface serves the loop (labelling each round's pairs), ``spreadpref eval`` (win
rates) and agreement checks (held-out labelled pairs):

    judge.judge(comparisons) -> [Judgement(scores=[...K], prefer=[[...K] x K]), ...]

``prefer[a][b]`` is the probability that reply ``a`` is preferred to reply ``b`` (0.5 on the
diagonal and for ties); ``scores`` rank the replies (higher is better). One module per kind:

- :mod:`~spreadpref.judges.implicit`: SPA's own judge, the DPO reward beta * (log pi(y|x) - log pi_ref(y|x)).
- :mod:`~spreadpref.judges.reward_model`: a sequence-classification reward model (Bradley-Terry).
- :mod:`~spreadpref.judges.llm`: LLM-as-judge, both orders; a local chat model or an HTTP endpoint.
- :mod:`~spreadpref.judges.verifier`: the rule-based gold judge of verifiable constraints.
- :mod:`~spreadpref.judges.custom`: your own :class:`Judge`, built by a factory named in the config.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from spreadpref.config import JudgeSettings, ModelSettings
from spreadpref.errors import JudgeError
from spreadpref.judges.base import (
    Comparison,
    Judge,
    Judgement,
    agreement,
    bradley_terry,
    hard_preferences,
)
from spreadpref.judges.custom import custom_judge
from spreadpref.judges.implicit import ImplicitJudge
from spreadpref.judges.llm import (
    HTTPLLMJudge,
    LocalLLMJudge,
    PairwiseJudge,
    judge_messages,
)
from spreadpref.judges.reward_model import RewardModelJudge
from spreadpref.judges.verifier import VerifierJudge
from spreadpref.models.loading import load_for_inference, load_tokenizer, resolve_device


def make_judge(
    settings: JudgeSettings,
    model_settings: ModelSettings,
    *,
    beta: float = 0.1,
    policy: torch.nn.Module = None,
    reference: torch.nn.Module = None,
    tokenizer: PreTrainedTokenizerBase = None,
) -> Judge:
    """The judge ``settings.kind`` names; ``policy``/``reference`` are the loaded models where one is needed."""
    device = resolve_device(model_settings.device)
    if settings.kind == "implicit":
        if policy is None:
            raise JudgeError("the implicit judge needs the policy model")
        return ImplicitJudge(policy, reference, tokenizer, beta, settings)
    if settings.kind == "reward_model":
        return RewardModelJudge(
            settings.reward_model.name_or_path or "",
            device,
            settings.reward_model.batch_size,
            settings.reward_model.max_length,
            model_settings.trust_remote_code,
        )
    if settings.kind == "verifier":
        return VerifierJudge()
    if settings.kind == "custom":
        return custom_judge(settings.custom.factory or "", settings.custom.kwargs)
    llm = settings.llm
    if llm.base_url:
        return HTTPLLMJudge(
            llm.base_url,
            llm.api_model or "",
            llm.api_key_env,
            llm.max_retries,
            llm.timeout,
            llm.concurrency,
            llm.max_reply_chars,
        )
    if llm.model == "policy":
        if policy is None:
            raise JudgeError("judge.llm.model=policy needs the policy model")
        return LocalLLMJudge(policy, tokenizer, llm.batch_size, llm.max_reply_chars)
    judge_settings = model_settings.model_copy(
        update={
            "name_or_path": llm.model,
            "tokenizer": None,
            "lora": model_settings.lora.model_copy(update={"enabled": False}),
        }
    )
    judge_model = load_for_inference(judge_settings)
    return LocalLLMJudge(judge_model, load_tokenizer(judge_settings), llm.batch_size, llm.max_reply_chars)


__all__ = [
    "Comparison",
    "HTTPLLMJudge",
    "ImplicitJudge",
    "Judge",
    "Judgement",
    "LocalLLMJudge",
    "PairwiseJudge",
    "RewardModelJudge",
    "VerifierJudge",
    "agreement",
    "bradley_terry",
    "hard_preferences",
    "judge_messages",
    "make_judge",
]
