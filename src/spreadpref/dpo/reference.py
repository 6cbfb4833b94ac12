"""Reference log-probabilities of the DPO loss: from the data, the on-disk cache, or one no-grad pass.

The reference model never runs during training: its log-probs travel with each pair. They come
from the data (an SPA round: the judge's pi_{i-1} log-probs), from a cache keyed by the reference's
weights and the pairs' token ids, or from one pass before training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from spreadpref.config import Config
from spreadpref.data.tokenize import TokenizedPair
from spreadpref.dpo.logprobs import forward_precision, score_pairs
from spreadpref.dpo.policy import TrainingPolicy
from spreadpref.models.loading import (
    cache_root,
    load_for_inference,
    lora_is_identity,
    model_fingerprint,
)
from spreadpref.runtime.files import atomic_path
from spreadpref.runtime.fingerprint import fingerprint_rows
from spreadpref.runtime.progress import console


def compute_reference(
    config: Config, policy: TrainingPolicy, pairs: list[TokenizedPair], pad_token_id: int
) -> dict[str, Any]:
    """Reference log-probs for every pair: from the data, the cache, or one no-grad pass before training."""
    cache_dir = Path(config.train.ref_cache_dir) if config.train.ref_cache_dir else cache_root() / "ref_logps"
    # Under the training forward's precision: the reference at step 1 is then exactly the policy.
    precision, device = policy.precision, policy.device
    if config.train.reference_model:
        reference = load_for_inference(config.model, config.train.reference_model).to(device)
        with forward_precision(precision, device):
            info = fill_reference_logps(
                pairs, reference, pad_token_id, cache_dir, config.train.logprob_batch_size, precision=precision
            )
        del reference
        info["model"] = config.train.reference_model
        return info
    # The starting policy is the reference (pi_init in the seed stage): no second copy is loaded. A fresh LoRA
    # adapter adds nothing yet, so the reference is its base (adapter off, the same numbers); an adapter carried
    # on from the previous stage is part of the reference (pi_{i-1} = pi_init + that adapter).
    adapter_off = policy.is_peft and lora_is_identity(policy.model)
    with policy.autocast():
        info = fill_reference_logps(
            pairs,
            policy.model,
            pad_token_id,
            cache_dir,
            config.train.logprob_batch_size,
            as_adapter_off=adapter_off,
            precision=precision,
        )
    kind = " (LoRA adapter off)" if adapter_off else " (with its LoRA adapter)" if policy.is_peft else ""
    info["model"] = "starting policy" + kind
    return info


def pairs_fingerprint(pairs: Sequence[TokenizedPair]) -> str:
    return fingerprint_rows([pair.prompt_ids, pair.chosen_ids, pair.rejected_ids] for pair in pairs)


def fill_reference_logps(
    pairs: list[TokenizedPair],
    reference: torch.nn.Module,
    pad_token_id: int,
    cache_dir: Path | None,
    batch_size: int,
    as_adapter_off: bool = False,
    precision: str = "no",
) -> dict[str, Any]:
    """Give every pair without reference log-probs its values, from the cache or one no-grad pass."""
    missing = [p for p in pairs if p.ref_chosen_logps is None or p.ref_rejected_logps is None]
    info: dict[str, Any] = {
        "pairs": len(pairs),
        "from_data": len(pairs) - len(missing),
        "computed": 0,
        "cache_hit": False,
        "cache_file": None,
    }
    if not missing:
        return info
    # A LoRA reference is the base model: the adapter weights must not change the key.
    skip = "lora_" if as_adapter_off else None
    key = f"{model_fingerprint(reference, skip)}-{pairs_fingerprint(missing)}"
    if precision != "no":
        key += f"-{precision}"  # autocast changes the values
    cache_file = cache_dir / f"{key}.safetensors" if cache_dir else None
    info["cache_file"] = str(cache_file) if cache_file else None
    cached = read_cache_entry(cache_file, len(missing)) if cache_file is not None else None
    if cached is not None:
        chosen, rejected = cached
        info["cache_hit"] = True
    else:
        scored = score_pairs(
            reference, missing, pad_token_id, batch_size, description="Reference log-probs", as_reference=as_adapter_off
        )
        chosen, rejected = scored.chosen, scored.rejected
        info["computed"] = len(missing)
        if cache_file is not None:
            with atomic_path(cache_file) as tmp:
                save_file({"chosen": chosen.contiguous(), "rejected": rejected.contiguous()}, str(tmp))
    for pair, c, r in zip(missing, chosen.tolist(), rejected.tolist()):
        pair.ref_chosen_logps, pair.ref_rejected_logps = c, r
    return info


def read_cache_entry(cache_file: Path, count: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A cache entry's (chosen, rejected) log-probs, or None when it is missing or damaged (then it is deleted
    and recomputed: the cache only saves time, it never holds anything that cannot be made again)."""
    if not cache_file.is_file():
        return None
    try:
        tensors = load_file(str(cache_file))
        chosen, rejected = tensors["chosen"], tensors["rejected"]
        if (
            chosen.shape != (count,)
            or rejected.shape != (count,)
            or not (chosen.isfinite().all() and rejected.isfinite().all())
        ):
            raise ValueError("wrong shape or non-finite values")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        console.print(
            f"[yellow]The reference cache entry {cache_file} is damaged ({type(err).__name__}); recomputing it.[/]"
        )
        cache_file.unlink(missing_ok=True)
        return None
    return chosen, rejected
