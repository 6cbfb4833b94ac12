"""Training benchmark: one epoch of spreadpref's round training against TRL's DPOTrainer.

Both sides train pi_0 (full fine-tuning) on the same pairs (the pairs of one round of
``spreadpref run``), with the same token ids, batch size, gradient accumulation, sequence limit,
optimizer, learning rate and schedule, for one epoch. spreadpref gets the reference log-probs from
the judge (as in a round: no reference forward); TRL computes them itself, either with its default
reference model (a second copy, a forward pass per batch) or with ``precompute_ref_log_probs`` (one
pass before training, counted). The timed region is the trainer's construction plus ``train()``,
with the policy already loaded; each side runs in its own subprocess.

Before timing, ``check`` verifies both compute the same thing: on a first batch where policy (pi_0)
and reference (pi_init) differ, the collated token ids are identical and the DPO losses agree.

    python benchmarks/bench_train.py [--model embedded|tiny] [--device cpu|cuda] [--bf16] [--reps 3]
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SIDES = ["spreadpref", "trl-default", "trl-precompute", "floor", "spreadpref-dnd"]
TRL_SIDES = {"trl-default", "trl-precompute"}
LOSS_TOLERANCE = 1e-4


def has_trl() -> bool:
    return importlib.util.find_spec("trl") is not None


# ---------------------------------------------------------------------------------------------
# Inputs: the round's pairs as token ids (TRL's tokenisation of their text when TRL is installed,
# so both sides train on identical ids), with the reference log-probs a judge would hand over.


def train_config(args):
    # One epoch on the round's pairs; the round's learning rate and the profile's batch settings.
    return common.round_config(args, ["train.max_steps=-1", "train.report_to=[none]", "train.logging_steps=1"])


def trl_dataset(pairs: list[dict[str, Any]]):
    import datasets

    return datasets.Dataset.from_list(
        [
            {
                "prompt": p["prompt"],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
            for p in pairs
        ]
    )


def one_epoch(config, learning_rate: float | None = None):
    """``config`` training one epoch (at ``learning_rate`` if given), as every side of the benchmark does."""
    update = {"num_epochs": 1.0, **({"learning_rate": learning_rate} if learning_rate is not None else {})}
    return config.model_copy(update={"train": config.train.model_copy(update=update)})


def trl_args(args, config, out_dir: str, precompute: bool):
    from trl import DPOConfig

    train = config.train
    return DPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=train.per_device_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        num_train_epochs=1,
        learning_rate=config.loop.learning_rate or train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=train.optimizer,
        beta=train.beta,
        loss_type=["sigmoid"],
        max_length=config.data.max_length,
        gradient_checkpointing=False,  # DPOConfig's default is True; spreadpref's is False
        bf16=args.bf16,  # DPOConfig's default is True; float32 on the CPU, as spreadpref
        fp16=False,
        use_cpu=args.device == "cpu",
        disable_dropout=True,
        precompute_ref_log_probs=precompute,
        # Pairs per pre-computation batch; TRL's default is the training batch size.
        precompute_ref_batch_size=(args.x_precompute_batch_size or train.logprob_batch_size * 2)
        if precompute
        else None,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        seed=config.seed + 1,
        dataloader_pin_memory=args.device == "cuda",
        disable_tqdm=True,
    )


def token_pairs(args, inputs: dict[str, Any]) -> Path:
    """The round's pairs as token ids with pi_0 (training) and pi_init (check) reference log-probs; cached."""
    path = Path(common.inputs_dir(args)) / ("pairs-trl-ids.jsonl" if has_trl() else "pairs-ids.jsonl")
    if not path.is_file():
        common.run_worker(__file__, "tokens", args)
    return path


