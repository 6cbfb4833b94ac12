"""Summed log-probabilities of reply tokens, for batches of tokenised pairs.

The language-model head is asked only for the positions that predict a reply token (transformers'
``logits_to_keep`` with a boolean mask), so prompt positions cost no vocabulary projection, and the
log-softmax is taken in chunks of positions: no float32 ``[batch, length, vocab]`` tensor exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from spreadpref.config import Config
from spreadpref.data.tokenize import TokenizedPair
from spreadpref.models.loading import BASE_IDENTITY, WEIGHTS_IDENTITY, keeps_float32_master_weights
from spreadpref.runtime.progress import track

LOGIT_CHUNK = 512  # positions per log-softmax chunk: 512 x 49K x 4 bytes = 100 MB at most


@dataclass
class PairLogps:
    """Per-pair results, in the order of the pairs given."""

    chosen: torch.Tensor  # summed log-prob of the chosen reply
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # reply token counts
    rejected_tokens: torch.Tensor

    @property
    def chosen_mean(self) -> torch.Tensor:
        return self.chosen / self.chosen_tokens.clamp(min=1)

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_tokens.clamp(min=1)


def collate_sequences(
    prompts: Sequence[list[int]], replies: Sequence[list[int]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded prompt+reply rows with a mask of the reply tokens."""
    sequences = [p + r for p, r in zip(prompts, replies)]
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (seq, prompt) in enumerate(zip(sequences, prompts)):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
        response_mask[row, len(prompt) : len(seq)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def collate_pairs(pairs: Sequence[TokenizedPair | dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack prompt+chosen rows, then prompt+rejected rows, right-padded, with a reply-token mask."""
    items = [p if isinstance(p, dict) else vars(p) for p in pairs]
    prompts = [it["prompt_ids"] for it in items] * 2
    replies = [it["chosen_ids"] for it in items] + [it["rejected_ids"] for it in items]
    batch = collate_sequences(prompts, replies, pad_token_id)
    batch["label"] = torch.tensor([float(it.get("label", 1.0)) for it in items])
    batch["weight"] = torch.tensor([float(it.get("weight", 1.0)) for it in items])
    refs = [(it.get("ref_chosen_logps"), it.get("ref_rejected_logps")) for it in items]
    if all(c is not None and r is not None for c, r in refs):
        batch["ref_chosen_logps"] = torch.tensor([c for c, _ in refs], dtype=torch.float32)
        batch["ref_rejected_logps"] = torch.tensor([r for _, r in refs], dtype=torch.float32)
    return batch


@dataclass
class ReplyLogits:
    """Logits at the positions that predict reply tokens, flattened row by row."""

    logits: torch.Tensor  # (reply tokens in the batch, vocab)
    targets: torch.Tensor  # the reply token each position predicts
    rows: torch.Tensor  # which sequence each position belongs to
    num_rows: int


def reply_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> ReplyLogits:
    # Position p predicts token p + 1: keep the positions whose next token is a reply token.
    keep = torch.zeros_like(response_mask)
    keep[:, :-1] = response_mask[:, 1:]
    targets = input_ids[:, 1:][response_mask[:, 1:]]
    logits = _reply_logits(model, input_ids, attention_mask, keep)
    rows = keep.nonzero(as_tuple=True)[0]
    return ReplyLogits(logits, targets, rows, input_ids.shape[0])


def sum_by_row(values: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    out = torch.zeros(num_rows, dtype=values.dtype, device=values.device)
    return out.index_add(0, rows, values)


def sequence_logps(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of the reply tokens of every row, and the number of reply tokens."""
    sums, _ = sequence_logps_and_logits(model, input_ids, attention_mask, response_mask)
    return sums, response_mask.sum(dim=1)


def sequence_logps_and_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, ReplyLogits]:
    """Summed reply log-probs per row, plus the reply logits (for the DND detector)."""
    out = reply_logits(model, input_ids, attention_mask, response_mask)
    return sum_by_row(token_logps(out.logits, out.targets), out.rows, out.num_rows), out


def _reply_logits(model: torch.nn.Module, input_ids, attention_mask, keep: torch.Tensor) -> torch.Tensor:
    if supports_position_mask(model):
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False)
        logits = out.logits
        if logits.dim() == 2:
            return logits
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return logits[keep]


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def training_precision(config: Config) -> str:
    """The autocast of training forwards: ``train.mixed_precision``; else bf16 / fp16 when bfloat16 /
    float16 weights train as float32 master weights (they compute in their own dtype either way)."""
    if config.train.mixed_precision != "no":
        return config.train.mixed_precision
    if keeps_float32_master_weights(config.model):
        return {"bfloat16": "bf16", "float16": "fp16"}[config.model.dtype]
    return "no"


def forward_precision(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast as the trainer's forward runs it (``"bf16"``, ``"fp16"``), or nothing (``"no"``).

    Log-probs that serve as a DPO reference must be computed under the same precision as the
    training forward, or the round starts from a reference that is not the policy (z != 0 at step 1).
    """
    if precision not in AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def token_logps(
    logits: torch.Tensor, targets: torch.Tensor, reference_logits: torch.Tensor | None = None, lam: float = 0.0
) -> torch.Tensor:
    """log softmax(h)[y_t] at every reply position, in chunks of positions (no full float32 copy).

    With ``reference_logits`` the logits are DND's extrapolation h = (1 + lam) h_policy - lam h_ref.
    """
    pieces = []
    for start in range(0, logits.shape[0], LOGIT_CHUNK):
        stop = start + LOGIT_CHUNK
        block = logits[start:stop].float()
        if reference_logits is not None:
            block = (1 + lam) * block - lam * reference_logits[start:stop].float()
        picked = block.gather(-1, targets[start:stop, None]).squeeze(-1)
        pieces.append(picked - torch.logsumexp(block, dim=-1))
    if not pieces:
        return logits.new_zeros(0, dtype=torch.float32)
    return torch.cat(pieces)


_MASK_SUPPORT: dict[type, bool] = {}


def supports_position_mask(model: torch.nn.Module) -> bool:
    """Whether the model's forward understands a boolean ``logits_to_keep`` (transformers >= 5)."""
    core = unwrap(model)
    kind = type(core)
    if kind not in _MASK_SUPPORT:
        try:
            source = inspect.getsource(kind.forward)
        except (OSError, TypeError):
            source = ""
        _MASK_SUPPORT[kind] = "slice_logits_to_keep" in source
    return _MASK_SUPPORT[kind]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP / DeepSpeed / peft wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            break
    return model


@contextlib.contextmanager
def adapter_disabled(model: torch.nn.Module) -> Iterator[None]:
    """For a LoRA policy, the reference is the base model: the same weights with the adapter off."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield
    else:
        yield


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory peaks show up early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def score_sequences(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    replies: Sequence[list[int]],
    pad_token_id: int,
    batch_size: int = 16,
    description: str = "Scoring",
    as_reference: bool = False,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """No-grad summed log-prob of each reply given its prompt, and its token count, in input order.

    Sequences are batched by length; ``as_reference`` switches a LoRA adapter off (the base model). A model
    loaded frozen from disk (``load_for_inference``) that scored the same sequences the same way before in
    this process gives its remembered result: the same batches would give the same numbers again.
    """
    key = _memo_key(model, prompts, replies, pad_token_id, batch_size, as_reference)
    if key is not None and key in _SCORE_MEMO:
        _SCORE_MEMO.move_to_end(key)
        sums, counts = _SCORE_MEMO[key]
        return sums.clone(), counts.clone()
    sums, counts = _score_sequences(
        model, prompts, replies, pad_token_id, batch_size, description, as_reference, progress
    )
    if key is not None:
        _SCORE_MEMO[key] = (sums.clone(), counts.clone())
        while len(_SCORE_MEMO) > SCORE_MEMO_ENTRIES:
            _SCORE_MEMO.popitem(last=False)
    return sums, counts


def _score_sequences(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    replies: Sequence[list[int]],
    pad_token_id: int,
    batch_size: int,
    description: str,
    as_reference: bool,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(model.parameters()).device
    n = len(prompts)
    sums = torch.zeros(n, dtype=torch.float64)
    counts = torch.zeros(n, dtype=torch.long)
    lengths = [len(p) + len(r) for p, r in zip(prompts, replies)]
    was_training = model.training
    model.eval()
    context = adapter_disabled(model) if as_reference else contextlib.nullcontext()
    try:
        with context:
            for indices in track(length_batches(lengths, batch_size), description, enabled=progress):
                batch = collate_sequences([prompts[i] for i in indices], [replies[i] for i in indices], pad_token_id)
                batch_sums, batch_counts = sequence_logps(
                    model, *(batch[key].to(device) for key in ("input_ids", "attention_mask", "response_mask"))
                )
                index = torch.tensor(indices)
                sums[index] = batch_sums.double().cpu()
                counts[index] = batch_counts.cpu()
    finally:
        model.train(was_training)
    return sums, counts


# The judge and the guard score the same human pairs with the same frozen models round after round (pi_init
# every round, pi_{i-1} once by the guard and again by the next judge): a few dozen results, kept per process.
SCORE_MEMO_ENTRIES = 32
_SCORE_MEMO: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()


def clear_score_memo() -> None:
    _SCORE_MEMO.clear()


def _memo_key(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    replies: Sequence[list[int]],
    pad_token_id: int,
    batch_size: int,
    as_reference: bool,
) -> str | None:
    """What a scoring pass's numbers depend on: the weights on disk (None for a model not loaded frozen from
    disk, such as one being trained: never remembered), the adapter on or off, the batching, the device, dtype,
    autocast and attention kernel, and the token ids."""
    identity = getattr(model, BASE_IDENTITY if as_reference else WEIGHTS_IDENTITY, None)
    if identity is None:
        return None
    parameter = next(model.parameters())
    device = parameter.device.type
    autocast = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device)
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    digest = hashlib.sha256(
        repr((identity, as_reference, pad_token_id, batch_size, device, parameter.dtype, autocast, attention)).encode()
    )
    for prompt, reply in zip(prompts, replies):
        digest.update(repr((prompt, reply)).encode())
    return digest.hexdigest()


def score_pairs(
    model: torch.nn.Module,
    pairs: Sequence[TokenizedPair],
    pad_token_id: int,
    batch_size: int = 8,
    description: str = "Scoring pairs",
    as_reference: bool = False,
    progress: bool = True,
) -> PairLogps:
    """No-grad log-probs of both replies of every pair, batched by length."""
    prompts = [p.prompt_ids for p in pairs] * 2
    replies = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    sums, counts = score_sequences(
        model, prompts, replies, pad_token_id, batch_size * 2, description, as_reference, progress
    )
    n = len(pairs)
    return PairLogps(sums[:n], sums[n:], counts[:n], counts[n:])
