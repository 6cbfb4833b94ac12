"""Safe by default: no remote code, no pickle artifacts, no secrets in outputs, no writes outside the run."""

import json

import pytest
from harness import overrides, write_loop_data

from spreadpref.config import ModelSettings, load_config
from spreadpref.spa.loop import run

PLANTED = "sk-planted-secret-0123456789abcdef"
ALLOWED_SUFFIXES = {".png", ".json", ".jsonl", ".yaml", ".safetensors", ".jinja", ".txt", ".md", ".lock"}  # .lock: JSON


@pytest.fixture(scope="module")
def hostile_run(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("safety")
    seed, prompts = write_loop_data(base / "data")
    # Ids that look like paths must never become paths.
    rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["id"] = f"../../escape-{i}" if i % 2 else f"/tmp/absolute-{i}"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = {p for p in base.parent.rglob("*")}
    mp = pytest.MonkeyPatch()
    for name in ("OPENAI_API_KEY", "SPREADPREF_JUDGE_API_KEY", "HF_TOKEN", "WANDB_API_KEY"):
        mp.setenv(name, PLANTED)
    mp.setenv("SPREADPREF_CACHE", str(base / "cache"))  # module scope: the per-test cache is not set yet
    out = base / "run"
    try:
        run(load_config(None, overrides(tiny_model_dir, seed, prompts, out)))
    finally:
        mp.undo()
    after = {p for p in base.parent.rglob("*")}
    return {"out": out, "base": base, "new_paths": after - before}


def test_api_keys_from_the_environment_never_reach_the_run_directory(hostile_run):
    for path in hostile_run["out"].rglob("*"):
        if path.is_file():
            assert PLANTED.encode() not in path.read_bytes(), f"the planted key leaked into {path}"


def test_dataset_ids_cannot_make_the_tool_write_elsewhere(hostile_run):
    outside = [p for p in hostile_run["new_paths"] if not p.is_relative_to(hostile_run["base"])]
    assert outside == []
    assert not any("escape" in p.name or "absolute" in p.name for p in hostile_run["new_paths"])


def test_no_pickle_artifacts_outside_trainer_checkpoints(hostile_run):
    for path in hostile_run["out"].rglob("*"):
        if path.is_file() and "checkpoints" not in path.parts:
            assert path.suffix in ALLOWED_SUFFIXES, f"{path} is not a safe format"


def test_remote_code_is_off_unless_asked(tiny_model_dir, monkeypatch):
    import transformers

    from spreadpref.models.loading import load_model, load_tokenizer

    seen = []
    real_model, real_tokenizer = (
        transformers.AutoModelForCausalLM.from_pretrained,
        transformers.AutoTokenizer.from_pretrained,
    )

    def spy_model(*args, **kwargs):
        seen.append(("model", kwargs.get("trust_remote_code")))
        return real_model(*args, **kwargs)

    def spy_tokenizer(*args, **kwargs):
        seen.append(("tokenizer", kwargs.get("trust_remote_code")))
        return real_tokenizer(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy_tokenizer)
    load_model(ModelSettings(name_or_path=str(tiny_model_dir)))
    load_tokenizer(ModelSettings(name_or_path=str(tiny_model_dir)))
    load_model(ModelSettings(name_or_path=str(tiny_model_dir), trust_remote_code=True))
    assert seen == [("model", False), ("tokenizer", False), ("model", True)]


def test_every_error_message_masks_secrets_whatever_echoes_them(monkeypatch, capsys):
    import typer

    from spreadpref import cli
    from spreadpref.errors import SpreadprefError
    from spreadpref.runtime.secrets import redact, register_secret

    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    register_secret("sk-registered-key-789")
    assert redact("token hf_abcdefghijklmnop and sk-registered-key-789") == "token *** and ***"
    assert redact("short") == "short"

    def leaky():
        raise SpreadprefError("the server said: bad token hf_abcdefghijklmnop (sk-registered-key-789)")

    def buggy():
        raise RuntimeError("request failed with header Bearer sk-registered-key-789")

    for action in (leaky, buggy):
        with pytest.raises(typer.Exit):
            cli._run(action)
        err = capsys.readouterr().err
        assert "hf_abcdefghijklmnop" not in err and "sk-registered-key-789" not in err and "***" in err
