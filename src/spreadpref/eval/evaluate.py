"""``spreadpref eval``: answers on held-out prompts, win rates against a baseline, held-out agreement.

For each model (a directory, or every model of a run: SFT, seed, round 1, ...):

1. greedy answers to the evaluation prompts, resumable, written also in the formats the official
   evaluators read: AlpacaEval model outputs (``alpaca_eval/<name>.json``: instruction, output,
   generator) and MT-Bench answers (``mt_bench/<name>.jsonl``);
2. with the configured judge (``eval.judge``), the win rate against the baseline's answers (ties
   count one half) with a bootstrap confidence interval over prompts, and a length-controlled win
   rate in the spirit of AlpacaEval 2: a logistic model of the preference on the (tanh-squashed,
   scaled) length difference, read at zero length difference;
3. mean answer length, and with verifiable prompts the constraint-satisfaction rate;
4. with ``eval.labelled``, the model's implicit-reward agreement with held-out human-labelled pairs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table
from transformers import PreTrainedTokenizerBase

from spreadpref.config import EMBEDDED_MODEL, Config, GenerationSettings, load_config
from spreadpref.data.artifacts import Artifact, Sample, doc
from spreadpref.data.loading import load_preferences, load_prompts
from spreadpref.data.records import PromptRecord
from spreadpref.errors import SpreadprefError
from spreadpref.eval.stats import length_controlled_win_rate, win_rate_with_ci
from spreadpref.judges import make_judge
from spreadpref.judges.base import Comparison, Judge, agreement
from spreadpref.judges.implicit import ImplicitJudge
from spreadpref.models.loading import (
    load_for_inference,
    load_tokenizer,
    resolve_model_path,
    weights_problem,
)
from spreadpref.models.sampling import generate_samples
from spreadpref.runtime.files import atomic_write_json, atomic_write_text, is_local_path
from spreadpref.runtime.fingerprint import fingerprint
from spreadpref.runtime.layout import (
    CONFIG_FILE,
    EVAL_RESULTS_FILE,
    MANIFEST_FILE,
    MODEL_DIRECTORY,
    SEED_STAGE,
    TRAIN_STAGE,
    round_name,
    round_of_stage,
    round_stage,
)
from spreadpref.runtime.lock import directory_lock
from spreadpref.runtime.manifest import Manifest
from spreadpref.runtime.progress import console
from spreadpref.runtime.units import run_in_parts

BASELINE = "baseline"


@dataclass
class EvalModel:
    name: str
    path: str


# ---------------------------------------------------------------------------------------------
# Which models


def run_models(run_dir: Path, config: Config) -> list[EvalModel]:
    """SFT, seed and every round model still on disk of a ``spreadpref run`` directory."""
    manifest = Manifest(run_dir)
    models = [EvalModel("sft", resolve_model_path(config.model.name_or_path))]
    stages = manifest.data.get("stages", {})
    seed = stages.get(SEED_STAGE, {})
    if seed.get("status") == "complete":
        models.append(EvalModel(SEED_STAGE, str(manifest.output(SEED_STAGE, MODEL_DIRECTORY))))
    rounds = sorted(
        index
        for name, entry in stages.items()
        if (index := round_of_stage(name, TRAIN_STAGE)) is not None and entry.get("status") == "complete"
    )
    for index in rounds:
        path = manifest.output(round_stage(index, TRAIN_STAGE), MODEL_DIRECTORY)
        if weights_problem(path) is None:  # a full model, or a LoRA run's adapter
            models.append(EvalModel(round_name(index), str(path)))
        else:
            console.print(f"[yellow]{round_name(index)}'s model was pruned (loop.keep_models); not evaluated.[/]")
    return models


def own_tokenizer(config: Config, path: str, fallback: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the model at ``path`` (every spreadpref model directory has one); the
    configured one for a model directory without its own, or a hub id."""
    directory = Path(resolve_model_path(path))
    if config.model.tokenizer or not (directory / "tokenizer_config.json").is_file():
        return fallback
    return load_tokenizer(config.model.model_copy(update={"name_or_path": str(directory), "tokenizer": None}))


def trained_from(model_dir: Path) -> str | None:
    """The starting model recorded by the `spreadpref train` or `run` directory that holds ``model_dir``."""
    for parent in (model_dir, model_dir.parent, *model_dir.parent.parents[:3]):
        if (parent / CONFIG_FILE).is_file() and (parent / MANIFEST_FILE).is_file():
            try:
                return load_config(parent / CONFIG_FILE).model.name_or_path
            except SpreadprefError:
                return None
    return None


