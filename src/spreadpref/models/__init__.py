"""Models as the pipeline uses them: loading (local, hub, the embedded default) and sampling replies.

- :mod:`~spreadpref.models.loading`: policies and tokenizers, dtype and device, LoRA, fingerprints.
- :mod:`~spreadpref.models.sampling`: K sampled replies per prompt in token space, resumable.
- :mod:`~spreadpref.models.vllm_backend`: the same rows from vLLM, in a subprocess.
"""

from spreadpref.models.loading import (
    load_for_inference,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_model_path,
)

__all__ = ["load_for_inference", "load_model", "load_tokenizer", "resolve_device", "resolve_model_path"]
