"""What every stage of a round gets: one typed context instead of long lists of arguments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from spreadpref.config import Config
from spreadpref.runtime.units import parts_directory


@dataclass(frozen=True)
class StageContext:
    """The settings, the tokenizer, the directory a stage writes into, and the round (0 outside the loop)."""

    config: Config
    tokenizer: PreTrainedTokenizerBase
    directory: Path
    round_index: int = 0

    def path(self, name: str) -> Path:
        return self.directory / name


def stage_paths(directory: Path, outputs: tuple[str, ...]) -> list[Path]:
    """Every path a stage owns in ``directory``: its declared outputs and their unmerged parts."""
    paths = []
    for name in outputs:
        paths.append(directory / name)
        if name.endswith(".jsonl"):
            paths.append(parts_directory(directory / name))
    return paths
