"""Checkpoint I/O of a DPO stage: resume from the newest complete Trainer checkpoint, and write the
trained model as ``save_pretrained`` directories, each replaced in one rename."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback

from spreadpref.config import Config
from spreadpref.models.loading import is_peft_model
from spreadpref.runtime import distributed
from spreadpref.runtime.files import atomic_directory, atomic_write_json, temporary_name
from spreadpref.runtime.fingerprint import file_digest
from spreadpref.runtime.layout import ADAPTER_DIRECTORY, MODEL_DIRECTORY
from spreadpref.runtime.progress import console

FILE_LIST = "spreadpref-files.json"  # in each checkpoint: every file's size and hash, written once it is complete
# Beside the checkpoints: this spreadpref writes a FILE_LIST into every checkpoint it saves, so one without it was
# cut off between the Trainer's save and the list (a Ctrl-C, a kill), not made by an older version.
LISTED_MARKER = "spreadpref-checkpoints.json"


class RecordCheckpointFiles(TrainerCallback):
    """After Trainer saved a checkpoint, record each file's size and content hash, so that a truncated, missing
    or replaced file (a disk that filled, a copy that stopped, a file from another run) is found before resuming
    from it. Hashing reads the checkpoint once more: about a second per GB."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            atomic_write_json(Path(args.output_dir) / LISTED_MARKER, {"file_lists": FILE_LIST})

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            files = {
                str(path.relative_to(checkpoint)): {"bytes": path.stat().st_size, "sha256": file_digest(path)}
                for path in sorted(checkpoint.rglob("*"))
                if path.is_file() and path.name != FILE_LIST
            }
            atomic_write_json(checkpoint / FILE_LIST, files)


def checkpoint_damage(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None when it is complete."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "it was interrupted while being saved"
    listing = checkpoint / FILE_LIST
    if not listing.is_file():
        if (checkpoint.parent / LISTED_MARKER).is_file():
            return f"it was interrupted after the Trainer saved it but before {FILE_LIST} recorded its files"
        return None  # written by an older spreadpref, or by Trainer alone: the state file is all we can check
    try:
        recorded_files = json.loads(listing.read_text())
    except (OSError, ValueError):
        return f"its {FILE_LIST} is unreadable"
    for name, recorded in recorded_files.items():
        size, digest = (recorded, None) if isinstance(recorded, int) else (recorded["bytes"], recorded["sha256"])
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, not the {size} it was saved with"
        if digest is not None and file_digest(path) != digest:  # lists from older versions hold sizes only
            return f"{name} is not the file that was saved (its content changed)"
    return None


def last_checkpoint(directory: Path) -> str | None:
    """The newest complete Trainer checkpoint; a damaged one is removed and the one before it is used.

    Trainer writes a checkpoint in place and ``trainer_state.json`` last, so a checkpoint whose state file
    is missing or unreadable was interrupted; a file whose size differs from the recorded one is damaged.
    """
    if not directory.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in directory.iterdir()
        if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
    ]
    for _, checkpoint in sorted(found, reverse=True):
        damage = checkpoint_damage(checkpoint)
        if damage is None:
            return str(checkpoint)
        if distributed.is_main():
            console.print(f"[yellow]Removing {checkpoint}: {damage}; resuming from the checkpoint before it.[/]")
            shutil.rmtree(checkpoint, ignore_errors=True)
    return None


def save_outputs(config: Config, trainer: Trainer, tokenizer: PreTrainedTokenizerBase, out: Path) -> dict[str, str]:
    """Write the trained model as ``save_pretrained`` directories, each replaced in one rename.

    ``model`` names the policy the next stage continues from: the full model, or with LoRA the adapter
    (``adapter/``; pi_init plus this adapter is the policy, so no full copy is needed). ``merged`` is the full
    model with the adapter folded in, written only with ``model.lora.merge_on_save``.

    Every process takes part in ``trainer.save_model`` (ZeRO-3 and FSDP gather the weights there);
    only the main process writes files.
    """
    model = trainer.model
    if not is_peft_model(model):
        return {"model": save_with_trainer(trainer, tokenizer, out / MODEL_DIRECTORY)}
    outputs = {"adapter": save_with_trainer(trainer, tokenizer, out / ADAPTER_DIRECTORY)}
    outputs["model"] = outputs["adapter"]
    if config.model.lora.merge_on_save:
        if distributed.is_main():
            # In place (no second copy in memory): the adapter is saved already, and the stage is over.
            save_pretrained_atomically(model.merge_and_unload(), tokenizer, out / MODEL_DIRECTORY)
        distributed.barrier()
        outputs["merged"] = str(out / MODEL_DIRECTORY)
    return outputs


def save_pretrained_atomically(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, directory: Path) -> str:
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return str(directory)


def save_with_trainer(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, directory: Path) -> str:
    staging = directory.with_name(temporary_name(directory.name, "staging"))  # one name, shared by all processes
    if distributed.is_main():
        shutil.rmtree(staging, ignore_errors=True)
    distributed.barrier()
    trainer.save_model(str(staging))
    distributed.barrier()
    if distributed.is_main():
        # Trainer pickles its arguments next to the weights; a released model needs only safe formats.
        (staging / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(staging)
        with atomic_directory(directory) as tmp:
            tmp.rmdir()
            staging.rename(tmp)
    distributed.barrier()
    return str(directory)
