"""Shared pieces of the benchmarks: real inputs from one round of ``spreadpref run``, workers in their
own subprocesses, statistics and the JSON + Markdown report.

Inputs: ``prepare_inputs`` runs ``spreadpref run`` once per model (a short seed stage, then one
default round) in ``<workdir>/inputs-<model>/``, and every benchmark reads what that round wrote:
pi_init (the model), pi_0 (``seed/model``), the round's prompts, generations, judgements and
pairs. Later calls reuse the directory.

Each measured side runs in its own Python subprocess (``--worker SIDE``), so its peak RSS is its own;
sides are alternated within every repetition (A, B, C, A, B, C, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spreadpref.runtime.progress import format_cell

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKDIR = ROOT / "benchmarks" / "work"
# The seed stage only has to make a pi_0 that differs from pi_init: a few optimizer steps are enough.
SEED_STEPS = {"embedded": 4, "tiny": 2}


# ---------------------------------------------------------------------------------------------
# Command line


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--model",
        default="embedded",
        help="embedded (SmolLM2-135M-Instruct, the default), tiny (a random model built in code, for smoke "
        "runs) or a model directory",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 weights / autocast on both sides (GPU)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads in every worker (default: the cores available to the process)",
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions of every side (alternated)")
    p.add_argument("--prompts", type=int, default=32, help="prompts of the input round (2 samples each)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    p.add_argument("--out", type=Path, default=None, help="JSON result (the Markdown table goes next to it)")
    p.add_argument("--sides", default=None, help="comma-separated subset of the sides to run")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    return p


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The options a worker subprocess needs, as given to the orchestrator."""
    argv = [
        "--model",
        args.model,
        "--device",
        args.device,
        "--prompts",
        str(args.prompts),
        "--workdir",
        str(args.workdir),
    ]
    if args.bf16:
        argv.append("--bf16")
    if args.threads:
        argv += ["--threads", str(args.threads)]
    for name, value in sorted(vars(args).items()):
        if name.startswith("x_") and value is not None:  # benchmark-specific options are named x_*
            argv += [f"--{name[2:].replace('_', '-')}", str(value)]
    return argv


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def setup_worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads or available_cores())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")


def dtype_overrides(args: argparse.Namespace) -> list[str]:
    return [f"model.device={args.device}"] + (["model.dtype=bfloat16"] if args.bf16 else [])


def torch_dtype(args: argparse.Namespace):
    import torch

    return torch.bfloat16 if args.bf16 else torch.float32


# ---------------------------------------------------------------------------------------------
# Inputs: one round of `spreadpref run`


def model_path(args: argparse.Namespace) -> str:
    if args.model == "tiny":
        from spreadpref.testing import make_tiny_model_dir

        path = args.workdir / "tiny-model"
        if not (path / "config.json").is_file():
            make_tiny_model_dir(path)
        return str(path)
    if args.model == "embedded":
        from spreadpref.models.loading import ensure_embedded_model

        return str(ensure_embedded_model())
    return args.model


def inputs_dir(args: argparse.Namespace) -> Path:
    tag = args.model if args.model in ("embedded", "tiny") else Path(args.model).name
    return args.workdir / f"inputs-{tag}-{args.prompts}p-{args.device}{'-bf16' if args.bf16 else ''}"


def run_overrides(args: argparse.Namespace, init: str, rounds: int = 1) -> list[str]:
    """The bundled CPU profile (one default round), with a short seed stage and this model.

    ``train.max_steps`` shortens the seed stage; a round of 32 pairs is 4 optimizer steps anyway
    (2 pairs x 4 accumulation steps per step).
    """
    steps = SEED_STEPS.get(args.model, 4)
    # The tiny random model never stops by itself: short replies keep smoke runs short.
    short = ["generation.max_new_tokens=24"] if args.model == "tiny" else []
    return [
        f"model.name_or_path={init}",
        f"train.max_steps={steps}",
        f"loop.rounds={rounds}",
        f"loop.prompts_per_round=[{args.prompts}]",
        "train.save_strategy=no",
        *short,
        *dtype_overrides(args),
    ]


