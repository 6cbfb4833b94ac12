"""Pluggable judges: given a prompt and K replies, how likely is each reply preferred to each other.

One small batch interface serves the loop (labelling each round's pairs), ``spreadpref eval`` (win
rates) and agreement checks (held-out labelled pairs):

    judge.judge(comparisons) -> [Judgement(scores=[...K], prefer=[[...K] x K]), ...]

``prefer[a][b]`` is the probability that reply ``a`` is preferred to reply ``b`` (0.5 on the
diagonal and for ties); ``scores`` rank the replies (higher is better). Kinds:

- ``implicit``: SPA's own judge, the DPO reward beta * (log pi(y|x) - log pi_ref(y|x)).
- ``reward_model``: a Hugging Face sequence-classification reward model (Bradley-Terry probabilities).
- ``llm``: an LLM asked which of two replies is better, in both orders to cancel position bias; a
  local chat model (the policy itself: the paper's LLM-as-judge baseline) or an OpenAI-compatible
  HTTP endpoint.
- ``verifier``: the rule-based gold judge of verifiable constraints (see ``spreadpref.verifier``).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import torch

from spreadpref.config import JudgeSettings, ModelSettings
from spreadpref.data import Message
from spreadpref.errors import JudgeError

LLM_JUDGE_SYSTEM = "You are a careful, impartial judge of answers written by AI assistants."
LLM_JUDGE_TEMPLATE = """Which response follows the user's instruction better? Judge helpfulness, correctness \
and whether every requirement of the instruction is met; ignore length unless it matters.

[Instruction]
{instruction}

[Response A]
{reply_a}

[Response B]
{reply_b}

Answer with a single letter: A or B."""


@dataclass
class Comparison:
    """One prompt and the K replies to compare; token ids are optional (the implicit judge uses them)."""

    prompt: list[Message]
    replies: list[str]
    id: str = ""
    prompt_ids: list[int] | None = None
    reply_ids: list[list[int]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Judgement:
    scores: list[float]
    prefer: list[list[float]]

    def p(self, a: int = 0, b: int = 1) -> float:
        """Probability that reply ``a`` is preferred to reply ``b``."""
        return self.prefer[a][b]


def bradley_terry(scores: Sequence[float], scale: float = 1.0) -> list[list[float]]:
    """prefer[a][b] = sigmoid(scale * (s_a - s_b))."""
    return [[_sigmoid(scale * (sa - sb)) for sb in scores] for sa in scores]


def hard_preferences(scores: Sequence[float]) -> list[list[float]]:
    """prefer[a][b] = 1 if s_a > s_b, 0 if lower, 0.5 if equal: for exact (rule-based) scores."""
    return [[0.5 if sa == sb else float(sa > sb) for sb in scores] for sa in scores]


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class Judge(ABC):
    name: str = "judge"

    @abstractmethod
    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgement]:
        """One judgement per comparison, in order."""


# ---------------------------------------------------------------------------------------------
# implicit: SPA's own reward


class ImplicitJudge(Judge):
    """r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)), summed (or averaged) over reply tokens."""

    name = "implicit"

    def __init__(self, policy: Any, reference: Any | None, tokenizer: Any, beta: float,
                 settings: JudgeSettings | None = None, reference_is_adapter_off: bool = False):
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.beta = beta
        self.settings = settings or JudgeSettings()
        self.reference_is_adapter_off = reference_is_adapter_off

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgement]:
        from spreadpref.judge import both_logps, sample_score

        prompts, replies, sizes = [], [], []
        for comparison in comparisons:
            prompt_ids, reply_ids = self._token_ids(comparison)
            prompts += [prompt_ids] * len(reply_ids)
            replies += reply_ids
            sizes.append(len(reply_ids))
        policy, reference, counts = both_logps(
            self.policy, self.reference, prompts, replies, self.tokenizer.pad_token_id, self.settings.batch_size,
            self.reference_is_adapter_off, progress=False)
        flat = [sample_score({"policy_logps": float(p), "reference_logps": r, "num_tokens": int(c)}, self.settings)
                for p, r, c in zip(policy, reference, counts)]
        judgements, start = [], 0
        for size in sizes:
            scores = [self.beta * s for s in flat[start : start + size]]
            judgements.append(Judgement(scores=scores, prefer=bradley_terry(scores)))
            start += size
        return judgements

    def _token_ids(self, comparison: Comparison) -> tuple[list[int], list[list[int]]]:
        from spreadpref.tokenize import render_prompt_ids, reply_ids

        if comparison.prompt_ids is not None and comparison.reply_ids is not None:
            return comparison.prompt_ids, comparison.reply_ids
        prompt_ids = render_prompt_ids(self.tokenizer, comparison.prompt)
        return prompt_ids, [reply_ids(self.tokenizer, comparison.prompt, prompt_ids, text, complete=True,
                                      record_id=comparison.id) for text in comparison.replies]


# ---------------------------------------------------------------------------------------------
# reward_model: a sequence-classification model


class RewardModelJudge(Judge):
    """Scores each (prompt, reply) with a reward model's first logit; Bradley-Terry preferences."""

    name = "reward_model"

    def __init__(self, name_or_path: str, device: torch.device, batch_size: int = 8, max_length: int = 1024,
                 trust_remote_code: bool = False, revision: str | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from spreadpref.models import resolve_model_path

        path = resolve_model_path(name_or_path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                           revision=revision)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, trust_remote_code=trust_remote_code, revision=revision, use_safetensors=None)
        except (OSError, ValueError) as err:
            raise JudgeError(f"could not load the reward model {name_or_path!r}: {err}. Set "
                             "judge.reward_model.name_or_path to a sequence-classification model directory "
                             "or hub id.") from None
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
            batch = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                   truncation=True, max_length=self.max_length, add_special_tokens=False)
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


