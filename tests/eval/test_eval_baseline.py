"""`spreadpref eval` on a trained model: its own tokenizer, and the model it was trained from as the baseline."""

from helpers import tiny_train_overrides
from typer.testing import CliRunner

from spreadpref.cli import app
from spreadpref.config import load_config
from spreadpref.eval.evaluate import default_baseline, own_tokenizer, trained_from
from spreadpref.testing import make_tiny_model_dir

runner = CliRunner()


def test_a_trained_model_is_compared_with_the_model_it_was_trained_from(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "trained"
    result = runner.invoke(app, ["train", *tiny_train_overrides(tiny_model_dir, pairs_file, out)])
    assert result.exit_code == 0, result.output
    assert trained_from(out / "model") == str(tiny_model_dir)
    config = default_baseline(load_config(None), [str(out / "model")])  # model.name_or_path left at the default
    assert config.model.name_or_path == str(tiny_model_dir)
    # A model set on purpose is respected.
    other = load_config(None, [f"model.name_or_path={tmp_path / 'x'}"])
    assert default_baseline(other, [str(out / "model")]).model.name_or_path == str(tmp_path / "x")


def test_each_model_answers_with_its_own_tokenizer(tmp_path, tiny_tokenizer):
    from spreadpref.testing import make_tiny_tokenizer

    model = make_tiny_model_dir(tmp_path / "m")
    make_tiny_tokenizer(vocab_size=300).save_pretrained(model)  # its own, different from the fallback
    config = load_config(None)
    assert len(own_tokenizer(config, str(model), tiny_tokenizer)) != len(tiny_tokenizer)
    assert own_tokenizer(config, "some/hub-id", tiny_tokenizer) is tiny_tokenizer