def default_baseline(config: Config, targets: list[str]) -> Config:
    """With the baseline `initial` and no model configured (the embedded default), evaluate a trained model
    against the model it was trained from, as its directory records, not against the embedded model."""
    if config.eval.baseline != "initial" or config.model.name_or_path != EMBEDDED_MODEL:
        return config
    starts = {start for t in targets if (start := trained_from(Path(t))) is not None}
    if len(starts) != 1 or EMBEDDED_MODEL in starts:
        return config
    start = starts.pop()
    console.print(f"Baseline: {start}, the model the evaluated models were trained from (eval.baseline=initial).")
    return config.model_copy(update={"model": config.model.model_copy(update={"name_or_path": start})})


def _named_target(target: str) -> tuple[str, str] | None:
    """``name=path``: a model evaluated under a name of the user's choosing (not a path that holds '=')."""
    name, sep, path = target.partition("=")
    if not sep or not name or not path or "/" in name or Path(target).exists():
        return None
    return name, path


def model_targets(targets: list[str], config: Config) -> list[EvalModel]:
    """Run directories expand to their models; anything else is a model directory or hub id."""
    models: list[EvalModel] = []
    for target in targets:
        path = Path(target)
        if (path / MANIFEST_FILE).is_file() and (path / CONFIG_FILE).is_file():
            models += [
                EvalModel(f"{path.name}/{m.name}" if len(targets) > 1 else m.name, m.path)
                for m in run_models(path, load_config(path / CONFIG_FILE))
            ]
        elif (name := _named_target(target)) is not None:
            models.append(EvalModel(*name))
        else:
            models.append(EvalModel(path.name or target, target))
    names = [m.name for m in models]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise SpreadprefError(f"two models would be saved under the same name: {', '.join(duplicated)}")
    return models


# ---------------------------------------------------------------------------------------------
# Answers


def answer_settings(config: Config) -> GenerationSettings:
    return GenerationSettings(
        num_samples=1,
        temperature=config.eval.temperature,
        max_new_tokens=config.eval.max_new_tokens,
        batch_size=config.eval.batch_size,
    )


def generate_answers(
    config: Config, tokenizer: PreTrainedTokenizerBase, model: EvalModel, prompts: list[PromptRecord], out_dir: Path
) -> list[Sample]:
    out = out_dir / "answers" / f"{_file_name(model.name)}.jsonl"
    if out.is_file():
        return Sample.read(out)
    policy = load_for_inference(config.model, model.path, merge_adapter=True)
    console.print(f"Answering {len(prompts)} evaluation prompts with {model.name}")
    rows = generate_samples(
        policy, tokenizer, prompts, answer_settings(config), config.data, config.seed, out, round_index=0
    )
    del policy
    return rows


def write_official_formats(out_dir: Path, name: str, prompts: list[PromptRecord], answers: list[str]) -> None:
    """AlpacaEval model outputs (JSON list) and MT-Bench answers (JSONL), one answer per prompt."""
    alpaca = [
        {"instruction": _instruction(p), "output": a, "generator": name, "dataset": "spreadpref"}
        for p, a in zip(prompts, answers)
    ]
    atomic_write_text(out_dir / "alpaca_eval" / f"{_file_name(name)}.json", json.dumps(alpaca, indent=2) + "\n")
    now = time.time()
    mt_bench = [
        json.dumps(
            {
                "question_id": p.id,
                "answer_id": hashlib.sha256(f"{name}:{p.id}".encode()).hexdigest()[:22],
                "model_id": name,
                "choices": [{"index": 0, "turns": [a]}],
                "tstamp": now,
            }
        )
        for p, a in zip(prompts, answers)
    ]
    atomic_write_text(out_dir / "mt_bench" / f"{_file_name(name)}.jsonl", "\n".join(mt_bench) + "\n")


def _instruction(prompt: PromptRecord) -> str:
    return "\n\n".join(m["content"] for m in prompt.prompt if m["role"] == "user")


def _file_name(name: str) -> str:
    return name.replace("/", "__")


