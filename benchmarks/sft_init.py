"""The paper's first arrow on the embedded model: pi_base -> SFT on demonstrations -> pi_init.

    python benchmarks/sft_init.py          # about 20 min as one thread on 2 cores; reused when rerun

SPA's paper starts from three models: a pre-trained pi_base, pi_init = pi_base after supervised fine-tuning
on demonstrations, and the seed of preference labels drawn from pi_init. The embedded SmolLM2-135M-Instruct
plays pi_base here. Its demonstrations are made as demonstration sets often are, by rejection sampling:

1. pi_base samples ``--samples`` replies (temperature 1.0, ``--max-new-tokens``) to every *round* task of
   ``builtin:ifeval_prompts`` (the training tasks outside benchmarks/spread.py's development split; never
   an evaluation task of ``builtin:ifeval_eval``, never a seed task), twice: as the task is, and with a
   system prompt asking for brevity (BRIEF). Unprompted, the embedded model runs past 64 tokens in two
   samples of three (605 of 884), so few tasks get a reply that meets its constraints and ends; the
   brief pass is prompted rejection sampling, as demonstration sets are often made;
2. the verifier keeps, per task, the first reply that meets every constraint and ended on its own (not
   cut off), the unprompted pass first; tasks with no such reply give no demonstration (counted);
3. TRL's ``SFTTrainer`` fine-tunes pi_base on those prompt/reply pairs, the prompt always *without* the
   system prompt (as the rounds and the evaluation ask), the loss on the reply tokens only, the reply's
   token ids exactly as sampled (no re-tokenisation).

Everything lands in ``--work`` (default benchmarks/work/spread-sft): samples.jsonl and samples_brief.jsonl
(resumable), demonstrations.jsonl, pi_init/ (a save_pretrained checkpoint with the tokenizer) and
pi_init.json (counts, settings, seconds). Each step is skipped when its output exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from spreadpref.runtime.files import atomic_write_json, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
DEFAULT_WORK = ROOT / "benchmarks" / "work" / "spread-sft"
BASE_MODEL = "embedded:SmolLM2-135M-Instruct"
BRIEF = "You are a helpful assistant. Reply in at most three sentences."  # the spa-cpu profile's system prompt
PASSES = (("samples.jsonl", None), ("samples_brief.jsonl", BRIEF))  # (file, system prompt), in order of preference


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=BASE_MODEL, help="pi_base: a model directory, hub id or embedded:NAME")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--samples", type=int, default=4, help="best-of-N draws per task")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--tasks", type=int, default=None, help="the first N training tasks only (a reduced world)")
    return parser.parse_args(argv)


def round_tasks(args: argparse.Namespace, system_prompt: str | None = None) -> list:
    """The rounds' training tasks (outside the development split), as PromptRecords."""
    import spread

    from spreadpref.data.loading import load_prompts

    round_file, _ = spread.split_prompts(argparse.Namespace(work=args.work))
    prompts, _ = load_prompts(str(round_file), system_prompt=system_prompt, limit=args.tasks)
    return prompts


def sampling_config(args: argparse.Namespace):
    from spreadpref.config import load_config

    return load_config(
        "spa-cpu-long",
        [
            f"model.name_or_path={args.base}",
            "data.max_length=256",
            "data.max_prompt_length=128",
            f"generation.num_samples={args.samples}",
            "generation.temperature=1.0",
            f"generation.max_new_tokens={args.max_new_tokens}",
            f"output_dir={args.work / 'sampling'}",
        ],
    )


def sample_base(args: argparse.Namespace) -> list[list]:
    """pi_base's samples of every pass (PASSES), each pass's file resumable."""
    from spreadpref.models.loading import load_for_inference, load_tokenizer, resolve_model_path
    from spreadpref.models.sampling import generate_samples

    config = sampling_config(args)
    tokenizer = load_tokenizer(config.model)
    model = load_for_inference(config.model, resolve_model_path(args.base))
    return [
        generate_samples(
            model,
            tokenizer,
            round_tasks(args, system),
            config.generation,
            config.data,
            args.seed,
            args.work / name,
        )
        for name, system in PASSES
    ]


