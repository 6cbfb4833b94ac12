"""LLM-as-judge: an LLM asked which of two replies is better, in both orders to cancel position bias.

A local chat model (the policy itself: the paper's LLM-as-judge baseline) or an OpenAI-compatible
HTTP endpoint, whose API key is read from the environment and never logged.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import random
import re
import socket
import threading
import time
import urllib.parse
from abc import abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from spreadpref.config import url_port_problem
from spreadpref.data.records import Message
from spreadpref.data.tokenize import render_prompt_ids
from spreadpref.errors import JudgeError
from spreadpref.judges.base import Comparison, Judge, Judgement, sigmoid
from spreadpref.runtime.progress import console
from spreadpref.runtime.secrets import redact, register_secret

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


def judge_messages(prompt: list[Message], reply_a: str, reply_b: str, max_chars: int = 4000) -> list[Message]:
    instruction = "\n\n".join(m["content"] for m in prompt if m["role"] != "system")
    text = LLM_JUDGE_TEMPLATE.format(instruction=instruction, reply_a=reply_a[:max_chars], reply_b=reply_b[:max_chars])
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
                    questions.append(
                        judge_messages(
                            comparison.prompt, comparison.replies[first], comparison.replies[second], self.max_chars
                        )
                    )
                    index.append((c_index, first, second))
        answers = self.prob_first(questions)
        votes: dict[tuple[int, int, int], list[float]] = {}
        for (c_index, first, second), p in zip(index, answers):
            votes.setdefault((c_index, first, second), []).append(p)
            votes.setdefault((c_index, second, first), []).append(1.0 - p)
        judgements = []
        for c_index, comparison in enumerate(comparisons):
            k = len(comparison.replies)
            prefer = [
                [0.5 if a == b else sum(votes[c_index, a, b]) / len(votes[c_index, a, b]) for b in range(k)]
                for a in range(k)
            ]
            scores = [sum(prefer[a][b] for b in range(k) if b != a) / max(k - 1, 1) for a in range(k)]
            judgements.append(Judgement(scores=scores, prefer=prefer))
        return judgements

    @abstractmethod
    def prob_first(self, questions: list[list[Message]]) -> list[float]:
        """P(the answer is "A") for each judge conversation."""


class LocalLLMJudge(PairwiseJudge):
    """A local chat model read at its first answer token: P(A) = softmax over the tokens "A" and "B"."""

    name = "llm"

    def __init__(
        self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, batch_size: int = 4, max_chars: int = 4000
    ):
        self.model, self.tokenizer, self.batch_size, self.max_chars = model, tokenizer, batch_size, max_chars
        self.letter_ids = [self._single_token(letter) for letter in ("A", "B")]

    def _single_token(self, letter: str) -> int:
        ids = self.tokenizer(letter, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise JudgeError(
                f"the judge tokenizer splits {letter!r} into {len(ids)} tokens; an LLM judge needs single-token answers"
            )
        return ids[0]

    @torch.no_grad()
    def prob_first(self, questions: list[list[Message]]) -> list[float]:
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
                ids[r, width - len(row) :] = torch.tensor(row)
                mask[r, width - len(row) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                logits_to_keep=1,
            ).logits[:, -1, :]
            pair = logits[:, self.letter_ids].float().log_softmax(-1)
            probs += pair[:, 0].exp().tolist()
        return probs


class HTTPLLMJudge(PairwiseJudge):
    """An OpenAI-compatible chat-completions endpoint (vLLM, TGI, llama.cpp server, OpenAI, ...).

    P(A) comes from the first token's top log-probs when the server returns them, else from the
    answer's first letter (1 or 0). The API key is read from the environment and never logged.
    """

    name = "llm"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_retries: int = 4,
        timeout: float = 60.0,
        concurrency: int = 4,
        max_chars: int = 4000,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        check_http_url(self.url)
        self.model, self.api_key_env = model, api_key_env
        self.max_retries, self.timeout, self.concurrency, self.max_chars = max_retries, timeout, concurrency, max_chars
        self.sleep = sleep
        self.unparsed = 0

    def prob_first(self, questions: list[list[Message]]) -> list[float]:
        before = self.unparsed
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            answers = list(pool.map(self._ask, questions))
        if self.unparsed > before:
            console.print(
                f"[yellow]{self.unparsed - before} of {len(questions)} judge answers were neither A nor B, or "
                "carried a log-prob that is not one (NaN, positive, not a number), and count as ties.[/]"
            )
        return answers

    def _ask(self, messages: list[Message]) -> float:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": 5,
        }
        return self._answer_probability(self._post(body))

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            register_secret(key)  # whatever echoes it back (an error body), it is masked
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        last_error = ""
        for attempt in range(self.max_retries + 1):
            try:
                status, payload = bounded_post(self.url, data, self._headers(), self.timeout, MAX_RESPONSE_BYTES)
                if status in (401, 403):
                    raise JudgeError(
                        f"the judge endpoint {self.url} refused the request (HTTP {status}); "
                        f"check the API key in the environment variable {self.api_key_env}"
                    )
                if status == 429 or status >= 500:
                    last_error = f"HTTP {status}"
                elif status >= 300:
                    detail = redact(payload[:300].decode(errors="replace"))
                    raise JudgeError(f"the judge endpoint {self.url} answered HTTP {status}: {detail}")
                else:
                    return json.loads(payload)
            except ResponseTooLarge:
                raise JudgeError(
                    f"the judge endpoint {self.url} sent more than {MAX_RESPONSE_BYTES // 1_000_000} MB for one "
                    "answer of one token: it is not an OpenAI-compatible chat endpoint, or it misbehaves"
                ) from None
            except DeadlineExceeded:
                last_error = f"no complete answer within judge.llm.timeout={self.timeout:g} s"
            except (OSError, http.client.HTTPException) as err:
                last_error = redact(str(getattr(err, "reason", err)) or type(err).__name__)
            except (json.JSONDecodeError, UnicodeDecodeError):
                last_error = "a reply that is not JSON"
            if attempt < self.max_retries:
                self.sleep(min(2.0**attempt, 30.0) * (1 + random.random() * 0.1))
        raise JudgeError(
            f"could not get an answer from the judge endpoint {self.url} after "
            f"{self.max_retries + 1} tries ({last_error}). Check judge.llm.base_url and that the "
            "server is running."
        )

    def _answer_probability(self, response: dict[str, Any]) -> float:
        choices = response.get("choices") if isinstance(response, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):  # e.g. {"choices": "nope"}: not an OpenAI-compatible chat answer
            raise JudgeError(
                f"the judge endpoint {self.url} answered without a usable choice (OpenAI chat format: "
                f'{{"choices": [{{"message": ...}}]}}): {redact(str(response))[:200]}'
            )
        letters = _letter_logprobs(choice)
        if letters is None:  # a log-prob that is NaN, +inf or not a number: a failed comparison, not a label
            self.unparsed += 1
            return 0.5
        if letters:
            a, b = letters.get("A", -math.inf), letters.get("B", -math.inf)
            return sigmoid(a - b) if math.isfinite(a - b) else float(a > b)
        text = (choice.get("message") or {}).get("content") or ""
        letter = re.match(r"\W*(?:Response\s+)?([AB])\b", text, flags=re.IGNORECASE)  # "A", "B.", "Response A"
        if letter:
            return 1.0 if letter.group(1).upper() == "A" else 0.0
        self.unparsed += 1
        return 0.5


MAX_RESPONSE_BYTES = 1_000_000  # one answer token with its top log-probs is a few kB


class DeadlineExceeded(Exception):
    pass


class ResponseTooLarge(Exception):
    pass


def check_http_url(url: str) -> urllib.parse.SplitResult:
    """http or https with a host, or a JudgeError naming the setting."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JudgeError(f"judge.llm.base_url={url!r}: only http:// and https:// URLs with a host are accepted")
    if problem := url_port_problem(url):
        raise JudgeError(f"judge.llm.base_url={url!r}: {problem} (a port is 1 to 65535)")
    return parts