def load_baseline_answers(path: Path, prompts: list[PromptRecord]) -> list[str]:
    """Baseline answers from an AlpacaEval-format JSON file, matched to the prompts by instruction."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SpreadprefError(
            f"{path}: cannot read baseline answers ({err}); eval.baseline takes `initial`, a "
            "model directory, or an AlpacaEval-format JSON list of {instruction, output}"
        ) from None
    by_instruction = {}
    for index, row in enumerate(rows if isinstance(rows, list) else []):
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("instruction"), str)
            or not isinstance(row.get("output"), str)
        ):
            raise SpreadprefError(f"{path}: entry {index} needs string fields instruction and output")
        by_instruction[row["instruction"]] = row["output"]
    missing = [p.id for p in prompts if _instruction(p) not in by_instruction]
    if missing:
        raise SpreadprefError(
            f"{path}: no baseline answer for {len(missing)} evaluation prompts "
            f"(first: {missing[0]!r}); the instructions must match the evaluation prompts"
        )
    return [by_instruction[_instruction(p)] for p in prompts]


# ---------------------------------------------------------------------------------------------
# Statistics


# ---------------------------------------------------------------------------------------------
# The command


def _fingerprint(config: Config, prompts: list[PromptRecord]) -> str:
    parts = [
        answer_settings(config).model_dump(mode="json"),
        config.data.max_length,
        config.data.max_prompt_length,
        config.seed,
        [p.id for p in prompts],
        config.eval.judge.model_dump(mode="json"),
        config.eval.baseline,
    ]
    return fingerprint(parts)


def evaluate(config: Config, targets: list[str], out_dir: Path, force: bool = False) -> dict[str, Any]:
    """Evaluate every target (run directories expand to their models) against the baseline."""
    config = default_baseline(config, targets)
    return evaluate_models(config, model_targets(targets, config), out_dir, force)


def evaluate_models(config: Config, models: list[EvalModel], out_dir: Path, force: bool = False) -> dict[str, Any]:
    """Answers, win rates and agreement of ``models``; writes eval.json, eval.md and the answer files.

    Answers and verdicts are cached per model name, so calling this again with more models only
    does the new ones, and eval.json keeps the earlier models' results. ``out_dir`` is locked meanwhile.
    """
    with directory_lock(Path(out_dir), "eval", config.allow_existing_files):
        return _evaluate_locked(config, models, out_dir, force)


def _evaluate_locked(config: Config, models: list[EvalModel], out_dir: Path, force: bool) -> dict[str, Any]:
    prompts, report = load_prompts(
        config.eval.prompts,
        config.data.columns,
        skip_invalid=config.data.skip_invalid,
        limit=config.eval.limit,
        system_prompt=config.data.system_prompt,
    )
    console.print(report.summary())
    manifest = Manifest(out_dir)
    expected = _fingerprint(config, prompts)
    previous = manifest.stage("eval")
    results: dict[str, Any] = {
        "prompts": len(prompts),
        "judge": config.eval.judge.kind,
        "baseline": config.eval.baseline,
        "models": {},
    }
    if previous and (force or previous.get("fingerprint") != expected):
        if not force:
            raise SpreadprefError(
                f"{out_dir} holds an evaluation made with other settings (prompts, generation, "
                "judge or baseline); use another --output directory, or --force to redo it"
            )

        for sub in ("answers", "verdicts", "alpaca_eval", "mt_bench", EVAL_RESULTS_FILE):
            target = out_dir / sub
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    elif previous and (out_dir / EVAL_RESULTS_FILE).is_file():
        results["models"] = json.loads((out_dir / EVAL_RESULTS_FILE).read_text()).get("models", {})
    # Everything that can fail without answering is checked before the first answer: the judge (and the extra
    # it needs), the prompts it needs, and every model to answer with.
    _check_eval_judge(config)
    _check_models(config, models)
    tokenizer = load_tokenizer(config.model)
    judge = make_judge(config.eval.judge, config.model, beta=config.train.beta, tokenizer=tokenizer)
    if config.eval.judge.kind == "verifier" and (
        bare := [p.id for p in prompts if "instruction_id_list" not in p.metadata]
    ):
        raise SpreadprefError(
            f"eval.judge.kind=verifier needs verifiable constraints (instruction_id_list, kwargs) on every evaluation "
            f"prompt; {len(bare)} of {len(prompts)} in {config.eval.prompts} have none (first: {bare[0]})"
        )
    manifest.start("eval", expected)
    baseline_answers = _baseline_answers(config, tokenizer, prompts, out_dir)
    for model in models:
        _reuse_baseline_answers(config, model, out_dir)
        answers = generate_answers(config, own_tokenizer(config, model.path, tokenizer), model, prompts, out_dir)
        write_official_formats(out_dir, model.name, prompts, [a.text for a in answers])
        results["models"][model.name] = _score_model(config, judge, model, prompts, answers, baseline_answers, out_dir)
        atomic_write_json(out_dir / EVAL_RESULTS_FILE, results)
    if config.eval.labelled:
        _held_out_agreement(config, tokenizer, models, results)
    atomic_write_json(out_dir / EVAL_RESULTS_FILE, results)
    atomic_write_text(out_dir / "eval.md", eval_markdown(results))
    manifest.complete("eval", outputs={"results": str(out_dir / EVAL_RESULTS_FILE)})
    print_eval_table(results)
    return results


def _baseline_model(config: Config) -> str | None:
    """The model that answers as the baseline, or None when the baseline is a file of answers."""
    baseline = config.eval.baseline
    if baseline.endswith(".json") and Path(baseline).is_file():
        return None
    return config.model.name_or_path if baseline == "initial" else baseline


def _check_models(config: Config, models: list[EvalModel]) -> None:
    """Every local model to answer with (and the baseline) is a loadable directory, before any answers."""
    named = [(m.name, m.path) for m in models]
    if (baseline := _baseline_model(config)) is not None:
        named.append((f"the baseline (eval.baseline={config.eval.baseline})", baseline))
    for name, path in named:
        if problem := weights_problem(resolve_model_path(path)):
            raise SpreadprefError(f"{name}: {problem}; nothing was answered")


def _reuse_baseline_answers(config: Config, model: EvalModel, out_dir: Path) -> None:
    """A model that is the baseline itself (often the SFT model of a run) answers once: its file is the
    baseline's, copied, instead of the same greedy answers generated twice."""
    baseline = _baseline_model(config)
    source = out_dir / "answers" / f"{_file_name(BASELINE)}.jsonl"
    target = out_dir / "answers" / f"{_file_name(model.name)}.jsonl"
    if baseline is None or target.is_file() or not source.is_file():
        return
    if _same_model(resolve_model_path(baseline), resolve_model_path(model.path)):
        console.print(f"{model.name} is the baseline model: its answers are the baseline's")
        shutil.copyfile(source, target)


