import pytest
import yaml
from repo_paths import ROOT

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

    from spreadpref.config import reference_markdown

    doc = ROOT / "docs" / "configuration.md"
    assert doc.read_text().strip() == reference_markdown().strip(), (
        "docs/configuration.md is stale: run `spreadpref config --reference > docs/configuration.md`"
    )


def list_keys(model=None, prefix=""):
    """Every key of the schema whose type admits a list, with the list's element type."""
    import types
    import typing

    from pydantic import BaseModel

    from spreadpref.config import Config

    model = model or Config
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += list_keys(annotation, f"{prefix}{name}.")
            continue
        options = (
            typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
        )
        for option in (annotation, *options):
            if typing.get_origin(option) is list:
                found.append((f"{prefix}{name}", typing.get_args(option)[0]))
    return found


SAMPLE_ITEMS = {str: ("q_proj", "v_proj"), int: (4, 8), float: (0.5, 0.25)}


def test_the_schema_has_the_list_keys_this_test_knows():
    keys = {key for key, _ in list_keys()}
    assert {"model.lora.target_modules", "train.report_to", "refine.lambdas", "loop.prompts_per_round"} <= keys


@pytest.mark.parametrize(("key", "item"), list_keys())
@pytest.mark.parametrize("form", ["[{a},{b}]", "[{a}, {b}]", "[ {a} , {b} ]"])
def test_every_list_key_parses_from_the_command_line(key, item, form):
    a, b = SAMPLE_ITEMS[item]
    if key == "train.report_to":
        a, b = "tensorboard", "none"
    config = load_config(None, [f"{key}={form.format(a=a, b=b)}"])
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    assert value == [a, b]


def test_one_value_for_a_list_key_is_a_list_of_one_and_a_string_stays_a_string_where_allowed():
    config = load_config(None, ["train.report_to=tensorboard", "model.lora.target_modules=all-linear"])
    assert config.train.report_to == ["tensorboard"] and config.model.lora.target_modules == "all-linear"


@pytest.mark.parametrize(
    ("overrides", "round_index", "expected"),
    [
        ([], 1, "π_0 vs π_init"),
        ([], 3, "π_2 vs π_init"),
        (["judge.reference=previous", "loop.keep_models=3"], 3, "π_2 vs π_1"),
        (["judge.reference=previous", "loop.keep_models=3"], 1, "π_0 vs π_init"),
        (["judge.reference=my-org/base"], 2, "π_1 vs base my-org/base"),
        (["judge.reference=/models/runs/base"], 1, "π_0 vs base runs/base"),
        (["judge.policy=seed", "judge.reference=none"], 2, "π_0 vs no reference"),
        (["judge.base=my-org/base", "judge.base_weight=0.5"], 1, "π_0 vs π_init^0.5·my-org/base^0.5"),
        (["judge.base=my-org/base"], 1, "π_0 vs base my-org/base"),
        (["judge.kind=verifier", "refine.enabled=false"], 1, "verifier"),
    ],
)
def test_the_judge_is_described_in_the_papers_names(overrides, round_index, expected):
    assert load_config(None, overrides).judge.describe(round_index) == expected


def test_a_flat_trl_style_yaml_is_answered_with_the_spreadpref_keys(tmp_path):
    path = tmp_path / "trl.yaml"
    path.write_text("model_name_or_path: my/model\nlearning_rate: 5.0e-7\nbeta: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "TRL keys" in message and "learning_rate -> train.learning_rate" in message
    assert "beta -> train.beta" in message and "model_name_or_path -> model.name_or_path" in message


def test_every_trl_key_maps_to_a_real_setting():
    from spreadpref.config import TRL_KEYS, flat_settings

    keys = set(flat_settings(Config()))
    assert {target for target in TRL_KEYS.values()} <= keys