def bounded_post(
    url: str, data: bytes, headers: dict[str, str], deadline_s: float, max_bytes: int
) -> tuple[int, bytes]:
    """POST and read the whole answer within ``deadline_s`` seconds in total and ``max_bytes`` bytes.

    A socket timeout bounds each read, not the request: a server that sends a byte a second would never time
    out. A watchdog shuts the socket down at the deadline instead, which wakes any blocked read.
    """
    parts = check_http_url(url)
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_type(parts.hostname, parts.port, timeout=deadline_s)
    expired = threading.Event()
    # The socket is kept here: on an answer that closes the connection (HTTP/1.0, "Connection: close"),
    # http.client hands it to the response and forgets it, so connection.sock is None by the time we wait.
    sockets: list[socket.socket] = []

    def abort() -> None:
        expired.set()
        for sock in {id(s): s for s in [*sockets, connection.sock] if s is not None}.values():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    watchdog = threading.Timer(deadline_s, abort)
    watchdog.daemon = True
    watchdog.start()
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.connect()
        sockets.append(connection.sock)
        connection.request("POST", path, body=data, headers=headers)
        response = connection.getresponse()
        chunks, size = [], 0
        while True:
            chunk = response.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise ResponseTooLarge
            chunks.append(chunk)
        if expired.is_set():
            raise DeadlineExceeded
        return response.status, b"".join(chunks)
    except (OSError, http.client.HTTPException) as err:
        # A socket timeout is as long as the whole deadline, so it too means the deadline has passed; on a busy
        # machine it can fire before the watchdog's thread runs.
        if expired.is_set() or isinstance(err, TimeoutError):
            raise DeadlineExceeded from None
        raise
    finally:
        watchdog.cancel()
        connection.close()


def _letter_logprobs(choice: dict[str, Any]) -> dict[str, float] | None:
    """The answer token's log-probs of "A" and "B" (either may be missing: -inf); None when one of them is not a
    log-prob (NaN, +inf, a string): the answer is broken, whatever the other letter says."""
    content = ((choice.get("logprobs") or {}).get("content")) or []
    if not content:
        return {}
    found: dict[str, float] = {}
    for entry in content[0].get("top_logprobs") or [content[0]]:
        letter = str(entry.get("token", "")).strip().upper()
        if letter in ("A", "B") and letter not in found:
            value = entry.get("logprob")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value > 0:
                return None
            found[letter] = float(value)
    return found
