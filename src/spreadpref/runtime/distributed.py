"""The process group, when spreadpref runs under ``accelerate launch`` (one process otherwise).

Thin wrappers over accelerate's ``PartialState``: which process this is, the device it owns, a
barrier, and a rule for splitting units of work so that the result never depends on how many
processes there are (unit ``i`` goes to process ``i % world``; each unit is seeded by its index).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list


def launched_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@lru_cache(maxsize=1)
def _state() -> Any:
    # Without a GPU, processes talk over gloo on the CPU (accelerate needs to be told).
    return PartialState(cpu=not torch.cuda.is_available())


def rank() -> int:
    return _state().process_index if launched_distributed() else 0


def world_size() -> int:
    return _state().num_processes if launched_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if launched_distributed():
        _state().wait_for_everyone()


def local_device() -> torch.device:
    """The device this process owns (cuda:<local rank> under a multi-GPU launch)."""
    return _state().device


def my_units(count: int) -> list[int]:
    """Indices of the units of work this process does: a fixed interleaving by index."""
    return list(range(rank(), count, world_size()))


def broadcast_object(value: Any) -> Any:
    """The main process's value, on every process."""
    if not launched_distributed():
        return value

    box = [value if is_main() else None]
    broadcast_object_list(box, from_process=0)
    return box[0]
