"""Generation engines on the CPU: today's ``generate_samples`` (``hf``: spreadpref's own decode loop, each prompt
read once for its K replies) against the same loop reading each reply's prompt (``hf-prefill-each``, the loop
before), transformers' ``generate`` (``hf-generate``, the engine before that; with a static cache; compiled) and
other engines, side by side (issue 38).

Every side draws K=2 replies (temperature 0.7, full vocabulary, at most 128 new tokens) for the same first
``--prompts`` bundled prompts, as token ids rendered exactly as ``spreadpref.models.sampling.prepare_prompt_ids``
renders them (the default profile's system prompt), from the embedded SmolLM2-135M-Instruct in float32, on
``--threads`` threads. Each side runs in a fresh process, possibly under another interpreter (an engine that
lives in its own environment: ``--python SIDE=PATH``); sides alternate, A B C A B C. Timed: the generation
call alone (model load, conversion and compilation reported apart, except for ``hf-static-compile``, whose
compilation happens inside its first ``generate``). Reported: generated tokens/s, its share of the compute
limit (a 2048^3 float32 matrix product on the same threads, measured in the same run, divided by 2 x parameters
operations a token), peak RSS, what the side adds to the project's environment (site-packages bytes of its
distributions and their dependencies that the project venv lacks), the one-time conversion, and whether two
repetitions drew the same samples (a fixed seed), and the same samples as ``hf``. A side whose packages are
missing is reported as "not installed".

    python benchmarks/bench_engines.py --threads 1 --reps 2 --prompts 32
        [--sides hf,hf-static,ctranslate2,...] [--python ctranslate2=/work/engines-venv/bin/python]
        [--convert-python openvino-genai=/work/ov-convert-venv/bin/python]

Adding a side: write ``generate_<name>(job, model_dir) -> (samples, load_seconds, generate_seconds, info)``
(samples: per prompt, K lists of reply ids) and, when it needs converted weights, a ``convert_<name>``
command; then one ``Side`` entry in ``SIDES``. The worker half imports nothing but the standard library and
the side's engine, so that it runs under any interpreter.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
# The engines' own environment (CTranslate2, ONNX Runtime GenAI, OpenVINO GenAI: kept out of the project's);
# --python SIDE=PATH overrides it per side. Where it does not exist, those sides report "not installed".
ENGINES_PYTHON = os.environ.get("SPREADPREF_ENGINES_PYTHON", "/work/engines-venv/bin/python")
ORT_GENAI_MAX_BATCH = 32  # sequences


# ---------------------------------------------------------------------------------------------
# Sides


@dataclasses.dataclass
class Side:
    name: str
    engine: str  # the module that must import for the side to be "installed"
    python: str | None  # default interpreter; None: the orchestrator's (the project venv)
    distributions: tuple[str, ...]  # what the side installs (for the install size)
    sampler: str  # how its sampler draws (read from its source and documentation)
    convert: Callable[[str, str, Path], list[str]] | None = None  # (python, hf_dir, out) -> command
    convert_python: str | None = None  # interpreter of the conversion, if not the side's
    conversion_needs: str = "none"


def convert_ctranslate2(python: str, hf_dir: str, out: Path) -> list[str]:
    return [python, "-m", "ctranslate2.converters.transformers", "--model", hf_dir, "--output_dir", str(out),
            "--quantization", "float32", "--force"]  # fmt: skip


def convert_onnxruntime_genai(python: str, hf_dir: str, out: Path) -> list[str]:
    return [python, "-m", "onnxruntime_genai.models.builder", "-i", hf_dir, "-o", str(out), "-p", "fp32",
            "-e", "cpu", "-c", str(out.parent / "ortgenai-cache")]  # fmt: skip


def convert_openvino_genai(python: str, hf_dir: str, out: Path) -> list[str]:
    cli = str(Path(python).parent / "optimum-cli")
    return [cli, "export", "openvino", "-m", hf_dir, "--task", "text-generation-with-past", "--weight-format",
            "fp32", str(out)]  # fmt: skip


HF_SAMPLER = "exact: temperature over the full vocabulary, torch.multinomial (top_k unset, top_p 1.0)"
DECODE_SAMPLER = "exact: temperature over the full vocabulary, one uniform draw per row and step (inverse CDF)"
SIDES = {
    side.name: side
    for side in [
        Side("hf", "transformers", None, (), DECODE_SAMPLER),
        Side("hf-prefill-each", "transformers", None, (), DECODE_SAMPLER),
        Side("hf-generate", "transformers", None, (), HF_SAMPLER),
        Side("hf-static", "transformers", None, (), HF_SAMPLER),
        Side("hf-static-compile", "transformers", None, (), HF_SAMPLER),
        Side(
            "ctranslate2",
            "ctranslate2",
            ENGINES_PYTHON,
            ("ctranslate2",),
            "full vocabulary with sampling_topk=0: softmax(logits / T), then a categorical draw",
            convert_ctranslate2,
            conversion_needs="ctranslate2 + transformers + torch (its converter loads the HF model)",
        ),
        Side(
            "onnxruntime-genai",
            "onnxruntime_genai",
            ENGINES_PYTHON,
            ("onnxruntime-genai",),
            "top_k=0, top_p=1.0: its nucleus path (softmax(logits / T), kept until the cumulative float "
            "probability reaches 1.0, std::discrete_distribution)",
            convert_onnxruntime_genai,
            conversion_needs="onnxruntime-genai + onnx + onnx_ir + transformers + torch (its model builder)",
        ),
        Side(
            "openvino-genai",
            "openvino_genai",
            ENGINES_PYTHON,
            ("openvino-genai",),
            "top_k unset, top_p 1.0: softmax(logits / T) over the full vocabulary, std::discrete_distribution",
            convert_openvino_genai,
            convert_python="/work/ov-convert-venv/bin/python",
            conversion_needs="optimum-intel 2.2 + optimum 2.3 + openvino-tokenizers + transformers<5.6 + torch "
            "(a second environment: optimum-intel does not import with transformers 5.25)",
        ),
    ]
}


# ---------------------------------------------------------------------------------------------
# Worker half: standard library and the side's engine only


def cut_reply(tokens: list[int], stops: set[int]) -> list[int]:
    """Up to and with the first stop token, as ``spreadpref.models.sampling.split_reply`` keeps it."""
    for index, token in enumerate(tokens):
        if token in stops:
            return tokens[: index + 1]
    return tokens


def generate_hf(job: dict, model_dir: str, engine: str = "spreadpref", static: bool = False, compile_: bool = False):
    """``spreadpref``: today's engine, ``generate_samples`` itself (its own decode loop; batch size ``auto``:
    32 prompts in one batch); ``spreadpref-prefill-each``: the same with the loop before it read each prompt once.
    ``generate``: transformers' ``model.generate`` over the same batches with the
    same seeds (the engine before), optionally with the static KV cache and a compiled decode step."""
    import tempfile
    from contextlib import nullcontext
    from unittest import mock

    import torch
    from transformers import AutoModelForCausalLM

    from spreadpref.config import load_config
    from spreadpref.data.loading import load_prompts
    from spreadpref.models import sampling
    from spreadpref.models.loading import load_tokenizer

    sys.path.insert(0, str(BENCH_DIR))
    import common

    torch.set_num_threads(job["threads"])
    config = load_config(job["profile"], [f"model.name_or_path={model_dir}"])
    prompts = load_prompts(config.data.prompts)[0][: job["prompts"]]
    tokenizer = load_tokenizer(config.model)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    load_seconds = time.perf_counter() - started
    prompt_ids = sampling.prepare_prompt_ids(tokenizer, prompts, config.data)
    if prompt_ids != job["prompt_ids"]:
        raise SystemExit("hf worker: prompt ids differ from the job's")
    replies: list[list[list[int]]] = [[] for _ in prompts]
    started = time.perf_counter()
    if engine in ("spreadpref", "spreadpref-prefill-each"):
        loop = nullcontext() if engine == "spreadpref" else mock.patch.object(sampling, "decode", decode_prefill_each)
        with loop, tempfile.TemporaryDirectory() as tmp:
            samples = sampling.generate_samples(
                model, tokenizer, prompts, config.generation, config.data, job["seed"], Path(tmp) / "s.jsonl", 1
            )
        for sample in sorted(samples, key=lambda s: (s.prompt_index, s.sample)):
            replies[sample.prompt_index].append(sample.reply_ids)
    else:
        extra: dict[str, Any] = {"cache_implementation": "static"} if static else {}
        if compile_:
            from transformers import CompileConfig

            # transformers compiles the decode step only on GPUs unless told to on every device
            compile_config = CompileConfig(mode="default")
            compile_config._compile_all_devices = True
            extra["compile_config"] = compile_config
        size = sampling.generation_batch_size(
            config.generation, model.config, model.dtype, prompt_ids, config.data.max_length
        )
        batches = sampling.prompt_batches(prompt_ids, size)
        seeds = [sampling.unit_seed(job["seed"], "generate", 1, b) for b in range(len(batches))]
        drawn = common.bare_generate(
            model, tokenizer, prompt_ids, batches, config.generation, config.data, seeds, **extra
        )
        for index, group in drawn.items():
            replies[index] = group
    seconds = time.perf_counter() - started
    return replies, load_seconds, seconds, {"torch": torch.__version__}


def decode_prefill_each(model, input_ids, attention_mask, *args, repeats: int = 1, **kwargs) -> list[list[int]]:
    """The decode loop before it read each prompt once: K copies of every prompt row, each read by the prefill
    (``generate_samples``' batches, seeds and cutting stay as they are)."""
    from spreadpref.models.decode import decode

    rows = (input_ids.repeat_interleave(repeats, dim=0), attention_mask.repeat_interleave(repeats, dim=0))
    return decode(model, *rows, *args, **kwargs)


def generate_ctranslate2(job: dict, model_dir: str):
    import ctranslate2

    ctranslate2.set_random_seed(job["seed"])  # seeds the worker thread when it first samples
    started = time.perf_counter()
    generator = ctranslate2.Generator(
        model_dir, device="cpu", compute_type="float32", inter_threads=1, intra_threads=job["threads"]
    )
    vocabulary = json.loads((Path(model_dir) / "vocabulary.json").read_text())
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    results = generator.generate_batch(
        [[vocabulary[i] for i in ids] for ids in job["prompt_ids"]],
        max_length=job["max_new_tokens"],
        sampling_topk=0,  # 0: the full distribution
        sampling_topp=job["top_p"],
        sampling_temperature=job["temperature"],
        num_hypotheses=job["num_samples"],
        include_prompt_in_result=False,
        end_token=job["stops"],
        return_end_token=True,
    )
    seconds = time.perf_counter() - started
    stops = set(job["stops"])
    replies = [[cut_reply(list(seq), stops) for seq in r.sequences_ids] for r in results]
    scores = hasattr(generator, "score_batch")
    return replies, load_seconds, seconds, {"ctranslate2": ctranslate2.__version__, "score_batch": scores}


def generate_onnxruntime_genai(job: dict, model_dir: str):
    import numpy as np
    import onnxruntime_genai as og

    # The model's pad id is its EOS (2), which is also <|im_end|> inside every chat prompt; ORT GenAI derives
    # the attention mask from pad ids, so pad with an id no prompt holds (<|endoftext|>, 0).
    pad = 0
    if any(pad in ids for ids in job["prompt_ids"]):
        raise SystemExit("onnxruntime-genai worker: a prompt holds the padding id")
    threads = job["threads"]
    config = og.Config(model_dir)
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"pad_token_id": pad, "decoder": {"session_options": options}}}))
    started = time.perf_counter()
    model = og.Model(config)
    load_seconds = time.perf_counter() - started
    k = job["num_samples"]
    rows = [ids for ids in job["prompt_ids"] for _ in range(k)]  # num_return_sequences is for beam search only
    stops = set(job["stops"])
    flat: list[list[int]] = []
    seconds = 0.0
    # It refuses batches of more than 32 sequences (0.18, CPU): 16 prompts x 2 a batch, one seed each
    for chunk, start in enumerate(range(0, len(rows), ORT_GENAI_MAX_BATCH)):
        part = rows[start : start + ORT_GENAI_MAX_BATCH]
        width = max(len(ids) for ids in part)
        input_ids = np.full((len(part), width), pad, dtype=np.int32)
        for index, ids in enumerate(part):
            input_ids[index, width - len(ids) :] = ids
        started = time.perf_counter()
        params = og.GeneratorParams(model)
        params.set_search_options(
            do_sample=True,
            temperature=job["temperature"],
            top_k=0,
            top_p=job["top_p"],
            max_length=width + job["max_new_tokens"],
            batch_size=len(part),
            random_seed=(job["seed"] + chunk) % 2**31,
        )
        generator = og.Generator(model, params)
        generator.append_tokens(input_ids)
        while not generator.is_done():
            generator.generate_next_token()
        seconds += time.perf_counter() - started
        flat += [cut_reply([int(t) for t in generator.get_sequence(r)[width:]], stops) for r in range(len(part))]
    return (
        [flat[i * k : (i + 1) * k] for i in range(len(job["prompt_ids"]))],
        load_seconds,
        seconds,
        {"onnxruntime_genai": og.__version__},
    )


