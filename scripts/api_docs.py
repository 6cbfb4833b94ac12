"""Write docs/api.md from the docstrings and signatures of spreadpref's public functions.

python scripts/api_docs.py            # rewrite docs/api.md
python scripts/api_docs.py --check    # exit 1 when docs/api.md is out of date (the test suite runs this)
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"

# (section, [dotted names]): what a user calls, in the order they meet it.
PUBLIC = [
    ("Configuration", ["spreadpref.load_config", "spreadpref.config.shipped_config_names"]),
    ("Running SPA", ["spreadpref.run", "spreadpref.train_policy"]),
    (
        "One stage at a time",
        [
            "spreadpref.spa.seed.seed_stage",
            "spreadpref.spa.generate.generate_stage",
            "spreadpref.spa.judge.judge_stage",
            "spreadpref.spa.train.train_stage",
        ],
    ),
    (
        "Data",
        [
            "spreadpref.data.loading.load_preferences",
            "spreadpref.data.loading.load_prompts",
            "spreadpref.data.tokenize.tokenize_pairs",
        ],
    ),
    ("Training pieces", ["spreadpref.dpo.train.train_on_pairs", "spreadpref.soft_dpo_loss"]),
    (
        "Judges",
        ["spreadpref.judges.make_judge", "spreadpref.judges.base.Judge", "spreadpref.judges.custom.custom_judge"],
    ),
    ("Evaluation", ["spreadpref.eval.evaluate.evaluate", "spreadpref.eval.report.write_report"]),
    (
        "Sandbox",
        ["spreadpref.sandbox.run_sandbox", "spreadpref.sandbox.method_overrides", "spreadpref.sandbox.world.run_seed"],
    ),
    ("Testing", ["spreadpref.testing.make_tiny_model_dir"]),
]


def resolve(dotted: str):
    module_name, _, attribute = dotted.rpartition(".")
    while True:
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except ModuleNotFoundError:
            module_name, _, parent = module_name.rpartition(".")
            attribute = f"{parent}.{attribute}"


def entry(dotted: str) -> list[str]:
    obj = resolve(dotted)
    try:
        signature = str(inspect.signature(obj))
    except (TypeError, ValueError):
        signature = ""
    doc = inspect.getdoc(obj) or "(no docstring)"
    kind = "class" if inspect.isclass(obj) else "def"
    return [f"### `{dotted}`", "", "```python", f"{kind} {dotted.rpartition('.')[2]}{signature}", "```", "", doc, ""]


def render() -> str:
    lines = [
        "# Python API",
        "",
        "Generated from the docstrings by `python scripts/api_docs.py`; do not edit by hand.",
        "",
    ]
    for section, names in PUBLIC:
        lines += [f"## {section}", ""]
        for name in names:
            lines += entry(name)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python scripts/api_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