# ---------------------------------------------------------------------------------------------
# llm: LLM-as-judge, both orders


def judge_messages(prompt: list[Message], reply_a: str, reply_b: str, max_chars: int = 4000) -> list[Message]:
    instruction = "\n\n".join(m["content"] for m in prompt if m["role"] != "system")
    text = LLM_JUDGE_TEMPLATE.format(instruction=instruction, reply_a=reply_a[:max_chars],
                                     reply_b=reply_b[:max_chars])
    return [{"role": "system", "content": LLM_JUDGE_SYSTEM}, {"role": "user", "content": text}]


class PairwiseJudge(Judge):
    """Asks P(A better than B) for every ordered pair of replies; both orders cancel position bias.

    prefer[a][b] = (P(A) with a shown first + P(B) with a shown second) / 2; a reply's score is its mean
    preference over the others (Copeland-style), so K > 2 replies are ranked too.
    """

    max_chars: int = 4000

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgement]:
        questions, index = [], []
        for c_index, comparison in enumerate(comparisons):
            for a, b in combinations(range(len(comparison.replies)), 2):
                for first, second in ((a, b), (b, a)):
                    questions.append(judge_messages(comparison.prompt, comparison.replies[first],
                                                    comparison.replies[second], self.max_chars))
                    index.append((c_index, first, second))
        answers = self.prob_first(questions)
        votes: dict[tuple[int, int, int], list[float]] = {}
        for (c_index, first, second), p in zip(index, answers):
            votes.setdefault((c_index, first, second), []).append(p)
            votes.setdefault((c_index, second, first), []).append(1.0 - p)
        judgements = []
        for c_index, comparison in enumerate(comparisons):
            k = len(comparison.replies)
            prefer = [[0.5 if a == b else sum(votes[c_index, a, b]) / len(votes[c_index, a, b]) for b in range(k)]
                      for a in range(k)]
            scores = [sum(prefer[a][b] for b in range(k) if b != a) / max(k - 1, 1) for a in range(k)]
            judgements.append(Judgement(scores=scores, prefer=prefer))
        return judgements

    @abstractmethod
    def prob_first(self, questions: list[list[Message]]) -> list[float]:
        """P(the answer is "A") for each judge conversation."""


