"""benchmarks/spread.py's bookkeeping: the t-interval across seeds, per-seed files and their reuse.

The end-to-end run on the tiny model is in test_benchmarks.py (slow)."""

import json
import math

import pytest
from repo_paths import BENCHMARKS, load_script

SPREAD = BENCHMARKS / "spread.py"


@pytest.fixture(scope="module")
def spread():
    return load_script(SPREAD, "spread_benchmark")


def test_mean_ci_is_the_95_percent_t_interval(spread):
    mean, half = spread.mean_ci([0.3, 0.35, 0.4])
    # sd = 0.05 (n - 1 in the denominator), t(0.975, df=2) = 4.303
    assert mean == pytest.approx(0.35)
    assert half == pytest.approx(4.303 * 0.05 / math.sqrt(3))
    assert spread.mean_ci([0.7]) == (0.7, 0.0)
    assert spread.mean_ci([None, float("nan")]) == (None, None)  # strict JSON: no NaN in results.json
    assert spread.mean_ci([0.2, None, 0.4])[0] == pytest.approx(0.3)


def fake_record(spread, args, seed: int, offset: float) -> dict:
    values = {
        "sft/0": {"constraint_satisfaction": 0.3, "win_rate": 0.5, "mean_words": 30.0},
        "dpo_seed/0": {"constraint_satisfaction": 0.35 + offset, "win_rate": 0.52, "mean_words": 29.0},
    }
    for variant in args.variants:
        for i in range(1, args.rounds + 1):
            values[f"{variant}/{i}"] = {
                "constraint_satisfaction": 0.4 + offset,
                "win_rate": 0.55 - offset,
                "mean_words": 28.0,
                "seed_agreement": 1.0,
                "smoothed_fraction": None if variant == "gold" else 0.1,
            }
    return {
        "seed": seed,
        "settings": spread.settings(args),
        "values": values,
        "seed_pairs": 36,
        "eval_prompts": 40,
        "seconds": 1,
        "provenance": f"test seed {seed}",
    }


def test_aggregate_keeps_per_seed_values_in_seed_order(spread, tmp_path):
    args = spread.parse_args(["--seeds", "0", "1", "--out-dir", str(tmp_path)])
    result = spread.aggregate(args, [fake_record(spread, args, 0, 0.0), fake_record(spread, args, 1, 0.1)])
    rows = {(r["variant"], r["round"]): r for r in result["rows"]}
    assert len(rows) == 2 + len(args.variants) * args.rounds
    dpo = rows[("dpo_seed", 0)]
    assert dpo["constraint_satisfaction_per_seed"] == [0.35, pytest.approx(0.45)]
    assert dpo["constraint_satisfaction"] == pytest.approx(0.4)
    assert dpo["constraint_satisfaction_ci"] == pytest.approx(12.706 * 0.1 / math.sqrt(2) / math.sqrt(2))
    assert rows[("gold", 1)]["smoothed_fraction"] is None and rows[("spa_dnd", 2)]["smoothed_fraction"] == 0.1
    assert result["seeds"] == [0, 1] and result["provenance"] == {"0": "test seed 0", "1": "test seed 1"}
    json.dumps(result, allow_nan=False)  # strict JSON


def test_seed_files_are_reused_and_other_settings_refused(spread, tmp_path, monkeypatch):
    out = tmp_path / "results"
    argv = ["--model", "tiny", "--work", str(tmp_path / "work"), "--out-dir", str(out), "--seeds", "0", "1"]
    args = spread.parse_args(argv)
    assert spread.read_seed_record(args, 0) is None
    for seed in (0, 1):
        spread.seed_path(args, seed).parent.mkdir(parents=True, exist_ok=True)
        spread.seed_path(args, seed).write_text(json.dumps(fake_record(spread, args, seed, 0.05 * seed)))

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("a seed with a matching file was run again")

    monkeypatch.setattr(spread, "make_seed_pairs", must_not_run)
    monkeypatch.setattr(spread, "run_seed", must_not_run)
    assert spread.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["seeds"] == [0, 1]
    table = (out / "table.md").read_text()
    assert "seeds [0, 1], 36 seed pairs, 40 evaluation prompts" in table and "| SPA + refinement + DND | 2 |" in table
    assert (out / "constraints.png").read_bytes()[:4] == b"\x89PNG" and (out / "win_rate.png").is_file()

    with pytest.raises(SystemExit, match=r"seed-0\.json was made with other settings.*--rerun"):
        spread.main([*argv, "--rounds", "3"])


