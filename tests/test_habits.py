"""Habits users bring: their own chat template and its variables, named evaluation targets."""

import pytest

from spreadpref.config import ModelSettings, load_config
from spreadpref.data.tokenize import render_prompt_ids
from spreadpref.errors import ModelLoadError
from spreadpref.eval.evaluate import model_targets
from spreadpref.models.loading import load_tokenizer

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if brief %}Briefly: {% endif %}{% endif %}"
)
PROMPT = [{"role": "user", "content": "Name a colour."}]


def test_a_chat_template_from_a_string_or_a_file_with_its_variables(tiny_model_dir, tmp_path):
    plain = load_tokenizer(ModelSettings(name_or_path=str(tiny_model_dir), chat_template=TEMPLATE))
    assert plain.chat_template == TEMPLATE
    path = tmp_path / "template.jinja"
    path.write_text(TEMPLATE)
    brief = load_tokenizer(
        ModelSettings(name_or_path=str(tiny_model_dir), chat_template=str(path), chat_template_kwargs={"brief": True})
    )
    assert plain.decode(render_prompt_ids(plain, PROMPT)).endswith("assistant\n")
    assert brief.decode(render_prompt_ids(brief, PROMPT)).endswith("Briefly: ")


@pytest.mark.parametrize("value", ["missing.jinja", "not a template"])
def test_a_bad_chat_template_is_named(tiny_model_dir, value):
    with pytest.raises(ModelLoadError, match="model.chat_template"):
        load_tokenizer(ModelSettings(name_or_path=str(tiny_model_dir), chat_template=value))


def test_evaluation_targets_can_be_named(tmp_path):
    models = model_targets(["base=org/model", "mine=runs/x/model", str(tmp_path)], load_config(None))
    assert [(m.name, m.path) for m in models[:2]] == [("base", "org/model"), ("mine", "runs/x/model")]
    assert models[2].name == tmp_path.name