class LocalLLMJudge(PairwiseJudge):
    """A local chat model read at its first answer token: P(A) = softmax over the tokens "A" and "B"."""

    name = "llm"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 4, max_chars: int = 4000):
        self.model, self.tokenizer, self.batch_size, self.max_chars = model, tokenizer, batch_size, max_chars
        self.letter_ids = [self._single_token(letter) for letter in ("A", "B")]

    def _single_token(self, letter: str) -> int:
        ids = self.tokenizer(letter, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise JudgeError(f"the judge tokenizer splits {letter!r} into {len(ids)} tokens; an LLM judge "
                             "needs single-token answers")
        return ids[0]

    @torch.no_grad()
    def prob_first(self, questions: list[list[Message]]) -> list[float]:
        from spreadpref.tokenize import render_prompt_ids

        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        encoded = [render_prompt_ids(self.tokenizer, q) for q in questions]
        probs: list[float] = []
        for start in range(0, len(encoded), self.batch_size):
            rows = encoded[start : start + self.batch_size]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):  # left padding: the answer position is the last one of every row
                ids[r, width - len(row):] = torch.tensor(row)
                mask[r, width - len(row):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                position_ids=positions.to(device), logits_to_keep=1).logits[:, -1, :]
            pair = logits[:, self.letter_ids].float().log_softmax(-1)
            probs += pair[:, 0].exp().tolist()
        return probs


class HTTPLLMJudge(PairwiseJudge):
    """An OpenAI-compatible chat-completions endpoint (vLLM, TGI, llama.cpp server, OpenAI, ...).

    P(A) comes from the first token's top log-probs when the server returns them, else from the
    answer's first letter (1 or 0). The API key is read from the environment and never logged.
    """

    name = "llm"

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", max_retries: int = 4,
                 timeout: float = 60.0, concurrency: int = 4, max_chars: int = 4000,
                 sleep: Callable[[float], None] = time.sleep):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.max_retries, self.timeout, self.concurrency, self.max_chars = max_retries, timeout, concurrency, max_chars
        self.sleep = sleep
        self.unparsed = 0

    def prob_first(self, questions: list[list[Message]]) -> list[float]:
        before = self.unparsed
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            answers = list(pool.map(self._ask, questions))
        if self.unparsed > before:
            from spreadpref.progress import console

            console.print(f"[yellow]{self.unparsed - before} of {len(questions)} judge answers were neither A nor B "
                          "and count as ties.[/]")
        return answers

    def _ask(self, messages: list[Message]) -> float:
        body = {"model": self.model, "messages": messages, "max_tokens": 1, "temperature": 0.0,
                "logprobs": True, "top_logprobs": 5}
        return self._answer_probability(self._post(body))

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        last_error = ""
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                if err.code in (401, 403):
                    raise JudgeError(f"the judge endpoint {self.url} refused the request (HTTP {err.code}); "
                                     f"check the API key in the environment variable {self.api_key_env}") from None
                if err.code != 429 and err.code < 500:
                    detail = err.read()[:300].decode(errors="replace")
                    raise JudgeError(f"the judge endpoint {self.url} answered HTTP {err.code}: {detail}") from None
                last_error = f"HTTP {err.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last_error = str(getattr(err, "reason", err))
            except json.JSONDecodeError:
                last_error = "a reply that is not JSON"
            if attempt < self.max_retries:
                self.sleep(min(2.0**attempt, 30.0) * (1 + random.random() * 0.1))
        raise JudgeError(f"could not get an answer from the judge endpoint {self.url} after "
                         f"{self.max_retries + 1} tries ({last_error}). Check judge.llm.base_url and that the "
                         "server is running.")

    def _answer_probability(self, response: dict[str, Any]) -> float:
        try:
            choice = response["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"the judge endpoint {self.url} returned no choices: {str(response)[:200]}") from None
        letters = _letter_logprobs(choice)
        if letters:
            a, b = letters.get("A", -math.inf), letters.get("B", -math.inf)
            return _sigmoid(a - b) if math.isfinite(a - b) else float(a > b)
        text = (choice.get("message") or {}).get("content") or ""
        letter = re.match(r"\W*(?:Response\s+)?([AB])\b", text, flags=re.IGNORECASE)  # "A", "B.", "Response A"
        if letter:
            return 1.0 if letter.group(1).upper() == "A" else 0.0
        self.unparsed += 1
        return 0.5


def _letter_logprobs(choice: dict[str, Any]) -> dict[str, float]:
    content = ((choice.get("logprobs") or {}).get("content")) or []
    if not content:
        return {}
    found: dict[str, float] = {}
    for entry in content[0].get("top_logprobs") or [content[0]]:
        letter = str(entry.get("token", "")).strip().upper()
        if letter in ("A", "B") and letter not in found:
            found[letter] = float(entry["logprob"])
    return found


# ---------------------------------------------------------------------------------------------
# verifier: the rule-based gold judge


class VerifierJudge(Judge):
    """Score = fraction of the prompt's verifiable constraints a reply satisfies; exact preferences."""

    name = "verifier"

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgement]:
        from spreadpref import verifier

        judgements = []
        for comparison in comparisons:
            if "instruction_id_list" not in comparison.metadata:
                raise JudgeError(f"prompt {comparison.id!r} has no verifiable constraints: the verifier judge "
                                 "needs instruction_id_list and kwargs columns on every prompt (IFEval format)")
            constraints = verifier.constraints_from_row(comparison.metadata)
            prompt_text = "\n".join(m["content"] for m in comparison.prompt if m["role"] == "user")
            scores = [verifier.verifier_score(reply, constraints, prompt_text) for reply in comparison.replies]
            judgements.append(Judgement(scores=scores, prefer=hard_preferences(scores)))
        return judgements