def spreadpref_run(args: argparse.Namespace, run_dir: Path, rounds: int, capture: bool = False):
    """``spreadpref run`` in a subprocess: its memory and threads stay out of the orchestrator."""
    command = [
        sys.executable,
        "-m",
        "spreadpref",
        "run",
        "-o",
        str(run_dir),
        *run_overrides(args, model_path(args), rounds),
    ]
    print("Running:", " ".join(command), flush=True)
    return subprocess.run(command, check=True, cwd=ROOT, env=worker_env(args), capture_output=capture, text=True)


def prepare_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Run (once) a short seed stage, keep a copy of it, then one default round; return where the files are."""
    directory = inputs_dir(args)
    seed_only = directory / "seed-only"
    run_dir = directory / "run"
    done = directory / "inputs.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    spreadpref_run(args, seed_only, rounds=0)
    shutil.copytree(seed_only, run_dir)
    spreadpref_run(args, run_dir, rounds=1)
    return record_inputs(args, model_path(args), run_dir, seed_only)


def record_inputs(args: argparse.Namespace, init: str, run_dir: Path, seed_only: Path) -> dict[str, Any]:
    """Write where the input round's files are (``inputs.json``, which later benchmark runs reuse); return it.
    ``run_dir``: a run with its seed stage and round 1 finished; ``seed_only``: the seed stage alone."""
    round_1 = run_dir / "round-1"
    info = {
        "init": init,
        "pi0": str(run_dir / "seed" / "model"),
        "seed_only": str(seed_only),
        "run_dir": str(run_dir),
        **{key: str(round_1 / f"{key}.jsonl") for key in ("prompts", "generations", "judged", "pairs")},
    }
    directory = inputs_dir(args)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "inputs.json").write_text(json.dumps(info, indent=1))
    return info


def profile_path() -> Path:
    """The bundled CPU profile, which ``spreadpref run`` uses without ``--config``."""
    from spreadpref.config import default_profile_path

    return default_profile_path()


def round_config(args: argparse.Namespace, extra: Sequence[str] = (), rounds: int = 1):
    """The configuration of the input round: the bundled profile with this model and device."""
    from spreadpref.config import load_config

    return load_config(profile_path(), [*run_overrides(args, model_path(args), rounds), *extra])


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_prompt_records(path: str | Path):
    from spreadpref.data.records import PromptRecord

    return [PromptRecord(id=row["id"], prompt=row["prompt"]) for row in read_jsonl(path)]


def load_eval(path: str, args: argparse.Namespace):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(args))
    model.to(args.device)
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# Workers and measurement


def worker_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    threads = str(args.threads or available_cores())
    env.update(
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")])),
    )
    return env


def run_worker(script: str, side: str, args: argparse.Namespace, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run one side in a fresh interpreter; its result is the JSON it writes."""
    result = args.workdir / f".result-{os.getpid()}-{side}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, script, "--worker", side, "--result", str(result), *worker_argv(args), *extra]
    started = time.perf_counter()
    proc = subprocess.run(command, check=False, cwd=ROOT, env=worker_env(args), capture_output=True, text=True)
    if proc.returncode != 0 or not result.is_file():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"worker {side} failed (exit {proc.returncode})")
    data = json.loads(result.read_text())
    result.unlink()
    data["process_seconds"] = time.perf_counter() - started
    return data


def finish_worker(args: argparse.Namespace, data: dict[str, Any]) -> None:
    data["peak_rss_gib"] = peak_rss_gib()
    data["loadavg_1m_after"] = os.getloadavg()[0]  # > threads: something else shared the machine
    if args.device == "cuda":
        import torch

        data["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    args.result.write_text(json.dumps(data))


def peak_rss_gib() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage * (1 if sys.platform == "darwin" else 1024) / 2**30


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class Timer:
    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.seconds = time.perf_counter() - self.start


def alternate(sides: Sequence[str], reps: int, run: Callable[[str, int], dict[str, Any]]) -> dict[str, list[dict]]:
    """A, B, C, A, B, C, ...: every side once per repetition, in the same order."""
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for rep in range(reps):
        for side in sides:
            data = run(side, rep)
            results[side].append(data)
            print(
                f"  rep {rep + 1}/{reps} {side}: "
                + ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in data.items()
                    if k in ("seconds", "rate", "peak_rss_gib")
                ),
                flush=True,
            )
    return results


