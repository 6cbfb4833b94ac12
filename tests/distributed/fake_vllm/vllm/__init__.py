"""A stand-in for vLLM's documented offline API, for tests on machines where vLLM cannot be installed.

It implements only what spreadpref uses (``LLM(...)``, ``LLM.generate(prompts, params)``,
``SamplingParams``, ``RequestOutput.outputs[i].token_ids / finish_reason``), samples token ids from a
seeded RNG instead of a model, and records every call in the JSON file named by ``FAKE_VLLM_LOG``.
"""

import json
import os
import random
import sys
import traceback
from dataclasses import asdict, dataclass, field


def _check_seed(seed):
    # As real vLLM (0.32, CPU build): it seeds numpy with every seed, and numpy takes only 32 bits.
    if seed is not None and not 0 <= seed < 2**32:
        raise ValueError("Seed must be between 0 and 2**32 - 1")


def _fail_like_the_engine_core():
    """FAKE_VLLM_FAIL=1: the engine process prints its traceback on stdout, stderr ends with a generic error."""
    try:
        raise RuntimeError("CUDA out of memory in the engine core (simulated)")
    except RuntimeError:
        for line in traceback.format_exc().splitlines():
            print(f"(EngineCore_DP0 pid=4242) {line}")
    sys.stdout.flush()
    print("RuntimeError: Engine core initialization failed. See root cause above.", file=sys.stderr)
    sys.exit(1)


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None
    stop_token_ids: list = field(default_factory=list)
    skip_special_tokens: bool = True


@dataclass
class CompletionOutput:
    index: int
    token_ids: list
    finish_reason: str


@dataclass
class RequestOutput:
    prompt_token_ids: list
    outputs: list


class LLM:
    def __init__(self, model, **kwargs):
        if os.environ.get("FAKE_VLLM_FAIL"):
            _fail_like_the_engine_core()
        _check_seed(kwargs.get("seed"))
        self.model = model
        self.kwargs = kwargs
        self.calls = []

    def generate(self, prompts, sampling_params):
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params] * len(prompts)
        results = []
        for prompt, params in zip(prompts, sampling_params):
            _check_seed(params.seed)
            rng = random.Random(params.seed)
            outputs = []
            for index in range(params.n):
                ids = []
                finish = "length"
                for _ in range(params.max_tokens):
                    if rng.random() < 0.15 and params.stop_token_ids:
                        ids.append(params.stop_token_ids[0])  # vLLM returns the stop token it stopped on
                        finish = "stop"
                        break
                    ids.append(rng.randrange(20, 200))
                outputs.append(CompletionOutput(index, ids, finish))
            results.append(RequestOutput(list(prompt["prompt_token_ids"]), outputs))
        log = os.environ.get("FAKE_VLLM_LOG")
        if log:
            with open(log, "w") as handle:
                json.dump({"model": self.model, "kwargs": self.kwargs,
                           "prompts": [list(p["prompt_token_ids"]) for p in prompts],
                           "params": [asdict(p) for p in sampling_params]}, handle)
        return results