# ---------------------------------------------------------------------------------------------
# Building a judge from the config


def make_judge(settings: JudgeSettings, model_settings: ModelSettings, *, beta: float = 0.1,
               policy: Any = None, reference: Any = None, tokenizer: Any = None) -> Judge:
    """The judge ``settings.kind`` names; ``policy``/``reference`` are the loaded models where one is needed."""
    from spreadpref.models import load_model, load_tokenizer, resolve_device

    device = resolve_device(model_settings.device)
    if settings.kind == "implicit":
        if policy is None:
            raise JudgeError("the implicit judge needs the policy model")
        return ImplicitJudge(policy, reference, tokenizer, beta, settings)
    if settings.kind == "reward_model":
        return RewardModelJudge(settings.reward_model.name_or_path or "", device, settings.reward_model.batch_size,
                                settings.reward_model.max_length, model_settings.trust_remote_code)
    if settings.kind == "verifier":
        return VerifierJudge()
    llm = settings.llm
    if llm.base_url:
        return HTTPLLMJudge(llm.base_url, llm.api_model or "", llm.api_key_env, llm.max_retries, llm.timeout,
                            llm.concurrency, llm.max_reply_chars)
    if llm.model == "policy":
        if policy is None:
            raise JudgeError("judge.llm.model=policy needs the policy model")
        return LocalLLMJudge(policy, tokenizer, llm.batch_size, llm.max_reply_chars)
    judge_settings = model_settings.model_copy(update={"name_or_path": llm.model, "tokenizer": None,
                                                       "lora": model_settings.lora.model_copy(update={"enabled": False})})
    judge_model = load_model(judge_settings).to(device).eval()
    return LocalLLMJudge(judge_model, load_tokenizer(judge_settings), llm.batch_size, llm.max_reply_chars)


def agreement(judge: Judge, comparisons: Sequence[Comparison], batch: int = 64) -> dict[str, float]:
    """Share of labelled pairs (reply 0 = the human-chosen one) where the judge prefers the chosen reply.

    Ties count one half, so a judge that cannot tell the replies apart scores 0.5, not 0 or 1.
    """
    if not comparisons:
        return {"agreement": float("nan"), "pairs": 0}
    hits = 0.0
    for start in range(0, len(comparisons), batch):
        for judgement in judge.judge(comparisons[start : start + batch]):
            p = judgement.p(0, 1)
            hits += 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0
    return {"agreement": hits / len(comparisons), "pairs": len(comparisons)}
