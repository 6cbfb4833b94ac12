"""Typed configuration: one section per concern, a YAML file plus dotted command-line overrides.

Overrides such as ``train.learning_rate=5e-7`` are converted to the field's declared type (the
reference implementation passed them on as strings). Unknown keys are rejected with the nearest
valid key, so a typo never silently falls back to a default.

The package by job: ``sections`` (model, data, training, generation), ``judge`` (the judge's settings),
``schema`` (refinement, the loop, evaluation, the hub and the whole ``Config``), ``loading`` (YAML files,
shipped profiles and overrides), ``describe`` (flat keys, changes, library checks, the reference page).
"""

from spreadpref.config.describe import (  # noqa: F401 - the package's one namespace
    _short_repr,
    changed_keys,
    check_library_settings,
    describe_changes,
    flat_settings,
    reference_markdown,
)
from spreadpref.config.judge import (  # noqa: F401 - the package's one namespace
    NAMED_JUDGE_POLICIES,
    NAMED_REFERENCES,
    CustomJudgeSettings,
    JudgeSettings,
    LLMJudgeSettings,
    RewardModelJudgeSettings,
    _short,
    url_port_problem,
)
from spreadpref.config.loading import (  # noqa: F401 - the package's one namespace
    DEFAULT_PROFILE,
    MAX_YAML_VALUES,
    TRL_KEYS,
    _accepts_list,
    _allows_none,
    _convert_override,
    _describe_validation_error,
    _dict_overrides,
    _expanded_size,
    _is_section_path,
    _read_yaml,
    _section_type,
    _set_override,
    _split_override,
    _type_name,
    _unknown_key_message,
    check_unknown_keys,
    default_profile_path,
    load_config,
    shipped_config,
    shipped_config_names,
    shipped_configs_dir,
)
from spreadpref.config.schema import (  # noqa: F401 - the package's one namespace
    Config,
    EvalJudgeSettings,
    EvalSettings,
    HubSettings,
    LoopSettings,
    RefineSettings,
)
from spreadpref.config.sections import (  # noqa: F401 - the package's one namespace
    AUTO_VLLM_MIN_PROMPTS,
    EMBEDDED_MODEL,
    ColumnMap,
    DataSettings,
    GenerationSettings,
    LoraSettings,
    ModelSettings,
    Section,
    TrainSettings,
)