def test_the_long_profile_takes_its_budget_from_its_yaml_and_keeps_its_own_results(spread):
    args = spread.parse_args(["--profile", "spa-cpu-long"])
    profile = spread.load([], "spa-cpu-long")
    assert args.rounds == profile.loop.rounds and args.prompts_per_round is None
    assert profile.generation.num_samples == 4  # the issue: K = 4, so that the verifier ties less
    assert args.out_dir.name == "embedded-long" and args.seeds == [0, 1, 2]
    assert args.eval_rounds == list(range(1, args.rounds + 1))
    assert spread.settings(args)["profile"] == "spa-cpu-long"
    default = spread.parse_args([])
    assert "profile" not in spread.settings(default)  # the published spa-cpu seed files stay reusable
    dev = spread.parse_args(["--profile", "spa-cpu-long", "--dev", "--set", "train.learning_rate=1e-5"])
    assert dev.out_dir == args.out_dir / "dev" and dev.seeds == [100, 101]  # never the reported seeds
    with pytest.raises(SystemExit):
        spread.parse_args(["--dev"])  # the default profile has no development split


def test_the_development_split_is_by_task_and_never_touches_the_evaluation_tasks(spread, tmp_path):
    from spreadpref.data.loading import load_prompts

    args = spread.parse_args(
        ["--profile", "spa-cpu-long", "--dev", "--work", str(tmp_path), "--set", "train.learning_rate=1e-5"]
    )
    rounds_file, dev_file = spread.split_prompts(args)
    rounds, _ = load_prompts(str(rounds_file))
    dev, _ = load_prompts(str(dev_file))
    everything, _ = load_prompts("builtin:ifeval_prompts")
    task = lambda records: {r.metadata["task_id"] for r in records}  # noqa: E731
    assert len(rounds) + len(dev) == len(everything) and not task(rounds) & task(dev)
    assert 0.15 < len(dev) / len(everything) < 0.35
    assert dev[0].metadata["instruction_id_list"]  # the verifier's fields travel with the prompt
    evaluation, _ = load_prompts("builtin:ifeval_eval")
    assert not task(evaluation) & (task(rounds) | task(dev))
    overrides = spread.base_overrides(args, "m", tmp_path / "seed.jsonl", 100, tmp_path / "out")
    assert f"data.prompts={rounds_file}" in overrides and f"eval.prompts={dev_file}" in overrides
    assert not any(o.startswith("loop.prompts_per_round") for o in overrides)  # the profile's own
    assert overrides[-1] == "train.learning_rate=1e-5"  # --set: the budget under test, last so that it wins
    reported = spread.parse_args(["--profile", "spa-cpu-long", "--work", str(tmp_path)])
    assert "eval.prompts=builtin:ifeval_eval" in spread.base_overrides(reported, "m", tmp_path, 0, tmp_path)


def test_paired_differences_are_seed_by_seed_against_the_seed_only_model(spread):
    args = spread.parse_args(["--seeds", "0", "1"])
    records = [fake_record(spread, args, 0, 0.0), fake_record(spread, args, 1, 0.1)]
    records[1]["values"]["gold/2"]["constraint_satisfaction"] = 0.6  # seed 1: +0.15 over its seed-only 0.45
    rows = {(d["variant"], d["round"]): d for d in spread.paired_differences(records)}
    assert ("dpo_seed", 0) not in rows
    gold = rows[("gold", 2)]
    assert gold["per_seed"] == [pytest.approx(0.05), pytest.approx(0.15)] and gold["better"] == 2
    assert gold["mean"] == pytest.approx(0.10) and gold["ci"] == pytest.approx(12.706 * 0.05)
    assert rows[("sft", 0)]["mean"] == pytest.approx(-0.1)