def worker_tokens(args, inputs) -> dict[str, Any]:
    from spreadpref.data.tokenize import TokenizedPair
    from spreadpref.dpo.logprobs import score_pairs
    from spreadpref.models.loading import load_tokenizer

    config = train_config(args)
    tokenizer = load_tokenizer(config.model)
    pairs = common.read_jsonl(inputs["pairs"])
    rows = [
        {"id": p["id"], "prompt_ids": p["prompt_ids"], "chosen_ids": p["chosen_ids"], "rejected_ids": p["rejected_ids"]}
        for p in pairs
    ]
    if has_trl():
        from trl import DPOTrainer

        with tempfile.TemporaryDirectory() as tmp:
            model = common.load_eval(inputs["pi0"], args)
            trainer = DPOTrainer(
                model=model,
                ref_model=common.load_eval(inputs["init"], args),
                args=trl_args(args, config, tmp, precompute=False),
                train_dataset=trl_dataset(pairs),
                processing_class=tokenizer,
            )
            for row, example in zip(rows, trainer.train_dataset):
                row.update(
                    prompt_ids=example["prompt_ids"],
                    chosen_ids=example["chosen_ids"],
                    rejected_ids=example["rejected_ids"],
                )
            del trainer, model
    token_pairs_ = [
        TokenizedPair(
            id=r["id"], prompt_ids=r["prompt_ids"], chosen_ids=r["chosen_ids"], rejected_ids=r["rejected_ids"]
        )
        for r in rows
    ]
    for key, path in (("pi0", inputs["pi0"]), ("init", inputs["init"])):
        scored = score_pairs(
            common.load_eval(path, args), token_pairs_, tokenizer.pad_token_id, config.train.logprob_batch_size
        )
        for row, c, r in zip(rows, scored.chosen.tolist(), scored.rejected.tolist()):
            row[f"{key}_chosen_logps"], row[f"{key}_rejected_logps"] = c, r
    path = Path(common.inputs_dir(args)) / ("pairs-trl-ids.jsonl" if has_trl() else "pairs-ids.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"pairs": len(rows)}


def load_token_pairs(path: Path, reference: str = "pi0"):
    from spreadpref.data.tokenize import TokenizedPair

    return [
        TokenizedPair(
            id=r["id"],
            prompt_ids=r["prompt_ids"],
            chosen_ids=r["chosen_ids"],
            rejected_ids=r["rejected_ids"],
            ref_chosen_logps=r[f"{reference}_chosen_logps"],
            ref_rejected_logps=r[f"{reference}_rejected_logps"],
        )
        for r in common.read_jsonl(path)
    ]


def count_tokens(pairs) -> int:
    return sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)


# ---------------------------------------------------------------------------------------------
# Workers


def load_policy(args, config, path: str):
    from spreadpref.models.loading import disable_dropout, load_model

    model = load_model(config.model, path=path, for_training=True)
    disable_dropout(model)
    return model.to(args.device)