def generate_openvino_genai(job: dict, model_dir: str):
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    # float32 throughout: the CPU plugin would infer in bfloat16 on AVX512-BF16 CPUs and keep a u8 KV cache
    properties = {
        "INFERENCE_NUM_THREADS": job["threads"],
        "INFERENCE_PRECISION_HINT": "f32",
        "KV_CACHE_PRECISION": "f32",
    }
    started = time.perf_counter()
    pipe = ov_genai.LLMPipeline(model_dir, "CPU", **properties)
    load_seconds = time.perf_counter() - started
    config = ov_genai.GenerationConfig()
    config.do_sample = True
    config.temperature = job["temperature"]
    config.top_p = job["top_p"]  # top_k stays unset (the full vocabulary)
    config.num_return_sequences = job["num_samples"]
    config.max_new_tokens = job["max_new_tokens"]
    config.stop_token_ids = set(job["stops"])
    config.rng_seed = job["seed"] % 2**32
    prompts = job["prompt_ids"]
    width = max(len(ids) for ids in prompts)
    input_ids = np.zeros((len(prompts), width), dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for index, ids in enumerate(prompts):
        input_ids[index, width - len(ids) :] = ids
        mask[index, width - len(ids) :] = 1
    started = time.perf_counter()
    result = pipe.generate(ov_genai.TokenizedInputs(ov.Tensor(input_ids), ov.Tensor(mask)), config)
    seconds = time.perf_counter() - started
    k = job["num_samples"]
    stops = set(job["stops"])
    flat = [cut_reply([int(t) for t in tokens], stops) for tokens in result.tokens]
    return (
        [flat[i * k : (i + 1) * k] for i in range(len(prompts))],
        load_seconds,
        seconds,
        {"openvino_genai": ov_genai.__version__},
    )


GENERATORS: dict[str, Callable] = {
    "hf": generate_hf,
    "hf-prefill-each": lambda job, model_dir: generate_hf(job, model_dir, engine="spreadpref-prefill-each"),
    "hf-generate": lambda job, model_dir: generate_hf(job, model_dir, engine="generate"),
    "hf-static": lambda job, model_dir: generate_hf(job, model_dir, engine="generate", static=True),
    "hf-static-compile": lambda job, model_dir: generate_hf(
        job, model_dir, engine="generate", static=True, compile_=True
    ),
    "ctranslate2": generate_ctranslate2,
    "onnxruntime-genai": generate_onnxruntime_genai,
    "openvino-genai": generate_openvino_genai,
}


def install_bytes(names: tuple[str, ...], project_has: list[str]) -> dict[str, Any]:
    """Bytes on disk of ``names`` and their (non-extra) dependencies that the project venv lacks."""
    import re
    from importlib import metadata

    def key(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    present = set(project_has)
    seen: dict[str, int] = {}
    todo = list(names)
    while todo:
        name = key(todo.pop())
        if name in seen or name in present:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = sum(f.size or 0 for f in dist.files or [])
        for requirement in dist.requires or []:
            if "extra ==" not in requirement:
                todo.append(re.split(r"[ ;<>=!~\[(]", requirement.strip(), maxsplit=1)[0])
    return {"bytes": sum(seen.values()), "distributions": seen}


def worker(side: str, job: dict) -> dict[str, Any]:
    if side == "compute-limit":  # in the project's environment: the shared measurement of benchmarks/common.py
        import torch

        sys.path.insert(0, str(BENCH_DIR))
        import common

        torch.set_num_threads(job["threads"])
        return {"flops_per_second": common.matmul_flops_per_second()}
    model_dir = job["model_dirs"][side]
    replies, load_seconds, seconds, info = GENERATORS[side](job, model_dir)
    tokens = sum(len(r) for group in replies for r in group)
    lengths = sorted(len(r) for group in replies for r in group)
    return {
        "tokens": tokens,
        "replies": sum(len(group) for group in replies),
        "median_reply_tokens": lengths[len(lengths) // 2],
        "hit_max_new_tokens": sum(n >= job["max_new_tokens"] for n in lengths),
        "seconds": seconds,
        "load_seconds": load_seconds,
        "rate": tokens / seconds,
        "samples_sha256": hashlib.sha256(json.dumps(replies).encode()).hexdigest()[:16],
        "first_reply_ids": replies[0][0][:12],
        "install": install_bytes(SIDES[side].distributions, job["project_distributions"]),
        "versions": info,
        "python": sys.executable,
    }


def worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True)
    p.add_argument("--job", type=Path, required=True)
    p.add_argument("--result", type=Path, required=True)
    args = p.parse_args(argv)
    job = json.loads(args.job.read_text())
    data = worker(args.worker, job)
    data["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    data["loadavg_1m_after"] = os.getloadavg()[0]
    args.result.write_text(json.dumps(data))
    return 0


# ---------------------------------------------------------------------------------------------
# Orchestrator half: the project venv


def side_pythons(args: argparse.Namespace) -> dict[str, str]:
    chosen = {name: side.python or sys.executable for name, side in SIDES.items()}
    for item in args.python or []:
        name, _, path = item.partition("=")
        chosen[name] = path
    return chosen


def is_installed(python: str, module: str, env: dict[str, str]) -> bool:
    if not Path(python).exists():
        return False
    proc = subprocess.run([python, "-c", f"import {module}"], env=env, capture_output=True, text=True)
    return proc.returncode == 0


def make_job(args: argparse.Namespace, common) -> dict[str, Any]:
    from importlib import metadata

    from transformers import GenerationConfig

    from spreadpref.config import load_config
    from spreadpref.data.loading import load_prompts
    from spreadpref.models.loading import load_tokenizer
    from spreadpref.models.sampling import prepare_prompt_ids, stop_token_ids

    hf_dir = common.model_path(args)
    config = load_config(common.profile_path(), [f"model.name_or_path={hf_dir}"])
    prompts = load_prompts(config.data.prompts)[0][: args.prompts]
    tokenizer = load_tokenizer(config.model)
    prompt_ids = prepare_prompt_ids(tokenizer, prompts, config.data)
    settings = config.generation
    budgets = {min(settings.max_new_tokens, config.data.max_length - len(ids)) for ids in prompt_ids}
    if budgets != {settings.max_new_tokens}:
        raise SystemExit(f"a prompt is too long for {settings.max_new_tokens} new tokens: {sorted(budgets)}")
    return {
        "hf_dir": hf_dir,
        "profile": str(common.profile_path()),
        "prompts": args.prompts,
        "prompt_ids": prompt_ids,
        "stops": stop_token_ids(tokenizer, GenerationConfig.from_pretrained(hf_dir)),
        "num_samples": settings.num_samples,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_new_tokens": settings.max_new_tokens,
        "seed": config.seed,
        "threads": args.threads or common.available_cores(),
        "parameters": parameter_count(hf_dir),
        "project_distributions": sorted(
            {__import__("re").sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in metadata.distributions()}
        ),
    }


def parameter_count(hf_dir: str) -> int:
    """Parameters in the safetensors file (tied embeddings once), from its header."""
    from math import prod

    from safetensors import safe_open

    with safe_open(str(Path(hf_dir) / "model.safetensors"), "pt") as handle:
        return sum(prod(handle.get_slice(name).get_shape()) for name in handle.keys())


def ensure_converted(side: Side, python: str, job: dict, args: argparse.Namespace, env: dict) -> dict[str, Any]:
    """Convert the model once for this side; the time and the command are kept next to the output."""
    out = args.workdir / "engines" / side.name
    marker = out / "bench-conversion.json"
    if marker.is_file():
        return json.loads(marker.read_text()) | {"cached": True}
    converter = side.convert_python or python
    for item in args.convert_python or []:
        name, _, path = item.partition("=")
        if name == side.name:
            converter = path
    command = side.convert(converter, job["hf_dir"], out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print("Converting:", " ".join(command), flush=True)
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        return {"error": f"conversion failed (exit {proc.returncode})", "command": command}
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    info = {"seconds": seconds, "command": command, "output_bytes": size, "needs": side.conversion_needs}
    marker.write_text(json.dumps(info, indent=1))
    return info | {"cached": False}


def run_side(side: str, python: str, job_file: Path, args: argparse.Namespace, env: dict) -> dict[str, Any]:
    result = args.workdir / f".engines-result-{os.getpid()}-{side}.json"
    result.unlink(missing_ok=True)
    command = [python, str(Path(__file__).resolve()), "--worker", side, "--job", str(job_file), "--result", str(result)]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=BENCH_DIR.parent, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not result.is_file():
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        return {"error": f"worker failed (exit {proc.returncode})", "stderr_tail": proc.stderr[-1500:]}
    data = json.loads(result.read_text())
    result.unlink()
    data["process_seconds"] = time.perf_counter() - started
    return data


def report(args, job, chosen, status, conversions, limits, results, common) -> tuple[dict[str, Any], str]:
    flops = common.summary(limits)
    limit = flops["median"] / (2 * job["parameters"])
    base = [r["rate"] for r in results.get("hf", []) if "rate" in r]
    base_samples = next((r["samples_sha256"] for r in results.get("hf", []) if "samples_sha256" in r), None)
    stats: dict[str, Any] = {}
    rows = []
    for name in chosen:
        side = SIDES[name]
        runs = [r for r in results.get(name, []) if "rate" in r]
        if status[name] != "installed" or not runs:
            reason = status[name] if status[name] != "installed" else (results.get(name) or [{}])[0].get("error")
            stats[name] = {"status": reason}
            rows.append([name, reason] + ["–"] * 8)
            continue
        rates = [r["rate"] for r in runs]
        install = runs[0]["install"]["bytes"]
        conversion = conversions.get(name)
        stats[name] = {
            "status": "installed",
            "tokens_per_second": common.summary(rates),
            "share_of_limit": common.summary([rate / limit for rate in rates]),
            "speedup_over_hf": common.ratio(rates, base) if base and name != "hf" else None,
            "peak_rss_gib": common.summary([r["peak_rss_gib"] for r in runs]),
            "load_seconds": common.summary([r["load_seconds"] for r in runs]),
            "tokens": [r["tokens"] for r in runs],
            "install_bytes": install,
            "conversion": conversion,
            "identical_samples_every_rep": len({r["samples_sha256"] for r in runs}) == 1 if len(runs) > 1 else None,
            "same_samples_as_hf": runs[0]["samples_sha256"] == base_samples if base_samples else None,
            "sampler": side.sampler,
            "python": runs[0]["python"],
            "versions": runs[0]["versions"],
        }
        same = stats[name]["identical_samples_every_rep"]
        rows.append(
            [
                name,
                f"{runs[0]['tokens']} ({runs[0]['hit_max_new_tokens']} at the cap)",
                common.spread(stats[name]["tokens_per_second"]),
                common.spread(stats[name]["share_of_limit"], ".1%"),
                common.spread(stats[name]["speedup_over_hf"], ".2f") if stats[name]["speedup_over_hf"] else "–",
                f"{stats[name]['peak_rss_gib']['max']:.2f}",
                f"{stats[name]['load_seconds']['median']:.1f}",
                f"+{install / 1e6:.0f} MB" if install else "0 (in the project venv)",
                f"{conversion['seconds']:.0f} s, {conversion['output_bytes'] / 1e6:.0f} MB"
                if conversion and "seconds" in conversion
                else "none",
                "–" if same is None else ("yes" if same else "NO"),
                "–"
                if name == "hf" or stats[name]["same_samples_as_hf"] is None
                else ("yes" if stats[name]["same_samples_as_hf"] else "no"),
            ]
        )
    headers = ["side", "tokens (replies at 128)", "tokens/s median (min–max)", "share of the compute limit",
               "speed-up over hf", "peak RSS GiB", "load s", "install", "conversion (once)",
               "same samples every rep", "same samples as hf"]  # fmt: skip
    lines = [
        f"### Generation engines: {args.prompts} prompts x {job['num_samples']} replies, temperature "
        f"{job['temperature']}, at most {job['max_new_tokens']} new tokens, {job['threads']} thread(s), "
        f"{args.reps} repetitions (compute limit {limit:.0f} tokens/s: {flops['median'] / 1e9:.1f} GFLOP/s / "
        f"(2 x {job['parameters'] / 1e6:.1f}M))",
        "",
        common.markdown_table(headers, rows),
        "",
        "Samplers:",
        "",
        *[f"- `{name}`: {SIDES[name].sampler}" for name in chosen],
    ]
    data = {"sides": chosen, "status": status, "compute_limit": {"flops_per_second": flops, "tokens_per_second":
            limit}, "conversions": conversions, "stats": stats, "runs": results,
            "job": {k: v for k, v in job.items() if k not in ("prompt_ids", "project_distributions")}}  # fmt: skip
    return data, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        return worker_main(argv)
    sys.path.insert(0, str(BENCH_DIR))
    import common

    p = common.parser(__doc__.splitlines()[0])
    p.set_defaults(reps=2, out=BENCH_DIR / "results" / "cpu-2core" / "engines.json")
    p.add_argument("--python", action="append", help="SIDE=INTERPRETER (repeatable): where a side runs")
    p.add_argument("--convert-python", action="append", help="SIDE=INTERPRETER (repeatable): its conversion")
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    chosen = args.sides.split(",") if args.sides else list(SIDES)
    pythons = side_pythons(args)
    env = common.worker_env(args)
    job = make_job(args, common)
    status, conversions = {}, {}
    job["model_dirs"] = {}
    for name in chosen:
        side = SIDES[name]
        if not is_installed(pythons[name], side.engine, env):
            status[name] = f"not installed ({side.engine} under {pythons[name]})"
            continue
        status[name] = "installed"
        if side.convert is None:
            job["model_dirs"][name] = job["hf_dir"]
            continue
        conversions[name] = ensure_converted(side, pythons[name], job, args, env)
        if "error" in conversions[name]:
            status[name] = conversions[name]["error"]
        job["model_dirs"][name] = str(args.workdir / "engines" / name)
    job_file = args.workdir / "engines" / "job.json"
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(job))
    runnable = [name for name in chosen if status[name] == "installed"]
    limits: list[float] = []

    def run(side: str, rep: int) -> dict[str, Any]:
        if side == runnable[0]:  # the compute limit once per repetition, in its own process
            limits.append(run_side("compute-limit", sys.executable, job_file, args, env)["flops_per_second"])
        return run_side(side, pythons[side], job_file, args, env)

    results = common.alternate(runnable, args.reps, run)
    data, markdown = report(args, job, chosen, status, conversions, limits, results, common)
    common.write_report(args, "engines", data, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