def _same_model(a: str, b: str) -> bool:
    if is_local_path(a) and is_local_path(b):
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return a == b


def _check_eval_judge(config: Config) -> None:
    """An evaluation judge must be the same for every model, never the evaluated model itself."""
    kind, llm = config.eval.judge.kind, config.eval.judge.llm
    if kind == "implicit" or (kind == "llm" and not llm.base_url and llm.model == "policy"):
        raise SpreadprefError(
            f"eval.judge.kind={kind}"
            + (" with llm.model=policy" if kind == "llm" else "")
            + " would let each evaluated model judge itself; use verifier, reward_model, or an llm "
            "judge with eval.judge.llm.model set to a fixed model or base_url"
        )


def _baseline_answers(
    config: Config, tokenizer: PreTrainedTokenizerBase, prompts: list[PromptRecord], out_dir: Path
) -> list[str]:
    """The baseline's answer texts: from an AlpacaEval file, or generated by the baseline model."""
    baseline = config.eval.baseline
    if baseline.endswith(".json") and Path(baseline).is_file():
        return load_baseline_answers(Path(baseline), prompts)
    path = config.model.name_or_path if baseline == "initial" else baseline
    baseline_tokenizer = own_tokenizer(config, path, tokenizer)
    answers = [
        a.text for a in generate_answers(config, baseline_tokenizer, EvalModel(BASELINE, path), prompts, out_dir)
    ]
    write_official_formats(out_dir, BASELINE, prompts, answers)
    return answers


@dataclass
class EvalVerdict(Artifact):
    """The evaluation judge on one prompt: the model's answer against the baseline's."""

    index: int = doc("the prompt's position in the evaluation prompts")
    p: float = doc("P(the model's answer is preferred to the baseline's)")
    score: float = doc("the judge's score of the model's answer")
    baseline_score: float = doc("the judge's score of the baseline's answer")