def test_the_sft_world_pairs_against_seed_only_and_the_verifier_ceiling_and_keeps_the_guards_choice(spread, tmp_path):
    args = spread.parse_args(["--init", "sft", "--seeds", "0", "1", "2", "--rounds", "1", "--out-dir", str(tmp_path)])
    assert args.profile == "spa-cpu-long" and args.variants == list(spread.SFT_VARIANTS)
    assert spread.settings(args)["init"] == "sft"
    records = []
    for seed, offset in enumerate((0.0, 0.05, 0.1)):
        record = fake_record(spread, args, seed, offset)
        record["values"]["gold/1"]["constraint_satisfaction"] = 0.5 + offset  # the ceiling, 0.1 above
        record["values"]["seed_base/guard"] = dict(record["values"]["dpo_seed/0"])  # the guard kept pi_0
        records.append(record)
    result = spread.aggregate(args, records)
    seed_only = {(d["variant"], d["round"]): d for d in result["paired"]}
    ceiling = {(d["variant"], d["round"]): d for d in result["paired_gold"]}
    assert seed_only[("seed_base", 1)]["mean"] == pytest.approx(0.05)  # 0.40 - 0.35 in every seed
    assert seed_only[("seed_base", "guard")]["mean"] == pytest.approx(0.0)
    assert ceiling[("seed_base", 1)]["mean"] == pytest.approx(-0.1)
    cell = spread._paired_cell(seed_only[("seed_base", 1)])
    assert cell.startswith("+0.050 (+0.050 to +0.050), 3/3")
    spread.write_outputs(args, result)  # the table with both paired columns and the guard's rows
    table = (tmp_path / "table.md").read_text()
    assert "− verifier ceiling (paired)" in table and "| guard |" in table


def test_the_guards_choice_is_the_best_held_out_model():
    spread = load_script(SPREAD, "spread_benchmark")
    summary = {
        "seed": {"model_held_out_agreement": 0.7},
        "rounds": {"1": {"model_held_out_agreement": 0.8}, "2": {"model_held_out_agreement": 0.6}},
    }
    assert spread.guard_choice(summary, 2) == 1
    assert spread.guard_choice({"seed": None, "rounds": {"1": {}}}, 1) == 1  # nothing measured: the last


def test_only_variants_with_the_same_judge_settings_share_round_one_judging(spread, monkeypatch, tmp_path):
    args = spread.parse_args(["--init", "sft", "--seeds", "0", "--rounds", "1", "--work", str(tmp_path)])
    args.variants = ["spa_dnd", "spa_length_replay", "spa_direct"]
    shared = {}
    monkeypatch.setattr(
        spread, "share_stages", lambda source, target, stages: shared.update({target.name: (source.name, stages)})
    )
    monkeypatch.setattr(spread, "run_variant", lambda args, model, seed_file, seed, variant: tmp_path / variant)
    spread.run_seed(args, "model", tmp_path / "seed.jsonl", 0)
    assert shared["spa_length_replay"] == ("spa_dnd", ["seed", "round-1/generate"])  # its length penalty pairs anew
    assert shared["spa_direct"] == ("spa_dnd", ["seed", "round-1/generate", "round-1/judge"])


