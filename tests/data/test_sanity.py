"""Data sanity warnings: counted in the manifest, shown once, never dropping anything."""

import json

from spreadpref.config import load_config
from spreadpref.data.records import PreferenceRecord
from spreadpref.data.sanity import describe, sanity_counts
from spreadpref.dpo.train import train_policy
from spreadpref.runtime.layout import MANIFEST_FILE

PROMPT = [{"role": "user", "content": "Explain what a binary search does."}]


def record(chosen, rejected):
    return PreferenceRecord(id="x", prompt=PROMPT, chosen=chosen, rejected=rejected)


def test_each_check_counts_what_it_should_and_nothing_else():
    records = [
        record("It halves the range each step.", "No."),  # fine
        record("It halves.\n\nHuman: thanks\n\nAssistant: ok", "No."),  # a transcript in a reply
        record("Explain what a binary search does. It halves the range.", "No."),  # repeats the prompt
        record("Same.", "Same."),
    ]
    counts = sanity_counts(records)
    assert counts == {"replies_with_role_markers": 1, "replies_repeating_the_prompt": 1, "chosen_equals_rejected": 1}
    lines = describe(counts, 4)
    assert len(lines) == 3 and lines[0].startswith("1 of 4 replies contain role markers")


def test_warnings_reach_the_manifest_and_wrong_given_reference_log_probs_are_flagged(tiny_model_dir, tmp_path):
    rows = [
        {
            "prompt": f"What is {i} plus {i}?",
            "chosen": f"{2 * i}.",
            "rejected": f"{2 * i}." if i == 0 else "Maybe.",
            "ref_chosen_logps": -1.0,  # not what the tiny model gives these replies
            "ref_rejected_logps": -1.0,
        }
        for i in range(8)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    config = load_config(
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            f"data.train={data}",
            f"output_dir={out}",
            "train.max_steps=1",
            "data.max_length=64",
            "data.max_prompt_length=32",
        ],
    )
    train_policy(config)
    stage = json.loads((out / MANIFEST_FILE).read_text())["stages"]["train"]
    assert stage["data"]["warnings"]["chosen_equals_rejected"] == 1
    mismatch = stage["reference"]["given_reference_mismatch"]
    assert mismatch["warned"] and mismatch["pairs_checked"] == 8 and mismatch["median_nats"] > 1
