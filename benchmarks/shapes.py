"""Where the tokens go: arithmetic on the input round's real shapes, no timing.

Figures behind the predictions in docs/performance.md: the share of prompt tokens (what a shared
prompt prefix could save), padding of training micro-batches grouped by length against random
order (TRL's default sampler), padding of judge batches, and the generation slots spent on
sequences that had already stopped while others in their batch went on.

    python benchmarks/shapes.py [--model embedded|tiny] [--prompts 32]
"""

from __future__ import annotations

import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common


def padded(rows: list[list[int]], lengths: list[int]) -> tuple[int, int]:
    """(real tokens, padded slots) of batches given as lists of row indices."""
    real = sum(lengths[i] for batch in rows for i in batch)
    slots = sum(max(lengths[i] for i in batch) * len(batch) for batch in rows)
    return real, slots


def training_padding(pairs, batch_size: int, order: list[int]) -> float:
    """Padding share of micro-batches of ``batch_size`` pairs (chosen and rejected rows padded together)."""
    real = slots = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        lengths = [
            len(pairs[i]["prompt_ids"]) + len(pairs[i][key]) for i in batch for key in ("chosen_ids", "rejected_ids")
        ]
        real += sum(lengths)
        slots += max(lengths) * len(lengths)
    return 1 - real / slots


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    inputs = common.prepare_inputs(args)
    config = common.round_config(args)
    from bench_judge import judge_batches
    from transformers import AutoConfig

    from spreadpref.dpo.logprobs import length_batches
    from spreadpref.models.loading import DTYPES
    from spreadpref.models.sampling import generation_batch_size, prompt_batches

    samples = common.read_jsonl(inputs["generations"])
    pairs = common.read_jsonl(inputs["pairs"])
    prompt_tokens = sum(len(s["prompt_ids"]) for s in samples)
    all_tokens = sum(len(s["prompt_ids"]) + len(s["reply_ids"]) for s in samples)
    k = config.generation.num_samples
    bs = config.train.per_device_batch_size
    grouped = [
        i
        for batch in length_batches(
            [len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in pairs], bs
        )
        for i in batch
    ]
    rng = random.Random(0)
    random_pads = []
    for _ in range(200):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        random_pads.append(training_padding(pairs, bs, order))
    lengths = [len(s["prompt_ids"]) + len(s["reply_ids"]) for s in samples]
    real, slots = padded(judge_batches(samples, config.judge.batch_size), lengths)

    # Generation: each batch runs until its longest reply; rows that stopped early still take a slot.
    by_prompt: dict[int, list[int]] = {}
    for s in samples:
        by_prompt.setdefault(s["prompt_index"], []).append(s["num_tokens"])
    prompt_lengths = {s["prompt_index"]: len(s["prompt_ids"]) for s in samples}
    indices = sorted(by_prompt)
    gen_real = gen_slots = 0
    prompt_pad = prompt_real = 0
    rows = [[0] * prompt_lengths[i] for i in indices]
    model_config, dtype = AutoConfig.from_pretrained(inputs["init"]), DTYPES[config.model.dtype]
    size = generation_batch_size(config.generation, model_config, dtype, rows, config.data.max_length)
    for batch in prompt_batches(rows, size):
        replies = [n for b in batch for n in by_prompt[indices[b]]]
        gen_real += sum(replies)
        gen_slots += max(replies) * len(replies)
        widths = [prompt_lengths[indices[b]] for b in batch]
        prompt_real += sum(widths)
        prompt_pad += max(widths) * len(widths)
    figures = {
        "samples": len(samples),
        "pairs": len(pairs),
        "prompt_share_of_scored_tokens": prompt_tokens / all_tokens,
        "shared_prefix_saving_upper_bound": prompt_tokens * (k - 1) / k / all_tokens,
        "train_padding_length_grouped": training_padding(pairs, bs, grouped),
        "train_padding_random_order_median": statistics.median(random_pads),
        "judge_padding": 1 - real / slots,
        "generation_slots_after_stop": 1 - gen_real / gen_slots,
        "generation_prompt_padding_sorted": 1 - prompt_real / prompt_pad,
        "cut_off_share": sum(s["finish_reason"] == "length" for s in samples) / len(samples),
        "mean_reply_tokens": statistics.mean(s["num_tokens"] for s in samples),
        "mean_prompt_tokens": statistics.mean(len(s["prompt_ids"]) for s in samples),
    }
    rows = [
        [name.replace("_", " "), common.format_cell(value, ".3f") if isinstance(value, float) else value]
        for name, value in figures.items()
    ]
    markdown = "### Shapes of the input round\n\n" + common.markdown_table(["figure", "value"], rows)
    common.write_report(args, "shapes", {"figures": figures}, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