def run_benchmark(
    script: str,
    name: str,
    args: argparse.Namespace,
    sides: Sequence[str],
    worker: Callable[[str, argparse.Namespace, dict[str, Any]], dict[str, Any]],
    report: Callable[..., tuple[dict[str, Any], str]],
) -> int:
    """A worker (``--worker SIDE``) measures one side; the orchestrator alternates them and reports."""
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        setup_worker(args)
        finish_worker(args, worker(args.worker, args, prepare_inputs(args)))
        return 0
    prepare_inputs(args)
    chosen = args.sides.split(",") if args.sides else list(sides)
    results = alternate(chosen, args.reps, lambda side, rep: run_worker(script, side, args))
    data, markdown = report(args, chosen, results)
    write_report(args, name, data, markdown)
    return 0


def generate_kwargs(settings, stops: list[int], pad_token_id: int, max_new_tokens: int) -> dict[str, Any]:
    """``model.generate`` keyword arguments for the configured sampling: what the built-in engine called before
    its own decode loop (spreadpref.models.decode), kept here as the side it is measured against."""
    sampling = settings.temperature > 0
    return {
        "do_sample": sampling,
        "temperature": settings.temperature if sampling else None,
        "top_p": settings.top_p if sampling else None,
        "top_k": None,
        "max_new_tokens": max(max_new_tokens, 1),
        "num_return_sequences": settings.num_samples,
        "eos_token_id": stops,
        "pad_token_id": pad_token_id,
    }


def bare_generate(
    model, tokenizer, prompt_ids: list[list[int]], batches: list[list[int]], settings, data, seeds: list[int], **extra
) -> dict[int, list[list[int]]]:
    """``model.generate`` over ``batches`` of prompt indices, each batch seeded from ``seeds`` (as the built-in
    engine seeds them): the K replies of every prompt, cut at the stop token (kept)."""
    import torch

    from spreadpref.models.sampling import left_padded, split_reply, stop_token_ids

    stops = stop_token_ids(tokenizer, model.generation_config)
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    replies: dict[int, list[list[int]]] = {}
    with torch.no_grad():
        for indices, seed in zip(batches, seeds):
            torch.manual_seed(seed)
            input_ids, attention = left_padded([prompt_ids[i] for i in indices], pad)
            width = input_ids.shape[1]
            budget = min(settings.max_new_tokens, data.max_length - width)
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                **generate_kwargs(settings, stops, pad, budget),
                **extra,
            )
            for row, sequence in enumerate(output[:, width:].tolist()):
                reply, _ = split_reply(sequence, set(stops), pad)
                replies.setdefault(indices[row // settings.num_samples], []).append(reply)
    return replies


def matmul_flops_per_second(size: int = 2048, repeats: int = 10) -> float:
    """What the threads compute at best: a large float32 matrix product, after a warm-up (the compute limit)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratio(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Per-repetition ratios a_i / b_i (alternated runs pair up), median, min and max."""
    values = [x / y for x, y in zip(a, b) if y]
    return summary(values) if values else {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores_available": available_cores(),
        "threads": args.threads or available_cores(),
        "device": args.device,
        "dtype": "bfloat16" if args.bf16 else "float32",
        "model": args.model,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        info["trl"] = None
    if args.device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def spread(stats: dict[str, float], spec: str = ".3g") -> str:
    return f"{format_cell(stats['median'], spec)} ({format_cell(stats['min'], spec)}–{format_cell(stats['max'], spec)})"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(args: argparse.Namespace, name: str, data: dict[str, Any], markdown: str) -> Path:
    out = args.out or (args.workdir / f"{name}-{args.model}-{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": name,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "environment": environment(args),
        **data,
    }
    out.write_text(json.dumps(data, indent=1, default=str))
    md = out.with_suffix(".md")
    md.write_text(markdown + "\n")
    print(markdown)
    print(f"\nWrote {out} and {md}")
    return out


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