def select_demonstrations(args: argparse.Namespace, passes: list[list]) -> tuple[list[dict[str, Any]], dict]:
    """Per task, the first sample (unprompted pass first) that meets every constraint and was not cut off; its
    prompt re-rendered without the system prompt."""
    from spreadpref.judges.base import Comparison
    from spreadpref.judges.verifier import VerifierJudge
    from spreadpref.models.loading import load_tokenizer
    from spreadpref.models.sampling import prepare_prompt_ids

    prompts = round_tasks(args)
    config = sampling_config(args)
    plain_ids = prepare_prompt_ids(load_tokenizer(config.model), prompts, config.data)
    judge = VerifierJudge()
    counts: dict[str, Any] = {"tasks": len(prompts), "no_passing_reply": 0, "passes": {}}
    chosen: dict[int, tuple[Any, float]] = {}
    for (name, _), samples in zip(PASSES, passes):
        by_prompt: dict[int, list] = {}
        for sample in samples:
            by_prompt.setdefault(sample.prompt_index, []).append(sample)
        tally = {"samples": len(samples), "cut_off": sum(s.cut_off for s in samples), "tasks_passed": 0}
        for index, group in sorted(by_prompt.items()):
            record = prompts[index]
            comparison = Comparison(record.prompt, [s.text for s in group], record.id, metadata=record.metadata)
            scores = judge.judge([comparison])[0].scores
            passing = [s for s, score in zip(group, scores) if score == 1.0 and not s.cut_off]
            tally["tasks_passed"] += bool(passing)
            if passing and index not in chosen:
                chosen[index] = (passing[0], sum(score == 1.0 for score in scores) / len(scores))
        counts["passes"][name] = tally
    rows = []
    for index, record in enumerate(prompts):
        if index not in chosen:
            counts["no_passing_reply"] += 1
            continue
        sample, pass_rate = chosen[index]
        rows.append(
            {
                "id": record.id,
                "prompt": record.prompt,
                "reply": sample.text,
                "prompt_ids": plain_ids[index],
                "reply_ids": sample.reply_ids,
                "pass_rate": pass_rate,
            }
        )
    counts["demonstrations"] = len(rows)
    return rows, counts


def train_sft(args: argparse.Namespace, demonstrations: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """TRL's SFTTrainer on the demonstrations' exact token ids, loss on the reply tokens only."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from spreadpref.models.loading import resolve_model_path

    base = resolve_model_path(args.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    dataset = Dataset.from_list(
        [
            {
                "input_ids": d["prompt_ids"] + d["reply_ids"],
                "completion_mask": [0] * len(d["prompt_ids"]) + [1] * len(d["reply_ids"]),
            }
            for d in demonstrations
        ]
    )
    tmp = out.parent / f".{out.name}.tmp"  # a directory: saved whole, then renamed into place
    shutil.rmtree(tmp, ignore_errors=True)
    config = SFTConfig(
        output_dir=str(tmp),
        num_train_epochs=args.epochs,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,  # transformers 5 reads a value below 1 as a fraction of the steps (no warmup_ratio)
        completion_only_loss=True,
        max_length=256,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        use_cpu=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    os.replace(tmp, out)
    return {"train_loss": result.training_loss, "steps": result.global_step}


def check_cached_settings(args: argparse.Namespace) -> None:
    """A cached pi_init is reused only if it was built with these settings (another base is another pi_init)."""
    recorded = json.loads((args.work / "pi_init.json").read_text())["settings"]
    wanted = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "work"}
    differ = {k: (recorded.get(k), v) for k, v in wanted.items() if recorded.get(k) != v}
    if differ:
        raise SystemExit(
            f"{args.work / 'pi_init'} was built with other settings ({differ}: built with, asked for); "
            "give another --work, or remove it to build again"
        )


def build_pi_init(args: argparse.Namespace) -> Path:
    """pi_init in ``args.work / "pi_init"``, built once (each step reused when its output exists)."""
    out = args.work / "pi_init"
    if (out / "config.json").is_file():
        check_cached_settings(args)
        return out
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    demonstrations, counts = select_demonstrations(args, sample_base(args))
    write_jsonl(args.work / "demonstrations.jsonl", demonstrations)
    print(f"demonstrations: {counts['demonstrations']} of {counts['tasks']} tasks ({counts})", flush=True)
    sampled = time.perf_counter()
    training = train_sft(args, demonstrations, out)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    atomic_write_json(
        args.work / "pi_init.json",
        {
            "settings": settings,
            "counts": counts,
            "training": training,
            "seconds": {"sampling": round(sampled - started), "sft": round(time.perf_counter() - sampled)},
            "mean_pass_rate": sum(d["pass_rate"] for d in demonstrations) / max(len(demonstrations), 1),
        },
    )
    print(json.dumps(json.loads((args.work / "pi_init.json").read_text())["counts"]))
    return out


def main(argv: list[str] | None = None) -> int:
    print(build_pi_init(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