def _score_model(
    config: Config,
    judge: Judge,
    model: EvalModel,
    prompts: list[PromptRecord],
    answers: list[Sample],
    baseline: list[str],
    out_dir: Path,
) -> dict[str, Any]:
    units = [list(range(i, min(i + 16, len(prompts)))) for i in range(0, len(prompts), 16)]

    def process(_: int, unit: list[int]) -> list[EvalVerdict]:
        comparisons = [
            Comparison(
                prompt=prompts[i].prompt,
                replies=[answers[i].text, baseline[i]],
                id=prompts[i].id,
                metadata=prompts[i].metadata,
            )
            for i in unit
        ]
        return [
            EvalVerdict(index=i, p=j.p(0, 1), score=j.scores[0], baseline_score=j.scores[1])
            for i, j in zip(unit, judge.judge(comparisons))
        ]

    verdicts = run_in_parts(
        out_dir / "verdicts" / f"{_file_name(model.name)}.jsonl",
        units,
        process,
        EvalVerdict,
        f"Judging {model.name} against the baseline",
        order=lambda v: v.index,
    )
    p = np.array([v.p for v in verdicts], dtype=np.float64)
    words = np.array([len(a.text.split()) for a in answers], dtype=np.float64)
    baseline_words = np.array([len(b.split()) for b in baseline], dtype=np.float64)
    result = win_rate_with_ci(p, config.eval.bootstrap, config.seed)
    result["lc_win_rate"] = length_controlled_win_rate(p, words - baseline_words)
    identical = sum(a.text == b for a, b in zip(answers, baseline))
    result["ties"] = int(np.sum(p == 0.5))
    if len(p) and result["ties"] == len(p) and identical < len(p):
        # 0.500 from a judge that told no answer from the baseline's is no evidence of "as good as" (answers that
        # are the baseline's own, as the SFT model's, tie rightly and are not warned about).
        console.print(
            f"[yellow]{model.name}: the {config.eval.judge.kind} judge tied every answer with the baseline's "
            f"({len(p)} of {len(p)}, {len(p) - identical} of them different), so its win rate of 0.500 says "
            "nothing: use a judge that can tell these answers apart.[/]"
        )
    result.update(
        mean_words=float(words.mean()),
        baseline_mean_words=float(baseline_words.mean()),
        mean_tokens=float(np.mean([a.num_tokens for a in answers])),
        cut_off_fraction=float(np.mean([a.cut_off for a in answers])),
    )
    if config.eval.judge.kind == "verifier":
        scores = np.array([v.score for v in verdicts])
        result.update(
            constraint_satisfaction=float(scores.mean()),
            all_satisfied=float((scores == 1.0).mean()),
            baseline_constraint_satisfaction=float(np.mean([v.baseline_score for v in verdicts])),
        )
    return result


def _held_out_agreement(
    config: Config, tokenizer: PreTrainedTokenizerBase, models: list[EvalModel], results: dict[str, Any]
) -> None:
    """Each model's implicit reward (against the SFT model) on held-out human-labelled pairs."""
    records, report = load_preferences(
        config.eval.labelled,
        config.data.columns,
        skip_invalid=config.data.skip_invalid,
        system_prompt=config.data.system_prompt,
    )
    console.print(report.summary())
    comparisons = [Comparison(prompt=r.prompt, replies=[r.chosen, r.rejected], id=r.id) for r in records]
    reference = load_for_inference(config.model)
    for model in models:
        if model.name == "sft" or model.name.endswith("/sft"):
            continue  # against itself the implicit reward is zero
        policy = load_for_inference(config.model, model.path)
        judge = ImplicitJudge(policy, reference, tokenizer, config.train.beta, config.judge)
        results["models"][model.name]["held_out_agreement"] = agreement(judge, comparisons)["agreement"]
        del policy
    results["labelled_pairs"] = len(comparisons)


# ---------------------------------------------------------------------------------------------
# Tables


EVAL_COLUMNS = [
    ("win_rate", "win rate", ".3f"),
    ("ci", "95% CI", ""),
    ("lc_win_rate", "LC win rate", ".3f"),
    ("constraint_satisfaction", "constraints met", ".3f"),
    ("mean_words", "words", ".0f"),
    ("cut_off_fraction", "cut off", ".2f"),
    ("held_out_agreement", "held-out agree", ".3f"),
]


def _cells(row: dict[str, Any]) -> list[str]:
    cells = []
    for key, _, spec in EVAL_COLUMNS:
        if key == "ci":
            cells.append(f"{row['ci_low']:.3f}–{row['ci_high']:.3f}" if "ci_low" in row else "–")
        else:
            value = row.get(key)
            cells.append("–" if value is None else format(value, spec))
    return cells


def eval_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation: {results['prompts']} prompts, judge `{results['judge']}`, baseline `{results['baseline']}`",
        "",
        "| model | " + " | ".join(title for _, title, _ in EVAL_COLUMNS) + " |",
        "|---|" + "---|" * len(EVAL_COLUMNS),
    ]
    lines += [f"| {name} | " + " | ".join(_cells(row)) + " |" for name, row in results["models"].items()]
    lines += [
        "",
        "Win rate: the judge's mean preference for the model's answer over the baseline's (ties count "
        "one half), with a 95% percentile bootstrap interval over prompts. LC: length-controlled, the "
        "logistic model's preference at zero length difference.",
        "",
    ]
    return "\n".join(lines)


def print_eval_table(results: dict[str, Any]) -> None:
    table = Table(title=f"spreadpref eval: judge {results['judge']}, baseline {results['baseline']}")
    table.add_column("model")
    for _, title, _ in EVAL_COLUMNS:
        table.add_column(title, justify="right")
    for name, row in results["models"].items():
        table.add_row(name, *_cells(row))
    console.print(table)