def test_kl_from_pi_init_joins_the_table_only_when_every_seed_has_it(spread, tmp_path):
    args = spread.parse_args(["--init", "sft", "--seeds", "0", "1", "--rounds", "1", "--out-dir", str(tmp_path)])
    records = [fake_record(spread, args, seed, 0.05 * seed) for seed in (0, 1)]
    kl = tmp_path / "kl"
    kl.mkdir()
    (kl / "seed-0.json").write_text(json.dumps({"values": {"spa_dnd/1": {"kl_from_init": 2.0}}}))
    assert spread.with_kl(args, records) is records  # seed 1 has none: a partial mean would mislead
    (kl / "seed-1.json").write_text(json.dumps({"values": {"spa_dnd/1": {"kl_from_init": 4.0}, "sft/0": {}}}))
    merged = spread.with_kl(args, records)
    assert [r["values"]["spa_dnd/1"]["kl_from_init"] for r in merged] == [2.0, 4.0]
    assert merged[0]["values"]["gold/1"]["kl_from_init"] is None and "kl_from_init" not in records[0]["values"]["sft/0"]
    result = spread.aggregate(args, merged)
    row = next(r for r in result["rows"] if (r["variant"], r["round"]) == ("spa_dnd", 1))
    assert row["kl_from_init"] == pytest.approx(3.0) and row["kl_from_init_per_seed"] == [2.0, 4.0]
    spread.write_outputs(args, result)
    table = (tmp_path / "table.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| variant"))
    assert "KL from π_init" in header
    assert all(line.count("|") == header.count("|") for line in table if line.startswith("|"))


def test_kl_is_measured_for_every_reported_model_each_distinct_model_once(tmp_path):
    spread_kl = load_script(BENCHMARKS / "spread_kl.py", "spread_kl_benchmark")
    args = spread_kl.spread.parse_args(
        ["--init", "sft", "--seeds", "7", "--rounds", "2", "--eval-rounds", "2", "--work", str(tmp_path)]
    )
    record = {"seed": 7, "guard_rounds": {v: 0 for v in args.variants} | {"gold": 1}}
    dirs = spread_kl.model_dirs(args, record, "pi_init")
    run = tmp_path / "seed-7"
    assert dirs["dpo_seed/0"] == str(run / "spa_dnd" / "seed" / "model")
    assert dirs["seed_base/2"] == str(run / "seed_base" / "round-2" / "train" / "model")
    assert dirs["no_seed/guard"] == "pi_init" and dirs["seed_base/guard"] == dirs["dpo_seed/0"]
    assert dirs["gold/guard"] == str(run / "gold" / "round-1" / "train" / "model")
    assert "spa_dnd/1" not in dirs  # round 1 is reported only as a guard's choice


def test_a_cached_pi_init_is_reused_only_with_the_settings_it_was_built_with(tmp_path):
    sft_init = load_script(BENCHMARKS / "sft_init.py", "sft_init_benchmark")
    args = sft_init.parse_args(["--work", str(tmp_path), "--tasks", "8"])
    (tmp_path / "pi_init").mkdir()
    (tmp_path / "pi_init" / "config.json").write_text("{}")
    recorded = {k: (str(v) if k == "work" else v) for k, v in vars(args).items()}
    (tmp_path / "pi_init.json").write_text(json.dumps({"settings": recorded}))
    assert sft_init.build_pi_init(args) == tmp_path / "pi_init"
    other = sft_init.parse_args(["--work", str(tmp_path), "--base", "tiny-base", "--tasks", "8"])
    with pytest.raises(SystemExit, match=r"pi_init was built with other settings.*'base'.*another --work"):
        sft_init.build_pi_init(other)


def test_a_reduced_sft_world_keeps_its_pi_init_apart_and_says_so_in_its_settings(spread, tmp_path):
    report = ["--init", "sft", "--work", str(tmp_path / "report")]
    args = spread.parse_args(report)
    assert args.sft_work == spread.SFT_WORK and args.annotation_work == spread.SFT_WORK
    assert "sft_tasks" not in spread.settings(args)  # the report's seed files keep matching
    reduced = spread.parse_args(report + ["--sft-work", str(tmp_path / "sft"), "--sft-tasks", "24"])
    reduced_settings = spread.settings(reduced)
    assert reduced.annotation_work == tmp_path / "sft" and reduced_settings["sft_tasks"] == 24
    tiny = spread.parse_args(["--init", "sft", "--model", "tiny", "--work", str(tmp_path / "w")])
    assert tiny.sft_work == tmp_path / "w" / "sft"  # never the embedded model's pi_init