def perturbed(model, scale: float = 0.02, seed: int = 0):
    """The model with seeded noise (``scale`` x each tensor's std) added: a policy far from its reference."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32).to(param.device)
            param.add_((scale * param.float().std() * noise).to(param.dtype))
    return model


def worker_check(args, inputs) -> dict[str, Any]:
    """Same ids, same loss: TRL and spreadpref on a first batch where policy and reference differ.

    The policy is pi_0 with seeded noise added (pi_0 of a 4-step seed stage is still close to
    pi_init), the reference pi_init.
    """
    import torch
    from trl import DPOTrainer

    from spreadpref.data.tokenize import TokenizedPair
    from spreadpref.dpo.logprobs import collate_pairs, score_pairs
    from spreadpref.dpo.train import build_trainer
    from spreadpref.models.loading import load_tokenizer

    config = train_config(args)
    tokenizer = load_tokenizer(config.model)
    pairs = common.read_jsonl(inputs["pairs"])
    ours = load_token_pairs(inputs["token_pairs"], reference="init")
    n = min(args.x_check_pairs, len(ours))
    with tempfile.TemporaryDirectory() as tmp:
        trl_trainer = DPOTrainer(
            model=perturbed(load_policy(args, config, inputs["pi0"])),
            ref_model=common.load_eval(inputs["init"], args),
            args=trl_args(args, config, tmp, precompute=False),
            train_dataset=trl_dataset(pairs[:n]),
            processing_class=tokenizer,
        )
        examples = [trl_trainer.train_dataset[i] for i in range(n)]
        trl_batch = trl_trainer.data_collator(examples)
        first = [
            TokenizedPair(
                **{
                    **vars(p),
                    "prompt_ids": e["prompt_ids"],
                    "chosen_ids": e["chosen_ids"],
                    "rejected_ids": e["rejected_ids"],
                }
            )
            for p, e in zip(ours[:n], examples)
        ]
        same_ids = all(vars(a) == vars(b) for a, b in zip(first, ours[:n]))
        trl_trainer.model.train()
        with torch.no_grad():
            trl_loss = trl_trainer.compute_loss(trl_trainer.model, {k: v.to(args.device) for k, v in trl_batch.items()})
        del trl_trainer
        policy = perturbed(load_policy(args, config, inputs["pi0"]))
        our_trainer = build_trainer(one_epoch(config), policy, tokenizer, first, Path(tmp) / "ours")
        batch = collate_pairs(first, tokenizer.pad_token_id)
        policy.train()
        with torch.no_grad():
            our_loss = our_trainer.compute_loss(policy, {k: v.to(args.device) for k, v in batch.items()})
    trl_ids = trl_batch["input_ids"]
    ids_equal = bool(trl_ids.shape == batch["input_ids"].shape and torch.equal(trl_ids, batch["input_ids"]))
    difference = abs(float(trl_loss) - float(our_loss))
    scored = score_pairs(policy, first, tokenizer.pad_token_id, n)
    logratios = [
        abs(c - p.ref_chosen_logps) + abs(r - p.ref_rejected_logps)
        for p, c, r in zip(first, scored.chosen.tolist(), scored.rejected.tolist())
    ]
    return {
        "pairs": n,
        "trl_loss": float(trl_loss),
        "spreadpref_loss": float(our_loss),
        "abs_difference": difference,
        "mean_abs_logratio": sum(logratios) / (2 * max(len(logratios), 1)),
        "tolerance": LOSS_TOLERANCE,
        "input_ids_equal": ids_equal,
        "ids_match_round_inputs": same_ids,
        "passed": bool(ids_equal and difference <= LOSS_TOLERANCE),
    }


def worker_train(side: str, args, inputs) -> dict[str, Any]:
    import torch
    from transformers import set_seed

    from spreadpref.models.loading import load_tokenizer

    config = train_config(args)
    tokenizer = load_tokenizer(config.model)
    pairs = load_token_pairs(inputs["token_pairs"])[: args.x_max_pairs]
    set_seed(config.seed + 1)
    policy = load_policy(args, config, inputs["pi0"])
    loaded_rss = common.peak_rss_gib()
    with tempfile.TemporaryDirectory() as tmp, common.Timer(args.device) as total:
        if side in ("spreadpref", "spreadpref-dnd"):
            from spreadpref.dpo.refine import Refinement
            from spreadpref.dpo.train import build_trainer

            refinement = None
            if side == "spreadpref-dnd":  # the default round: DND against a frozen copy of pi_0
                reference = common.load_eval(inputs["pi0"], args).requires_grad_(False)
                r = config.refine
                refinement = Refinement(r, lam=r.lam(1), reference=reference)
            trainer = build_trainer(
                one_epoch(config, config.loop.learning_rate),  # the round's rate, as TRL's side trains at
                policy,
                tokenizer,
                pairs,
                Path(tmp) / "checkpoints",
                refinement=refinement,
            )
        elif side in TRL_SIDES:
            from trl import DPOTrainer

            trainer = DPOTrainer(
                model=policy,
                args=trl_args(args, config, tmp, precompute=side == "trl-precompute"),
                train_dataset=trl_dataset(common.read_jsonl(inputs["pairs"])[: args.x_max_pairs]),
                processing_class=tokenizer,
            )
        else:
            trainer = None
        with common.Timer(args.device) as train_time:
            if trainer is not None:
                output = trainer.train()
                loss, steps = output.training_loss, output.global_step
            else:
                loss, steps = floor_epoch(args, config, policy, pairs, tokenizer.pad_token_id)
    rows = len(pairs)
    return {
        "seconds": total.seconds,
        "train_seconds": train_time.seconds,
        "setup_seconds": total.seconds - train_time.seconds,
        "pairs": rows,
        "tokens": count_tokens(pairs),
        "rate": rows / total.seconds,
        "loss": float(loss),
        "steps": int(steps),
        "loaded_rss_gib": loaded_rss,
        "threads": torch.get_num_threads(),
    }


def floor_epoch(args, config, policy, pairs, pad_token_id, reference=None) -> tuple[float, int]:
    """The straightforward floor: plain PyTorch, full logits, the same micro-batches, AdamW, no Trainer.

    With ``reference``, also a bare no-grad forward of it per micro-batch (what DND's detector needs).
    """
    import torch
    import torch.nn.functional as F

    from spreadpref.dpo.logprobs import collate_pairs, length_batches

    train = config.train
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=config.loop.learning_rate or train.learning_rate, weight_decay=train.weight_decay
    )
    policy.train()
    batches = length_batches([p.length for p in pairs], train.per_device_batch_size)
    accumulation = train.gradient_accumulation_steps
    losses, steps = [], 0
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16)
    for index, indices in enumerate(batches):
        batch = {k: v.to(args.device) for k, v in collate_pairs([pairs[i] for i in indices], pad_token_id).items()}
        with autocast:
            logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            if reference is not None:
                with torch.no_grad():
                    reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        token_logps = logps.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        sums = (token_logps * batch["response_mask"][:, 1:]).sum(-1)
        k = len(indices)
        z = (sums[:k] - batch["ref_chosen_logps"]) - (sums[k:] - batch["ref_rejected_logps"])
        loss = -F.logsigmoid(train.beta * z).mean()
        (loss / accumulation).backward()
        losses.append(float(loss))
        if (index + 1) % accumulation == 0 or index + 1 == len(batches):
            torch.nn.utils.clip_grad_norm_(policy.parameters(), train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    return sum(losses) / max(len(losses), 1), steps


# ---------------------------------------------------------------------------------------------
# Orchestration


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--check-pairs", dest="x_check_pairs", type=int, default=4, help="pairs in the equivalence check's batch"
    )
    p.add_argument(
        "--precompute-batch-size",
        dest="x_precompute_batch_size",
        type=int,
        default=None,
        help="pairs per batch of TRL's reference pre-computation (default: 16, spreadpref's no-grad batch "
        "of 8 pairs x 2; TRL's own default is the training batch size, 2)",
    )
    p.add_argument(
        "--max-pairs", dest="x_max_pairs", type=int, default=None, help="train on the first N pairs of the round only"
    )
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        common.setup_worker(args)
        inputs = common.prepare_inputs(args)
        inputs["token_pairs"] = str(
            Path(common.inputs_dir(args)) / ("pairs-trl-ids.jsonl" if has_trl() else "pairs-ids.jsonl")
        )
        if args.worker == "tokens":
            data = worker_tokens(args, inputs)
        elif args.worker == "check":
            data = worker_check(args, inputs)
        else:
            data = worker_train(args.worker, args, inputs)
        common.finish_worker(args, data)
        return 0

    inputs = common.prepare_inputs(args)
    token_pairs(args, inputs)
    sides = args.sides.split(",") if args.sides else list(SIDES)
    if not has_trl():
        print("trl is not installed (pip install -e '.[bench]'): the TRL sides and the check are skipped.")
        sides = [s for s in sides if s not in TRL_SIDES]
    check = common.run_worker(__file__, "check", args) if has_trl() else None
    if check is not None:
        print(f"Equivalence check: {json.dumps(check)}")
        if not check["passed"]:
            print("The equivalence check FAILED: the timings below compare different computations.")
    if args.reps == 0:  # --reps 0: the equivalence check alone
        return 0 if check is None or check["passed"] else 1
    results = common.alternate(sides, args.reps, lambda side, rep: common.run_worker(__file__, side, args))
    data, markdown = report(args, sides, results, check)
    common.write_report(args, "train", data, markdown)
    return 0 if check is None or check["passed"] else 1


def report(args, sides, results, check) -> tuple[dict[str, Any], str]:
    rates = {s: [r["rate"] for r in results[s]] for s in sides}
    # On a GPU the memory that matters is the device's: the verdict and the table use it there.
    memory = "peak_cuda_gib" if args.device == "cuda" else "peak_rss_gib"
    stats = {}
    for side in sides:
        runs = results[side]
        stats[side] = {
            "pairs_per_second": common.summary(rates[side]),
            "seconds": common.summary([r["seconds"] for r in runs]),
            "setup_seconds": common.summary([r["setup_seconds"] for r in runs]),
            "peak_rss_gib": common.summary([r["peak_rss_gib"] for r in runs]),
            **({memory: common.summary([r[memory] for r in runs])} if memory != "peak_rss_gib" else {}),
            "loss": common.summary([r["loss"] for r in runs]),
        }
        if "spreadpref" in sides and side != "spreadpref":
            stats[side]["spreadpref_speedup"] = common.ratio(rates["spreadpref"], rates[side])
    targets = {"trl-default": 1.5, "trl-precompute": 1.1}
    rows = []
    for side in sides:
        s = stats[side]
        speed = s.get("spreadpref_speedup")
        target = targets.get(side)
        verdict = "–"
        if speed and target:
            memory_ok = stats["spreadpref"][memory]["median"] <= s[memory]["median"]
            verdict = ("met" if speed["median"] >= target and memory_ok else "missed") + f" (>= {target}x"
            verdict += ", memory " + ("<=" if memory_ok else ">") + " TRL)"
        rows.append(
            [
                side,
                common.spread(s["pairs_per_second"]),
                common.spread(s["seconds"]),
                common.spread(s["setup_seconds"]),
                common.spread(s[memory], ".2f"),
                common.format_cell(s["loss"]["median"], ".4f"),
                common.spread(speed) if speed else "–",
                verdict,
            ]
        )
    first = results[sides[0]][0]
    lines = [
        (
            f"### Training: one epoch on {first['pairs']} pairs ({first['tokens']} tokens per epoch), "
            f"{args.device}, {'bf16' if args.bf16 else 'float32'}, {args.reps} repetitions"
        ),
        "",
    ]
    if check is not None:
        lines += [
            (
                f"Equivalence check ({check['pairs']} pairs, policy pi_0 + 2% noise, reference pi_init): token ids equal: "
                f"{check['input_ids_equal']}; DPO loss TRL {check['trl_loss']:.6f} vs spreadpref "
                f"{check['spreadpref_loss']:.6f}, |difference| {check['abs_difference']:.2e} "
                f"(tolerance {check['tolerance']:g}): **{'passed' if check['passed'] else 'FAILED'}**. Mean "
                f"|log policy - log reference| per reply on that batch: {check['mean_abs_logratio']:.3f}."
            ),
            "",
        ]
    lines.append(
        common.markdown_table(
            [
                "side",
                "pairs/s median (min–max)",
                "seconds",
                "of which setup",
                "peak GPU GiB" if memory == "peak_cuda_gib" else "peak RSS GiB",
                "mean loss",
                "spreadpref speed-up (x)",
                "target",
            ],
            rows,
        )
    )
    return {"check": check, "sides": sides, "runs": results, "stats": stats}, "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
