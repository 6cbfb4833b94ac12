import pytest
import yaml

from spreadpref.config import Config, load_config
from spreadpref.errors import ConfigError


def test_defaults_follow_the_method():
    config = Config()
    assert config.train.beta == 0.1
    assert config.train.learning_rate == 5e-7
    assert config.generation.temperature == 0.7 and config.generation.num_samples == 2
    assert config.refine.alpha == 0.1 and config.refine.quantile == 0.1
    assert config.refine.lambdas == [0.5, 0.25, 0.125]
    assert config.judge.reference == "initial"


@pytest.mark.parametrize(
    "override, path, expected",
    [
        ("train.learning_rate=5e-7", ("train", "learning_rate"), 5e-7),
        ("train.beta=0.05", ("train", "beta"), 0.05),
        ("train.num_epochs=1", ("train", "num_epochs"), 1.0),
        ("train.per_device_batch_size=4", ("train", "per_device_batch_size"), 4),
        ("model.lora.enabled=true", ("model", "lora", "enabled"), True),
        ("train.report_to=[tensorboard,wandb]", ("train", "report_to"), ["tensorboard", "wandb"]),
        ("data.limit=null", ("data", "limit"), None),
        ("model.name_or_path=123", ("model", "name_or_path"), "123"),
        ("data.system_prompt=You are terse.", ("data", "system_prompt"), "You are terse."),
    ],
)
def test_overrides_arrive_with_the_field_type(override, path, expected):
    config = load_config(None, [override])
    value = config
    for part in path:
        value = getattr(value, part)
    assert value == expected
    assert type(value) is type(expected)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML reads "5e-7" as a string; the schema must still make it a float.
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 5e-7\n")
    assert load_config(path).train.learning_rate == pytest.approx(5e-7)


def test_override_beats_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  beta: 0.2\n")
    assert load_config(path, ["train.beta=0.3"]).train.beta == 0.3


def test_unknown_key_names_nearest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rat: 1.0e-5\n")
    with pytest.raises(ConfigError, match=r"train\.learning_rat.*learning_rate"):
        load_config(path)
    with pytest.raises(ConfigError, match="did you mean 'beta'"):
        load_config(None, ["train.betta=0.1"])
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config(None, ["trian.beta=0.1"])


def test_wrong_type_is_explained():
    with pytest.raises(ConfigError, match=r"train\.beta=.*abc"):
        load_config(None, ["train.beta=abc"])
    with pytest.raises(ConfigError, match="max_prompt_length"):
        load_config(None, ["data.max_prompt_length=600", "data.max_length=512"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.beta"])


def test_non_mapping_yaml_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["train.learning_rate=3e-6", "model.lora.r=8"])
    config.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["learning_rate"] == 3e-6


def test_configuration_reference_is_up_to_date():
    from pathlib import Path

    from spreadpref.config import reference_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text().strip() == reference_markdown().strip(), (
        "docs/configuration.md is stale: run `spreadpref config --reference > docs/configuration.md`"
    )
