"""A policy loaded to be trained, with the facts every pass over it must agree on.

The reference log-probs, the check of a given reference, the held-out scores and the Trainer's own
forwards must all run in the same numerics, or the margins are not zero before the first update. Those
facts (device, autocast, float32 master weights, LoRA or not) are decided once, when the policy is loaded,
and travel with it instead of being asked of the configuration again at each pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from spreadpref.config import Config
from spreadpref.dpo.logprobs import forward_precision, training_precision
from spreadpref.models.loading import DTYPES, disable_dropout, is_peft_model, load_model, resolve_device


@dataclass
class TrainingPolicy:
    model: torch.nn.Module
    precision: str  # the autocast of the training forwards: "no", "bf16" or "fp16"
    float32_masters: bool  # bfloat16 / float16 weights held as float32 while training
    saved_dtype: torch.dtype  # the configured dtype, in which the trained weights are saved

    @classmethod
    def of(cls, config: Config, model: torch.nn.Module) -> TrainingPolicy:
        """The facts of ``model`` as loaded for training under ``config``."""
        saved_dtype = DTYPES[config.model.dtype]
        masters = saved_dtype != torch.float32 and next(model.parameters()).dtype == torch.float32
        return cls(model, training_precision(config), masters, saved_dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_peft(self) -> bool:
        return is_peft_model(self.model)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The training forwards' precision, for a pass outside the Trainer."""
        return forward_precision(self.precision, self.device)


def load_training_policy(config: Config, start_model: str | None = None) -> TrainingPolicy:
    """``start_model`` (default: model.name_or_path) loaded for training, dropout off if configured, on its
    device."""
    model = load_model(config.model, path=start_model, for_training=True)
    if config.train.disable_dropout:
        disable_dropout(model)
    model.to(resolve_device(config.model.device))
    return TrainingPolicy.of(config, model)
